"""Renderings of an audit report for people: plain text, a terminal table, Markdown (HTML: ``report.html``,
JSON: ``report.json``)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator.durations import format_duration
from orchestrator.jobs.audit import AuditReport, Coverage, CoverageStatus, ServerCoverage
from orchestrator.share.manifest import format_iso

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
