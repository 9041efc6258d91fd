"""The audit report as one self-contained HTML file: inline CSS and SVG only, no scripts, no external assets."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from orchestrator.durations import format_duration
from orchestrator.jobs.audit import GAPS, INTEGRITY, AuditReport, Coverage, CoverageStatus, Severity
from orchestrator.report.chart import coverage_series, render_svg
from orchestrator.report.text import SERVER_COLUMNS, headline, server_row
from orchestrator.share.runrecord import RunRecord

# Colour is never the only signal: every status is also written out in the cell.
STATUS_COLOURS = {
    CoverageStatus.COVERED: ("#1a7f37", "#dafbe1"),
    CoverageStatus.STALE: ("#9a6700", "#fff8c5"),
    CoverageStatus.MISSING: ("#cf222e", "#ffebe9"),
    CoverageStatus.FAILING: ("#cf222e", "#ffebe9"),
    CoverageStatus.ALTERED: ("#ffffff", "#cf222e"),  # integrity: white on red, the loudest there is
    CoverageStatus.LOST: ("#ffffff", "#cf222e"),
}
RECOVERABLE = (
    "recoverable: servers with at least one intact backup on the share (its file matches the signed manifest), "
    "whatever its age: a key that can be restored today, though perhaps an old one"
)
ZERO_CHIP = "color:#59636e;background:#f6f8fa"  # a status no server has stays quiet
# columns that never wrap: host, group, role, status, time, age, password id, hash (the detail may, anywhere)
NO_WRAP = frozenset(range(8))
MONO = frozenset({0, 4, 7})

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328; margin: 2em; }
h1 { font-size: 1.5em; margin: 0 0 .3em; } h2 { font-size: 1.15em; margin: 1.6em 0 .5em; }
.meta { color: #59636e; margin: .1em 0; }
.verdict { padding: .6em 1em; border-radius: 6px; margin: .8em 0; font-size: 1.1em; }
.verdict strong { font-size: 1.25em; margin-right: .6em; }
.verdict-0 { background: #dafbe1; color: #1a7f37; border: 2px solid #1a7f37; }
.verdict-1 { background: #fff8c5; color: #7d4e00; border: 2px solid #9a6700; }
.verdict-3 { background: #cf222e; color: #ffffff; border: 2px solid #82071e; }
.counts { display: flex; flex-wrap: wrap; gap: .5em; margin: .6em 0; padding: 0; list-style: none; }
.counts li { border-radius: 4px; padding: .2em .7em; white-space: nowrap; }
.counts b { font-size: 1.15em; margin-right: .3em; }
.define { color: #59636e; font-size: .92em; margin: .2em 0 .8em; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35em .6em; border-bottom: 1px solid #d1d9e0; vertical-align: top; }
th { background: #f6f8fa; white-space: nowrap; }
.nw { white-space: nowrap; }
.mono { font-family: ui-monospace, "SFMono-Regular", Consolas, monospace; font-size: .92em; }
td.path { white-space: normal; overflow-wrap: anywhere; }
.status { font-weight: 600; border-radius: 3px; padding: .1em .45em; white-space: nowrap; }
table.bars { width: auto; }
.bars td { border: none; padding: .25em .6em; white-space: nowrap; }
.bars td.name { font-family: ui-monospace, "SFMono-Regular", Consolas, monospace; }
.bar { width: 18em; height: 1em; background: #ffebe9; border: 1px solid #d1d9e0; border-radius: 3px; }
.fill { height: 100%; background: #2da44e; border-radius: 2px 0 0 2px; }
.sev-integrity { color: #cf222e; font-weight: 700; }
.chart text { font: 11px system-ui, sans-serif; fill: #59636e; }
.legends { margin: .2em 0; } .legend { margin-right: 1.2em; white-space: nowrap; }
.swatch { display: inline-block; width: 1.4em; height: .3em; vertical-align: middle; margin-right: .4em; }
@media print {
  body { margin: 0; font-size: 10pt; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  tr { break-inside: avoid; } thead { display: table-header-group; }
}
"""


def verdict(report: AuditReport) -> tuple[str, str]:
    """The report's verdict and one sentence of why."""
    total = report.total
    if report.exit_code == 3:
        findings = sum(1 for f in report.findings if f.severity is Severity.INTEGRITY)
        servers = sum(1 for s in report.servers if s.status in INTEGRITY)
        return "INTEGRITY FAILURE", (
            f"the share no longer matches its signed manifest: {findings} integrity finding(s), "
            f"{servers} server(s) with an altered or lost backup; investigate before relying on any key"
        )
    if report.exit_code == 1:
        gaps = sum(1 for s in report.servers if s.status in GAPS)
        return "COVERAGE BELOW POLICY", (
            f"{gaps} of {total.servers} server(s) have no intact backup younger than {format_duration(report.max_age)}"
        )
    return "OK", f"all {total.servers} server(s) have an intact backup younger than {format_duration(report.max_age)}"


