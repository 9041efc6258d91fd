"""Renderings of an audit report: JSON (stable schema), plain text, rich table, Markdown; HTML in report_html.

JSON schema ``keyfleet-audit/1`` (see :func:`audit_json`): every inventory server appears once
in ``servers``, in inventory order; times are ISO 8601 UTC with ``Z``; absent values are null.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator.durations import format_duration
from orchestrator.jobs.audit import AuditReport, Coverage, CoverageStatus, ServerCoverage
from orchestrator.share.manifest import format_iso

SCHEMA = "keyfleet-audit/1"
STATUS_STYLE = {
    CoverageStatus.COVERED: "green",
    CoverageStatus.STALE: "yellow",
    CoverageStatus.MISSING: "red",
    CoverageStatus.FAILING: "red",
    CoverageStatus.ALTERED: "bold magenta",
    CoverageStatus.LOST: "bold magenta",
}
RESULT_TEXT = {0: "full coverage", 1: "coverage gaps", 3: "INTEGRITY FAILURE"}
SERVER_COLUMNS = (
    "host",
    "group",
    "role",
    "status",
    "last good backup",
    "age",
    "password",
    "input",
    "sha-256",
    "detail",
)


def _iso(value: datetime | None) -> str | None:
    return format_iso(value) if value is not None else None


def _coverage_json(coverage: Coverage) -> dict[str, Any]:
    return {
        "name": coverage.name,
        "servers": coverage.servers,
        "covered": coverage.covered,
        "coverage_percent": coverage.percent,
    }


def _server_json(server: ServerCoverage) -> dict[str, Any]:
    good = server.last_good
    attempt = server.last_attempt
    return {
        "host": server.host,
        "group": server.group,
        "role": server.role,
        "status": str(server.status),
        "reason": server.reason,
        "last_good_backup": _iso(good.created) if good else None,
        "age_seconds": int(server.age.total_seconds()) if server.age is not None else None,
        "entry_id": good.id if good else None,
        "path": good.path if good else None,
        "sha256": good.sha256 if good else None,
        "sha256_verified": server.sha256_verified,
        "size": good.size if good else None,
        "password_id": good.password_id if good else None,
        "method": good.method if good else None,
        "scsm_version": good.scsm_version if good else None,
        "current_scsm_version": server.current_version,
        "backups": server.backups,
        "last_attempt": None
        if attempt is None
        else {
            "run_id": attempt.run_id,
            "time": _iso(attempt.time),
            "status": str(attempt.status),
            "kind": attempt.kind,
            "message": attempt.message,
        },
        "problems": list(server.problems),
    }


def audit_json(report: AuditReport) -> dict[str, Any]:
    """The ``--format json`` document (kept stable; new keys may be added, none removed)."""
    counts = report.counts
    return {
        "format": SCHEMA,
        "generated": _iso(report.generated),
        "inventory": report.inventory,
        "share": report.share,
        "max_age_seconds": int(report.max_age.total_seconds()),
        "exit_code": report.exit_code,
        "manifest": {
            "entries": report.manifest_entries,
            "updated": _iso(report.manifest_updated),
            "signature": str(report.signature),
            "public_key_sha256": report.public_key_sha256,
            "generation": report.generation,
        },
        "summary": {
            "servers": len(report.servers),
            **{str(status): counts[status] for status in CoverageStatus},
            "recoverable": report.recoverable,
            "coverage_percent": report.total.percent,
        },
        "roles": [_coverage_json(c) for c in report.roles],
        "groups": [_coverage_json(c) for c in report.groups],
        "servers": [_server_json(s) for s in report.servers],
        "findings": [
            {
                "kind": f.kind,
                "severity": str(f.severity),
                "host": f.host,
                "path": f.path,
                "message": f.message,
                "age_seconds": None if f.age is None else int(f.age.total_seconds()),
            }
            for f in report.findings
        ],
    }


def render_json(report: AuditReport) -> str:
    return json.dumps(audit_json(report), indent=2, ensure_ascii=False) + "\n"


def server_row(server: ServerCoverage) -> tuple[str, ...]:
    """One server as table cells, in ``SERVER_COLUMNS`` order (shared by every text format)."""
    good = server.last_good
    return (
        server.host,
        server.group,
        server.role,
        str(server.status),
        format_iso(good.created) if good else "-",
        format_duration(server.age) if server.age is not None else "-",
        good.password_id if good else "-",
        (good.method or "-") if good else "-",
        f"verified {good.sha256[:12]}" if good and server.sha256_verified else "-",
        server.reason,
    )


def headline(report: AuditReport) -> list[str]:
    total = report.total
    return [
        f"share {report.share}: manifest with {report.manifest_entries} entries, signature {report.signature}",
        f"inventory {report.inventory}; max age {format_duration(report.max_age)}; "
        f"generated {format_iso(report.generated)}",
        f"coverage {total.covered}/{total.servers} servers ({total.percent:g}%), "
        f"{report.recoverable} recoverable; result: {RESULT_TEXT[report.exit_code]} (exit {report.exit_code})",
    ]


def _coverage_lines(title: str, items: tuple[Coverage, ...]) -> list[str]:
    width = max((len(c.name) for c in items), default=0)
    return [title, *(f"  {c.name:<{width}}  {c.covered}/{c.servers}  {c.percent:g}%" for c in items)]


def _finding_lines(report: AuditReport) -> list[str]:
    if not report.findings:
        return ["Findings: none"]
    return [
        "Findings:",
        *(f"  [{f.severity}] {f.kind}: {f.host + ': ' if f.host else ''}{f.message}" for f in report.findings),
    ]


def render_text(report: AuditReport) -> str:
    """Plain text for logs, pipes and files."""
    rows = [SERVER_COLUMNS, *(server_row(s) for s in report.servers)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(SERVER_COLUMNS) - 1)]
    table = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1] for row in rows]
    lines = [
        *headline(report),
        "",
        *table,
        "",
        *_coverage_lines("Coverage by role:", report.roles),
        *_coverage_lines("Coverage by management group:", report.groups),
        "",
        *_finding_lines(report),
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def print_table(report: AuditReport, console: Console) -> None:
    """The rich rendering for a terminal."""
    for line in headline(report):
        console.print(Text(line))
    # overflow "fold": a long path in a cell is broken over lines, never cut short with an ellipsis
    table = Table(header_style="bold")
    for column in SERVER_COLUMNS:
        table.add_column(column, overflow="fold")
    for server in report.servers:
        cells = list(server_row(server))
        table.add_row(*cells[:3], Text(cells[3], style=STATUS_STYLE[server.status]), *cells[4:])
    console.print(table)
    cover = Table("coverage", "servers", "covered", "%", header_style="bold")
    for prefix, items in (("role", report.roles), ("group", report.groups)):
        for c in items:
            style = "green" if c.covered == c.servers else "yellow" if c.covered else "red"
            cover.add_row(f"{prefix} {c.name}", str(c.servers), str(c.covered), Text(f"{c.percent:g}%", style=style))
    console.print(cover)
    for line in _finding_lines(report):
        console.print(Text(line, style="bold magenta" if "[integrity]" in line else ""))


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in rows),
    ]


def render_markdown(report: AuditReport) -> str:
    """For a ticket or a wiki page."""
    status_rows = []
    for server in report.servers:
        row = list(server_row(server))
        row[0] = f"`{row[0]}`"
        row[3] = f"**{row[3]}**" if server.status is not CoverageStatus.COVERED else row[3]
        status_rows.append(tuple(row))
    coverage_rows = [
        (kind, c.name, str(c.servers), str(c.covered), f"{c.percent:g}%")
        for kind, items in (("role", report.roles), ("group", report.groups))
        for c in items
    ]
    findings = [(str(f.severity), f.kind, f.host or "-", f.path or "-", f.message) for f in report.findings]
    lines = [
        "# keyfleet backup coverage",
        "",
        *(f"- {line}" for line in headline(report)),
        "",
        "## Coverage",
        "",
        *_md_table(("", "name", "servers", "covered", "coverage"), coverage_rows),
        "",
        "## Servers",
        "",
        *_md_table(tuple(c.capitalize() for c in SERVER_COLUMNS), status_rows),
        "",
        "## Findings",
        "",
        *(_md_table(("severity", "kind", "host", "path", "message"), findings) if findings else ["None."]),
    ]
    return "\n".join(lines) + "\n"
