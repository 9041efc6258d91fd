"""The ``keyfleet`` command line: parse arguments, call one command function, map errors to exit codes."""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator import __version__
from orchestrator.errors import ConfigError, HostFailure, IntegrityError, KeyfleetError, ShareError
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
    # here, not at the top: this module loads before Ctrl-C is handled, so it imports only what is light
    from orchestrator.helpers.remote import DEFAULT_OUTBOX

    parser = argparse.ArgumentParser(
        prog="keyfleet",
        description="Back up the SCSM encryption keys of a fleet of Windows servers over WinRM.",
    )
    parser.add_argument("--version", action="version", version=f"keyfleet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail to stderr")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = _Subparsers(parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of:"), common)

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
    p.add_argument(
        "--format",
        choices=("table", "json", "markdown", "html", "openmetrics"),
        default="table",
        help="table (default), json (stable schema), markdown, html (one self-contained file), "
        "openmetrics (Prometheus text format for node_exporter's textfile collector)",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE (atomically) instead of stdout")

    p = sub.add_parser("run", help="run a runbook (playbook)")
    p.add_argument("playbook", metavar="PLAYBOOK", help="runbook YAML file (see playbooks/)")
    _inventory(p)
    _limit(p)
    _share(p)
    p.add_argument("--check", action="store_true", help="print the plan and stop")
    p.add_argument("--yes", action="store_true", help="confirm restore steps without asking")
    _json(p)

    p = sub.add_parser("restore", help="put a key back on a rebuilt server")
    _inventory(p)
    p.add_argument("--host", required=True, metavar="H", help="inventory name of the rebuilt server")
    _share(p)
    p.add_argument("--entry", metavar="ID", help="manifest entry to restore (default: newest good)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    _json(p)

    p = sub.add_parser("doctor", help="preflight: reachability, auth, admin rights, role, version, tool")
    _inventory(p)
    _limit(p)
    p.add_argument(
        "--tool-smoke",
        action="store_true",
        help="also run a throwaway SecureStorageBackup.exe Backup (random password, file deleted) to learn "
        "whether the tool takes its password on stdin or only on a console",
    )
    _json(p)

    p = sub.add_parser(
        "collect",
        help="store the key files administrators made with the wizard (for tools that take no typed password)",
    )
    _inventory(p)
    _limit(p)
    _share(p)
    p.add_argument(
        "--path",
        default=DEFAULT_OUTBOX,
        metavar="REMOTE_PATH",
        help=f"the folder on each server where the wizard's key file was saved ({DEFAULT_OUTBOX})",
    )
    p.add_argument("--remove", action="store_true", help="delete the server's copy once the share holds it")
    p.add_argument("--forks", type=_positive_int, default=32, metavar="N", help="hosts worked on at once (32)")
    _json(p)

    p = sub.add_parser("inventory", help="validate and show the resolved inventory")
    _inventory(p)
    _limit(p)
    _json(p)

    p = sub.add_parser(
        "vault",
        help="create, view, edit and re-key ansible-vault secrets files",
        description="Secrets files in ansible-vault 1.1 format, for vault:FILE#key references. The vault "
        "password comes from the file named by KEYFLEET_VAULT_PASSWORD_FILE (mode 0600), else a hidden prompt; "
        "rekey takes the new one from KEYFLEET_NEW_VAULT_PASSWORD_FILE, else a prompt asked twice. "
        "create and edit open $VISUAL or $EDITOR on a private temporary copy.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="actions:\n"
        "  create   write a new vault FILE with $EDITOR (asks for a new password twice)\n"
        "  view     print the decrypted content on stdout\n"
        "  edit     change the content with $EDITOR; saved only when it changed\n"
        "  encrypt  encrypt a plain FILE in place\n"
        "  decrypt  decrypt FILE in place (0600)\n"
        "  rekey    encrypt FILE with a new password\n",
    )
    p.add_argument(
        "action",
        choices=("create", "view", "edit", "encrypt", "decrypt", "rekey"),
        help="what to do with FILE (see actions below)",
    )
    p.add_argument("file", metavar="FILE", help="the secrets file (YAML inside the vault)")

    p = sub.add_parser("prune", help="remove old key files beyond the newest N per server, or leftovers")
    _inventory(p)
    _share(p)
    p.add_argument(
        "--keep", type=_positive_int, metavar="N", help="intact backups kept per server (1 or more); or --orphans"
    )
    p.add_argument("--orphans", action="store_true", help="remove key files no entry lists and stale temporaries")
    p.add_argument("--check", action="store_true", help="show what would be removed")
    _json(p)

    p = sub.add_parser("schedule", help="write nightly run definitions (systemd, Task Scheduler, cron)")
    p.add_argument(
        "kind",
        choices=("systemd", "windows", "cron"),
        help="systemd service + timer, Task Scheduler XML, or a cron line",
    )
    _inventory(p)
    p.add_argument("--at", default="02:30", metavar="HH:MM", help="time of day to run, local time (02:30)")
    p.add_argument("-o", "--output", metavar="DIR", help="write the files into DIR (default: print them)")
    p.add_argument("--user", default="keyfleet", help="account the service or cron job runs as (keyfleet)")
    p.add_argument(
        "--metrics-dir",
        metavar="DIR",
        help="textfile collector folder for the audit's metrics (/var/lib/prometheus/node-exporter; Windows: "
        "windows_exporter's textfile_inputs)",
    )
    p.add_argument(
        "--password-file",
        metavar="FILE",
        help="file holding the backup password when the inventory does not say how to get it unattended "
        "(/etc/keyfleet/backup-password)",
    )

    p = sub.add_parser("password", help="give the backup password a new password_id: re-export every server")
    password = p.add_subparsers(dest="password_command", required=True, metavar="ACTION", help="one of:")
    rotate = password.add_parser(
        "rotate",
        help="re-export every server under a new password (KEYFLEET_BACKUP_PASSWORD or the inventory's, asked "
        "twice) and the id --to",
    )
    rotate.add_argument("--from", dest="from_id", required=True, metavar="ID", help="the password_id replaced")
    rotate.add_argument("--to", dest="to_id", required=True, metavar="ID", help="the new password's password_id")
    _inventory(rotate)
    _limit(rotate)
    rotate.add_argument("--forks", type=_positive_int, default=32, metavar="N", help="hosts worked on at once (32)")
    _share(rotate)
    _json(rotate)

    p = sub.add_parser("lab", help="serve or measure an emulated fleet")
    lab = p.add_subparsers(dest="lab_command", required=True, metavar="ACTION", help="one of:")
    up = lab.add_parser("up", help="serve an emulated fleet until Ctrl-C")
    up.add_argument("--hosts", type=_positive_int, default=12, metavar="N", help="servers in the fleet (12)")
    up.add_argument("--faults", default="", metavar="SPEC", help="'HOST=FAULT[,FAULT];HOST2=FAULT'")
    up.add_argument("--inventory-out", required=True, metavar="FILE", help="where to write the fleet's inventory")
    up.add_argument(
        "--state-dir",
        metavar="DIR",
        help="CA, certificates, registries, lab secrets (default: <inventory stem>-state beside --inventory-out)",
    )
    up.add_argument(
        "--base-address",
        default="127.0.20.1",
        metavar="IP",
        help="loopback address of the first server; the others follow (127.0.20.1)",
    )
    up.add_argument(
        "--kdf", choices=("default", "cheap"), default="default", help="cost of the scrypt sealing lab key files"
    )
    rebuild = lab.add_parser("rebuild", help="replace a lab server's key, as a fresh install would")
    _inventory(rebuild)
    rebuild.add_argument("--host", required=True, metavar="H", help="the lab server to rebuild")
    wizard = lab.add_parser(
        "wizard", help="act as an administrator running the wizard on a lab server: a key file in its outbox"
    )
    _inventory(wizard)
    wizard.add_argument("--host", required=True, metavar="H", help="the lab server whose administrator runs the wizard")
    bench = lab.add_parser("bench", help="measure capacity against an emulated fleet")
    bench.add_argument("--hosts", type=_positive_int, default=100, metavar="N", help="servers in the fleet (100)")
    bench.add_argument(
        "--forks", type=_positive_int, metavar="N", help="hosts worked on at once (32; with --history: 128)"
    )
    bench.add_argument("--latency", type=float, default=0.02, metavar="S", help="added per request (0.02)")
    bench.add_argument(
        "--base-address", default="127.1.0.1", metavar="IP", help="first lab host address (127.1.0.1); N in a row"
    )
    bench.add_argument(
        "--kdf",
        choices=("default", "cheap"),
        default="default",
        help="lab key files sealed with scrypt 2^14 (default) or 2^4 (cheap: the lab is not the bottleneck)",
    )
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
    try:
        return _main(argv)
    finally:
        # the program itself, its outcome decided and printed: a Ctrl-C while it exits changes nothing
        _ignore_interrupts(argv)


def _ignore_interrupts(argv: Sequence[str] | None) -> None:
    """From here to the exit, the program itself ignores Ctrl-C and SIGTERM: what is left is to say how
    it ended, which a second interrupt must not turn into a traceback."""
    if argv is None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _printed_exit_code() -> int | None:
    """The exit code of the --json document already printed, if any (console is loaded by then)."""
    console = sys.modules.get("orchestrator.console")
    return None if console is None else console.printed_exit_code()


def _main(argv: Sequence[str] | None) -> int:
    args = argparse.Namespace(command=None, json="--json" in (sys.argv[1:] if argv is None else argv))
    try:
        if argv is None and threading.current_thread() is threading.main_thread():
            from orchestrator.runner.interrupts import install

            install()  # the program itself: interrupts are counted from here on
        args = build_parser().parse_args(argv)
        from orchestrator.logs import setup_logging

        setup_logging(verbose=args.verbose, debug_log=DEBUG_LOG)
        module = importlib.import_module(_handler_module(args))
        if argv is None:
            # the program itself: what its imports made lives to the end, so the collector stops
            # re-scanning it (CPython's gc.freeze; a 1,000-host run otherwise spends ~1.5 % of its CPU there)
            gc.freeze()
        return int(module.run(args))
    except KeyfleetError as exc:
        _ignore_interrupts(argv)
        message = mask(str(exc))
        print(f"keyfleet: {message}", file=sys.stderr)
        if getattr(args, "json", False):
            print_error_json(args.command, _error_kind(exc), message, exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:
        # CPython: an interrupt raised inside exec() of a string (dataclasses build methods so, while a
        # module imports) leaves a flag that makes the process kill itself with SIGINT at exit although
        # the interrupt was handled; the next exec() of a string clears it (pythonrun.c run_eval_code_obj).
        exec("")
        _ignore_interrupts(argv)
        printed = _printed_exit_code()
        if printed is not None:  # the outcome was decided and printed: a Ctrl-C while cleaning up changes nothing
            return printed
        print("keyfleet: interrupted", file=sys.stderr)
        if getattr(args, "json", False):
            print_error_json(args.command, "interrupted", "interrupted by the operator", 130)
        return 130
    except BrokenPipeError:  # stdout closed early (e.g. piped into head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception:  # unexpected: full detail to the debug log, one line to the user
        _ignore_interrupts(argv)
        logging.getLogger("keyfleet").debug("unexpected error\n%s", traceback.format_exc())
        name = sys.exc_info()[1].__class__.__name__
        print(f"keyfleet: internal error ({name}); details in {DEBUG_LOG}", file=sys.stderr)
        if getattr(args, "json", False):
            print_error_json(args.command, "internal", f"internal error ({name})", 1)
        return 1


def print_error_json(command: str | None, kind: str, message: str, exit_code: int) -> None:
    from orchestrator.console import print_error_json as render  # rich loads only when needed

    render(command, kind, message, exit_code)


def _error_kind(exc: KeyfleetError) -> str:
    if isinstance(exc, ConfigError):
        return "config"
    if isinstance(exc, IntegrityError):
        return "integrity"
    if isinstance(exc, ShareError):
        return "share"
    if isinstance(exc, HostFailure):
        return str(exc.kind)
    return "failed"
