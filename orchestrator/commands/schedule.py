"""``keyfleet schedule systemd|windows|cron -i INV``: write nightly run definitions for an inventory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator.errors import ConfigError
from orchestrator.inventory.loader import load_inventory
from orchestrator.schedule import (
    DEFAULT_PASSWORD_FILE,
    ScheduleOptions,
    definitions,
    needs_password_file,
    parse_at,
    unattended_problems,
)


def run(args: argparse.Namespace) -> int:
    inv = load_inventory(args.inventory)
    options = ScheduleOptions(
        at=parse_at(args.at),
        user=args.user,
        metrics_dir=args.metrics_dir,
        password_file=args.password_file,
    )
    files = definitions(args.kind, inv, options)
    for problem in unattended_problems(inv):
        print(
            f"keyfleet: warning: {problem} cannot be answered in an unattended run; use file:, command: or vault:",
            file=sys.stderr,
        )
    if needs_password_file(inv):
        source = args.password_file or DEFAULT_PASSWORD_FILE.get(args.kind)
        owner = {"systemd": "root (systemd hands it to the service)", "cron": args.user}.get(args.kind)
        if source and owner:
            print(f"keyfleet: the backup password is read from {source} (mode 0600, owner {owner})", file=sys.stderr)
        else:
            print(
                "keyfleet: warning: a scheduled task cannot answer a prompt or set a variable: set backup.password "
                "to file:, command: or vault: in the inventory",
                file=sys.stderr,
            )
    if not args.output:
        for name, text in files.items():
            if name.endswith(".xml"):  # printed as UTF-8 text, so it must not claim UTF-16
                text = text.replace('encoding="UTF-16"', 'encoding="UTF-8"', 1)
            sys.stdout.write(f"# --- {name} ---\n{text}" if len(files) > 1 else text)
        return 0
    folder = Path(args.output)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder", key="--output")
    for name, text in files.items():
        target = folder / name
        try:
            if name.endswith(".xml"):  # what Task Scheduler exports and schtasks /xml reads: UTF-16 with a BOM
                target.write_bytes(b"\xff\xfe" + text.replace("\n", "\r\n").encode("utf-16-le"))
            else:
                target.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write {target}: {exc.strerror}", key="--output") from None
        print(f"keyfleet: wrote {target}", file=sys.stderr)
    return 0