def _chip(status: CoverageStatus) -> str:
    fg, bg = STATUS_COLOURS[status]
    return f"color:{fg};background:{bg}"


def _counts(report: AuditReport) -> str:
    counts = report.counts
    items = "".join(
        f'<li class="count-{status}" style="{_chip(status) if counts[status] else ZERO_CHIP}">'
        f"<b>{counts[status]}</b>{escape(str(status))}</li>"
        for status in CoverageStatus
    )
    return f'<ul class="counts" aria-label="servers per status">{items}</ul>\n'


def _bars(title: str, items: tuple[Coverage, ...], name_width: int) -> str:
    rows = "".join(
        f'<tr><td class="name" style="width:{name_width}ch">{escape(c.name)}</td>'
        f'<td><div class="bar" role="img" aria-label="{c.percent:g}% covered">'
        f'<div class="fill" style="width:{c.percent:g}%"></div></div></td>'
        f"<td>{c.covered}/{c.servers}</td><td><strong>{c.percent:g}%</strong></td></tr>"
        for c in items
    )
    return f'<h2>{escape(title)}</h2>\n<table class="bars">{rows}</table>\n'


def _cell(index: int, content: str) -> str:
    flags = (("nw", index in NO_WRAP), ("mono", index in MONO), ("path", index not in NO_WRAP))
    classes = " ".join(c for c, on in flags if on)
    return f'<td class="{classes}">{content}</td>' if classes else f"<td>{content}</td>"


def _servers(report: AuditReport) -> str:
    head = "".join(f"<th>{escape(c.capitalize())}</th>" for c in SERVER_COLUMNS)
    body = []
    for server in report.servers:
        cells = [escape(cell) for cell in server_row(server)]
        fg, bg = STATUS_COLOURS[server.status]
        cells[3] = f'<span class="status" style="color:{fg};background:{bg}">{cells[3]}</span>'
        row = "".join(_cell(i, c) for i, c in enumerate(cells))
        body.append(f'<tr class="status-{server.status}">{row}</tr>')
    return f"<h2>Servers</h2>\n<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(body) + "</tbody></table>\n"


def _findings(report: AuditReport) -> str:
    if not report.findings:
        return "<h2>Findings</h2>\n<p>None.</p>\n"
    rows = "".join(
        f'<tr><td class="nw sev-{f.severity}">{escape(str(f.severity))}</td><td class="nw">{escape(f.kind)}</td>'
        f'<td class="mono nw">{escape(f.host or "-")}</td><td class="mono path">{escape(f.path or "-")}</td>'
        f"<td>{escape(f.message)}</td></tr>"
        for f in report.findings
    )
    return (
        "<h2>Findings</h2>\n<table><thead><tr><th>Severity</th><th>Kind</th><th>Host</th><th>Path</th>"
        f"<th>Message</th></tr></thead><tbody>{rows}</tbody></table>\n"
    )


def render_html(report: AuditReport, records: Sequence[RunRecord] = ()) -> str:
    """One HTML document: the verdict, counts per status, coverage bars per role and group, coverage over
    time (from ``records``, the share's run records), the server table, the findings."""
    meta = "".join(f'<p class="meta">{escape(line)}</p>' for line in headline(report))
    word, why = verdict(report)
    name_width = max((len(c.name) for c in (*report.roles, *report.groups)), default=4) + 1
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        "<title>keyfleet backup coverage</title>\n"
        f"<style>{CSS}</style>\n</head>\n<body>\n<h1>keyfleet backup coverage</h1>\n"
        f'<p class="verdict verdict-{report.exit_code}"><strong>{word}</strong>{escape(why)}</p>\n'
        + _counts(report)
        + f"{meta}\n"
        + f'<p class="define"><dfn>{escape(RECOVERABLE)}</dfn>.</p>\n'
        + _bars("Coverage by role", report.roles, name_width)
        + _bars("Coverage by management group", report.groups, name_width)
        + f"<h2>Coverage over time (last 90 days)</h2>\n{render_svg(coverage_series(report, records), report)}"
        + _servers(report)
        + _findings(report)
        + "</body>\n</html>\n"
    )
