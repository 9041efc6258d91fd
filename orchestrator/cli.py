"""The ``keyfleet`` command line: parse arguments, call one command function, map errors to exit codes."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator import __version__
from orchestrator.errors import KeyfleetError
from orchestrator.secret import mask

DEBUG_LOG = Path.home() / ".cache" / "keyfleet" / "debug.log"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


def _inventory(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("-i", "--inventory", required=required, metavar="INV", help="inventory YAML file")


def _limit(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--limit",
        metavar="P",
        help="hosts to act on: globs, role:NAME, group:NAME, comma lists, !exclusions, @last-failed",
    )


def _share(p: argparse.ArgumentParser) -> None:
    p.add_argument("--share", metavar="S", help="backup share: a path or smb://server/share/path")


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keyfleet",
        description="Back up the SCSM encryption keys of a fleet of Windows servers over WinRM.",
    )
    parser.add_argument("--version", action="version", version=f"keyfleet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail to stderr")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = _Subparsers(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"), common)

    p = sub.add_parser("backup", help="back up the selected servers")
    _inventory(p)
    _limit(p)
    p.add_argument("--forks", type=_positive_int, default=32, metavar="N", help="hosts worked on at once (32)")
    p.add_argument("--check", action="store_true", help="print what would run and touch nothing")
    _share(p)
    p.add_argument("--only-stale", metavar="AGE", help="skip servers with a good backup younger than AGE")
    _json(p)

    p = sub.add_parser("audit", help="coverage report of the backup share")
    _inventory(p)
    _share(p)
    p.add_argument("--max-age", metavar="AGE", help="a backup older than this is stale")
    p.add_argument("--format", choices=("table", "json", "markdown", "html"), default="table")
    p.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE")

    p = sub.add_parser("run", help="run a runbook (playbook)")
    p.add_argument("playbook", metavar="PLAYBOOK")
    _inventory(p)
    _limit(p)
    _share(p)
    p.add_argument("--check", action="store_true", help="print the plan and stop")
    p.add_argument("--yes", action="store_true", help="confirm restore steps without asking")
    _json(p)

    p = sub.add_parser("restore", help="put a key back on a rebuilt server")
    _inventory(p)
    p.add_argument("--host", required=True, metavar="H")
    _share(p)
    p.add_argument("--entry", metavar="ID", help="manifest entry to restore (default: newest good)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    _json(p)

    p = sub.add_parser("doctor", help="preflight: reachability, auth, admin rights, role, version, tool")
    _inventory(p)
    _limit(p)
    _json(p)

    p = sub.add_parser("inventory", help="validate and show the resolved inventory")
    _inventory(p)
    _limit(p)
    _json(p)

    p = sub.add_parser("vault", help="create, view, edit and re-key ansible-vault secrets files")
    p.add_argument("action", choices=("create", "view", "edit", "encrypt", "decrypt", "rekey"))
    p.add_argument("file", metavar="FILE")

    p = sub.add_parser("prune", help="remove old key files beyond the newest N per server, or leftovers")
    _inventory(p)
    _share(p)
    p.add_argument("--keep", type=_positive_int, metavar="N")
    p.add_argument("--orphans", action="store_true", help="remove key files no entry lists and stale temporaries")
    p.add_argument("--check", action="store_true", help="show what would be removed")
    _json(p)

    p = sub.add_parser("lab", help="serve or measure an emulated fleet")
    lab = p.add_subparsers(dest="lab_command", required=True, metavar="ACTION")
    up = lab.add_parser("up", help="serve an emulated fleet until Ctrl-C")
    up.add_argument("--hosts", type=_positive_int, default=12, metavar="N")
    up.add_argument("--faults", default="", metavar="SPEC", help="'HOST=FAULT[,FAULT];HOST2=FAULT'")
    up.add_argument("--inventory-out", required=True, metavar="FILE")
    up.add_argument(
        "--state-dir",
        metavar="DIR",
        help="CA, certificates, registries, lab secrets (default: <inventory stem>-state beside --inventory-out)",
    )
    up.add_argument("--base-address", default="127.0.20.1", metavar="IP")
    rebuild = lab.add_parser("rebuild", help="replace a lab server's key, as a fresh install would")
    _inventory(rebuild)
    rebuild.add_argument("--host", required=True, metavar="H")
    bench = lab.add_parser("bench", help="measure capacity against an emulated fleet")
    bench.add_argument("--hosts", type=_positive_int, default=64, metavar="N")
    bench.add_argument("--forks", type=_positive_int, default=32, metavar="N")
    bench.add_argument("--latency", type=float, default=0.02, metavar="S", help="added per request (0.02)")
    bench.add_argument("--history", type=int, metavar="N", help="instead: commit cost on a share with N prior entries")
    bench.add_argument("--history-hosts", type=_positive_int, default=1000, metavar="N", help="hosts of its big backup")
    _json(bench)
    return parser


class _Subparsers:
    """Adds the common options (-v) to every command, so they work after the command name too."""

    def __init__(self, action: Any, common: argparse.ArgumentParser) -> None:
        self._action = action
        self._common = common

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self._action.add_parser(name, parents=[self._common], **kwargs)
        return parser


def _handler_module(args: argparse.Namespace) -> str:
    return f"orchestrator.commands.{args.command}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from orchestrator.logs import setup_logging

    setup_logging(verbose=args.verbose, debug_log=DEBUG_LOG)
    try:
        module = importlib.import_module(_handler_module(args))
        return int(module.run(args))
    except KeyfleetError as exc:
        print(f"keyfleet: {mask(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("keyfleet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed early (e.g. piped into head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception:  # unexpected: full detail to the debug log, one line to the user
        logging.getLogger("keyfleet").debug("unexpected error\n%s", traceback.format_exc())
        print(
            f"keyfleet: internal error ({sys.exc_info()[1].__class__.__name__}); details in {DEBUG_LOG}",
            file=sys.stderr,
        )
        return 1
