"""Coverage over time from the share's run records, drawn as an inline SVG line chart (one line per role)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from html import escape

from orchestrator.jobs.audit import BACKUP_COMMANDS, AuditReport
from orchestrator.share.runrecord import RunRecord
from orchestrator.status import Status

DAYS = 90
WIDTH, HEIGHT = 760, 220
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 12, 28  # plot margins
# one colour per role, none of them the coverage bars' green (the browser test counts that colour)
ROLE_COLOURS = ("#0969da", "#bc4c00", "#8250df", "#1b7c83")


@dataclass(frozen=True)
class Series:
    role: str
    points: tuple[tuple[datetime, float], ...]  # (end of day, covered percent)


def coverage_series(report: AuditReport, records: Sequence[RunRecord], days: int = DAYS) -> list[Series]:
    """Per role and day of the last ``days``: the percent of the role's servers (as the inventory has them now)
    with a successful backup in the ``max_age`` before that day's end, by the run records. Days before the
    first run record have no point."""
    role_of = {s.host: s.role for s in report.servers}
    successes: dict[str, list[datetime]] = {}
    for record in records:
        if record.command not in BACKUP_COMMANDS:
            continue
        for outcome in record.outcomes:
            if outcome.status is Status.OK and outcome.entry_id and outcome.host in role_of:
                successes.setdefault(outcome.host, []).append(record.started)
    first = min((r.started for r in records if r.command in BACKUP_COMMANDS), default=None)
    if first is None:
        return []
    today = report.generated.astimezone(UTC).date()
    ends = []
    for back in range(days - 1, -1, -1):
        day = today - timedelta(days=back)
        end = report.generated if back == 0 else datetime.combine(day, time.max, tzinfo=UTC)
        if end >= first:
            ends.append(end)
    series = []
    for coverage in report.roles:
        hosts = [h for h, role in role_of.items() if role == coverage.name]
        points = tuple(
            (end, 100.0 * sum(1 for h in hosts if _covered_at(successes.get(h, []), end, report.max_age)) / len(hosts))
            for end in ends
        )
        series.append(Series(coverage.name, points))
    return series


def _covered_at(times: list[datetime], end: datetime, max_age: timedelta) -> bool:
    return any(end - max_age < moment <= end for moment in times)


def render_svg(series: list[Series], report: AuditReport) -> str:
    """The chart, or a sentence when there is no run record to draw from."""
    if not series or not series[0].points:
        return '<p class="meta">No backup run records on the share yet: nothing to draw.</p>\n'
    start = report.generated - timedelta(days=DAYS - 1)
    span = (report.generated - start).total_seconds()
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(moment: datetime) -> float:
        return LEFT + plot_w * max(0.0, (moment - start).total_seconds()) / span

    def y(percent: float) -> float:
        return TOP + plot_h * (1 - percent / 100)

    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="chart-title">',
        f'<title id="chart-title">Coverage per role over the last {DAYS} days, from the run records</title>',
    ]
    for percent in (0, 50, 100):
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(percent):.1f}" y2="{y(percent):.1f}" stroke="#d1d9e0"/>'
            f'<text x="{LEFT - 6}" y="{y(percent) + 4:.1f}" text-anchor="end">{percent}%</text>'
        )
    for label, moment, anchor in ((start, start, "start"), (report.generated, report.generated, "end")):
        parts.append(
            f'<text x="{x(moment):.1f}" y="{HEIGHT - 8}" text-anchor="{anchor}">{label.date().isoformat()}</text>'
        )
    for index, line in enumerate(series):
        colour = ROLE_COLOURS[index % len(ROLE_COLOURS)]
        points = " ".join(f"{x(m):.1f},{y(p):.1f}" for m, p in line.points)
        parts.append(
            f'<polyline class="series" data-role="{escape(line.role)}" fill="none" stroke="{colour}" '
            f'stroke-width="2" points="{points}"/>'
        )
    parts.append("</svg>")
    legend = "".join(
        f'<span class="legend"><span class="swatch" style="background:{ROLE_COLOURS[i % len(ROLE_COLOURS)]}"></span>'
        f"{escape(line.role)} {line.points[-1][1]:g}%</span>"
        for i, line in enumerate(series)
    )
    return "".join(parts) + f'\n<p class="legends">{legend}</p>\n'
