"""``keyfleet audit``: coverage report of the backup share, from the inventory and the share alone."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from orchestrator.errors import ConfigError
from orchestrator.inventory.loader import load_inventory
from orchestrator.jobs.audit import AuditReport, parse_max_age, run_audit
from orchestrator.jobs.context import open_store, require_share_folder, share_for
from orchestrator.report import headline, print_table, render_json, render_markdown, render_text
from orchestrator.report_html import render_html

RENDERERS = {"table": render_text, "json": render_json, "markdown": render_markdown, "html": render_html}


def run(args: argparse.Namespace) -> int:
    inventory = load_inventory(args.inventory)
    max_age = parse_max_age(args.max_age) if args.max_age else inventory.backup.max_age
    with share_for(inventory, args.share) as share:
        require_share_folder(share)
        report = run_audit(inventory, open_store(inventory, share, sign=False), max_age=max_age)
    write_report(report, args.format, args.output)
    return report.exit_code


def write_report(report: AuditReport, fmt: str, output: str | None) -> None:
    """To ``output`` (and the result line on stderr), else stdout: rich on a terminal for ``table``."""
    if output:
        try:
            Path(output).write_text(RENDERERS[fmt](report), encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write the report to {output}: {exc.strerror}", key="--output") from None
        print(f"keyfleet: wrote {fmt} report to {output}; {headline(report)[-1]}", file=sys.stderr)
        return
    console = Console()
    if fmt == "table" and console.is_terminal:
        print_table(report, console)
    else:
        sys.stdout.write(RENDERERS[fmt](report))
