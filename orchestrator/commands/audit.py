"""``keyfleet audit``: coverage report of the backup share, from the inventory and the share alone."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console

from orchestrator.durations import duration_option
from orchestrator.errors import ConfigError
from orchestrator.inventory.loader import load_inventory
from orchestrator.jobs.audit import AuditReport, run_audit
from orchestrator.jobs.context import open_store, require_share_folder, share_for
from orchestrator.report.html import render_html
from orchestrator.report.json import render_json
from orchestrator.report.metrics import render_openmetrics
from orchestrator.report.text import headline, print_table, render_markdown, render_text
from orchestrator.share.runrecord import RunRecord

Renderer = Callable[[AuditReport, Sequence[RunRecord]], str]
RENDERERS: dict[str, Renderer] = {
    "table": lambda report, _records: render_text(report),
    "json": lambda report, _records: render_json(report),
    "markdown": lambda report, _records: render_markdown(report),
    "html": render_html,  # coverage over time, from the run records
    "openmetrics": render_openmetrics,  # the latest backup run, from the run records
}
REPORT_MODE = 0o644  # a report is for others to read (node_exporter runs as its own user)


def run(args: argparse.Namespace) -> int:
    inventory = load_inventory(args.inventory)
    max_age = duration_option(args.max_age, "--max-age") if args.max_age else inventory.backup.max_age
    with share_for(inventory, args.share) as share:
        require_share_folder(share)
        store = open_store(inventory, share, sign=False)
        report = run_audit(inventory, store, max_age=max_age)
    write_report(report, args.format, args.output, report.records)
    return report.exit_code


def write_report(report: AuditReport, fmt: str, output: str | None, records: Sequence[RunRecord] = ()) -> None:
    """To ``output`` (atomically, and the result line on stderr), else stdout: rich on a terminal for ``table``."""
    if output:
        try:
            _replace(Path(output), RENDERERS[fmt](report, records).encode("utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot write the report to {output}: {exc.strerror}", key="--output") from None
        print(f"keyfleet: wrote {fmt} report to {output}; {headline(report)[-1]}", file=sys.stderr)
        return
    console = Console()
    if fmt == "table" and console.is_terminal:
        print_table(report, console)
    else:
        sys.stdout.write(RENDERERS[fmt](report, records))


def _replace(path: Path, data: bytes) -> None:
    """Write a temporary file beside ``path`` and rename it: a collector never reads half a file."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temp, REPORT_MODE)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
