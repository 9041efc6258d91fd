"""The outcome table and --json document shared by the commands that store keys (backup, collect)."""

from __future__ import annotations

from rich.text import Text

from orchestrator.console import STATUS_STYLE, Ui, failure_text, failures_first
from orchestrator.runner import RunSummary, Status
from orchestrator.share.manifest import ManifestEntry
from orchestrator.share.runrecord import RunRecord


def render_outcomes(ui: Ui, summary: RunSummary[ManifestEntry], record: RunRecord, record_path: str | None) -> None:
    """One row per host (failures with their kind, successes with how the password reached the tool)."""
    rows = []
    by_host = {r.host.name: r for r in summary.results}
    for outcome in record.outcomes:
        result = by_host.get(outcome.host)
        status = Text(str(outcome.status), style=STATUS_STYLE.get(Status(outcome.status), ""))
        error = failure_text(outcome.kind, outcome.message)
        if outcome.warning:
            error = f"warning: {outcome.warning}"
        rows.append(
            [
                outcome.host,
                outcome.role,
                outcome.group,
                status,
                outcome.method or "",
                "" if outcome.size is None else str(outcome.size),
                (outcome.sha256 or "")[:12],
                f"{outcome.duration:.1f}s" if result else "",
                error,
            ]
        )
    order = failures_first([o.kind for o in record.outcomes], [str(o.status) for o in record.outcomes])
    rows = [rows[i] for i in order]
    ui.table(
        f"{record.command} {record.run_id}",
        ["host", "role", "group", "status", "input", "size", "sha256", "duration", "error"],
        rows,
    )
    ui.failure_hints(summary.results)
    counts = {s: sum(1 for o in record.outcomes if o.status == s) for s in ("ok", "failed", "skipped")}
    ui.line(
        f"{counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped"
        + (" (interrupted)" if summary.interrupted else "")
        + (f"; run record {record_path}" if record_path else "")
    )


def result_json(record: RunRecord, record_path: str | None, code: int) -> dict[str, object]:
    document = record.to_json()
    document["run_record"] = record_path
    document["exit_code"] = code
    document["summary"] = {s: sum(1 for o in record.outcomes if o.status == s) for s in ("ok", "failed", "skipped")}
    return document
