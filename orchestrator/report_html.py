"""The audit report as one self-contained HTML file: inline CSS only, no scripts, no external assets."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from orchestrator.jobs.audit import AuditReport, Coverage, Status
from orchestrator.report import SERVER_COLUMNS, headline, server_row
from orchestrator.share.runrecord import RunRecord

# Colour is never the only signal: every status is also written out in the cell.
STATUS_COLOURS = {
    Status.COVERED: ("#1a7f37", "#dafbe1"),
    Status.STALE: ("#9a6700", "#fff8c5"),
    Status.MISSING: ("#cf222e", "#ffebe9"),
    Status.FAILING: ("#cf222e", "#ffebe9"),
    Status.ALTERED: ("#8250df", "#fbefff"),
    Status.LOST: ("#8250df", "#fbefff"),
}

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328; margin: 2em; }
h1 { font-size: 1.5em; margin: 0 0 .3em; } h2 { font-size: 1.15em; margin: 1.6em 0 .5em; }
.meta { color: #59636e; margin: .1em 0; }
.result { display: inline-block; padding: .3em .8em; border-radius: 4px; font-weight: 600; margin: .6em 0; }
.result-0 { background: #dafbe1; color: #1a7f37; } .result-1 { background: #fff8c5; color: #9a6700; }
.result-3 { background: #fbefff; color: #8250df; border: 2px solid #8250df; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35em .6em; border-bottom: 1px solid #d1d9e0; vertical-align: top; }
th { background: #f6f8fa; }
td.mono { font-family: ui-monospace, "SFMono-Regular", Consolas, monospace; font-size: .92em; white-space: nowrap; }
td.path { white-space: normal; overflow-wrap: anywhere; }
.status { font-weight: 600; border-radius: 3px; padding: .1em .45em; white-space: nowrap; }
.bars td { border: none; padding: .25em .6em; }
.bar { width: 18em; height: 1em; background: #ffebe9; border: 1px solid #d1d9e0; border-radius: 3px; }
.fill { height: 100%; background: #2da44e; border-radius: 2px 0 0 2px; }
.sev-integrity { color: #8250df; font-weight: 600; }
@media print {
  body { margin: 0; font-size: 10pt; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  tr { break-inside: avoid; } thead { display: table-header-group; }
}
"""


def _bars(title: str, items: tuple[Coverage, ...]) -> str:
    rows = "".join(
        f'<tr><td>{escape(c.name)}</td><td><div class="bar" role="img" aria-label="{c.percent:g}% covered">'
        f'<div class="fill" style="width:{c.percent:g}%"></div></div></td>'
        f"<td>{c.covered}/{c.servers}</td><td><strong>{c.percent:g}%</strong></td></tr>"
        for c in items
    )
    return f'<h2>{escape(title)}</h2>\n<table class="bars">{rows}</table>\n'


def _servers(report: AuditReport) -> str:
    head = "".join(f"<th>{escape(c.capitalize())}</th>" for c in SERVER_COLUMNS)
    body = []
    for server in report.servers:
        cells = [escape(cell) for cell in server_row(server)]
        fg, bg = STATUS_COLOURS[server.status]
        cells[3] = f'<span class="status" style="color:{fg};background:{bg}">{cells[3]}</span>'
        body.append(
            f'<tr class="status-{server.status}">'
            + "".join(
                f'<td class="mono">{cell}</td>' if i in (0, 4, 7) else f"<td>{cell}</td>"
                for i, cell in enumerate(cells)
            )
            + "</tr>"
        )
    return f"<h2>Servers</h2>\n<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(body) + "</tbody></table>\n"


def _findings(report: AuditReport) -> str:
    if not report.findings:
        return "<h2>Findings</h2>\n<p>None.</p>\n"
    rows = "".join(
        f'<tr><td class="sev-{f.severity}">{escape(str(f.severity))}</td><td>{escape(f.kind)}</td>'
        f'<td class="mono">{escape(f.host or "-")}</td><td class="mono path">{escape(f.path or "-")}</td>'
        f"<td>{escape(f.message)}</td></tr>"
        for f in report.findings
    )
    return (
        "<h2>Findings</h2>\n<table><thead><tr><th>Severity</th><th>Kind</th><th>Host</th><th>Path</th>"
        f"<th>Message</th></tr></thead><tbody>{rows}</tbody></table>\n"
    )


def render_html(report: AuditReport, records: Sequence[RunRecord] = ()) -> str:
    """One HTML document: coverage bars per role and group, the server table, the findings."""
    meta = "".join(f'<p class="meta">{escape(line)}</p>' for line in headline(report)[:2])
    result = headline(report)[2]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        "<title>keyfleet backup coverage</title>\n"
        f"<style>{CSS}</style>\n</head>\n<body>\n<h1>keyfleet backup coverage</h1>\n{meta}\n"
        f'<p class="result result-{report.exit_code}">{escape(result)}</p>\n'
        + _bars("Coverage by role", report.roles)
        + _bars("Coverage by management group", report.groups)
        + _servers(report)
        + _findings(report)
        + "</body>\n</html>\n"
    )
