"""What the commands that store keys (backup, collect) share: the run over the plan, its run
record, the outcome table and the --json document."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from rich.text import Text

from orchestrator.console import STATUS_STYLE, Ui, failure_text, failures_first, print_result_json
from orchestrator.emulation import serving
from orchestrator.inventory.model import Inventory
from orchestrator.jobs import backup, context
from orchestrator.report.json import outcome_counts, run_json
from orchestrator.runner.interrupts import Interrupts
from orchestrator.runner.pool import RunnerEvents, RunSummary
from orchestrator.share.manifest import ManifestEntry
from orchestrator.share.runrecord import RunRecord
from orchestrator.share.store import BackupStore
from orchestrator.status import Status


def run_and_record(
    args: argparse.Namespace,
    ui: Ui,
    inv: Inventory,
    share_url: str,
    store: BackupStore,
    plan: backup.BackupPlan,
    task: backup.StoringTask,
    command: str,
    interrupts: Interrupts,
) -> int:
    """Run ``task`` over the plan (inside the caller's ``deferred()``), write the run record, render."""
    started = datetime.now(UTC)
    with serving(inv), ui.fleet_progress(command, [h.name for h in plan.hosts]) as progress:
        summary = backup.run_backup(
            plan,
            task,
            forks=args.forks,
            events=RunnerEvents(on_state=progress.on_state, on_done=progress.on_done),
            interrupts=interrupts,
        )
    record = backup.build_run_record(
        run_id=task.run_id,
        command=command,
        started=started,
        inv=inv,
        share_url=share_url,
        summary=summary,
        skipped=plan.skipped,
    )
    record_path, record = context.record_run(store, record, ui.warn)
    if summary.interrupted:
        store.remove_stale_temporaries()
    code = backup.exit_code(summary)
    for notice in store.notices:
        ui.line(notice)
    render_outcomes(ui, summary, record, record_path)
    if args.json:
        # "command" names the command run (password rotate's run record says "backup": what it did)
        print_result_json(args.command, run_json(record, record_path), code)
    return code


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
    counts = outcome_counts(record)
    ui.line(
        f"{counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped"
        + (" (interrupted)" if summary.interrupted else "")
        + (f"; run record {record_path}" if record_path else "")
    )
