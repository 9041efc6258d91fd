"""``keyfleet backup``: back up the selected servers and render the outcome."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

from rich.text import Text

from orchestrator.console import STATUS_STYLE, Ui, print_json
from orchestrator.errors import ConfigError
from orchestrator.inventory.limit import select_hosts
from orchestrator.inventory.loader import load_inventory
from orchestrator.inventory.model import HostConfig, Inventory
from orchestrator.inventory.schema import Invalid, parse_duration
from orchestrator.jobs import backup, context
from orchestrator.lab.fleet import serving
from orchestrator.runner import RunnerEvents, RunSummary, Status
from orchestrator.share.manifest import ManifestEntry
from orchestrator.share.runrecord import RunRecord, new_run_id
from orchestrator.share.store import BackupStore


def parse_age(text: str | None, option: str) -> timedelta | None:
    if text is None:
        return None
    try:
        return timedelta(seconds=parse_duration(text))
    except Invalid as exc:
        raise ConfigError(f"{text!r} {exc}", key=option) from None


def run(args: argparse.Namespace) -> int:
    ui = Ui()
    inv = load_inventory(args.inventory)
    share = context.share_for(inv, args.share)
    with share:
        store = context.open_store(inv, share, sign=not args.check)
        if args.limit and args.limit.strip() == "@last-failed" and not backup.last_failed_hosts(store):
            ui.line("@last-failed: every host succeeded in the latest run; nothing to do")
            if args.json:
                nothing = {"ok": 0, "failed": 0, "skipped": 0}
                print_json({"command": "backup", "outcomes": [], "summary": nothing, "exit_code": 0})
            return 0
        hosts = inv.select(None) if not args.limit else _select(inv, args.limit, store)
        plan = backup.prepare_backup(store, hosts, only_stale=parse_age(args.only_stale, "--only-stale"))
        if args.check:
            for line in plan.describe(inv, share.url):
                ui.line(line)
            if args.json:
                print_json({"command": "backup", "check": True, "plan": _plan_json(plan)})
            return 0
        store.write_pending_records()  # run records an earlier run of this controller could not write
        password = context.backup_password(inv)  # before any host is touched
        for warning in context.security_warnings(plan.hosts):
            ui.warn(warning)
        passwords = context.winrm_passwords(plan.hosts)
        run_id = new_run_id()
        started = datetime.now(UTC)
        task = backup.BackupTask(
            store=store,
            password=password,
            password_id=inv.backup.password_id,
            winrm_passwords=passwords,
            run_id=run_id,
        )
        with serving(inv), ui.fleet_progress("backup", [h.name for h in plan.hosts]) as progress:
            summary = backup.run_backup(
                plan,
                task,
                forks=args.forks,
                events=RunnerEvents(on_state=progress.on_state, on_done=progress.on_done),
            )
        record = backup.build_run_record(
            run_id=run_id,
            command="backup",
            started=started,
            inv=inv,
            share_url=share.url,
            summary=summary,
            skipped=plan.skipped,
        )
        record_path = context.record_run(store, record, ui.warn)
        if summary.interrupted:
            store.remove_stale_temporaries()
    code = backup.exit_code(summary)
    for notice in store.notices:
        ui.line(notice)
    _render(ui, summary, record, record_path)
    if args.json:
        print_json(_result_json(record, record_path, code))
    return code


def _select(inv: Inventory, limit: str, store: BackupStore) -> list[HostConfig]:
    return select_hosts(inv, limit, at_resolver=backup.last_failed_resolver(store))


def _render(ui: Ui, summary: RunSummary[ManifestEntry], record: RunRecord, record_path: str | None) -> None:
    rows = []
    by_host = {r.host.name: r for r in summary.results}
    for outcome in record.outcomes:
        result = by_host.get(outcome.host)
        status = Text(str(outcome.status), style=STATUS_STYLE.get(Status(outcome.status), ""))
        error = f"{outcome.kind}: {outcome.message}" if outcome.kind else (outcome.message or "")
        rows.append(
            [
                outcome.host,
                outcome.role,
                outcome.group,
                status,
                "" if outcome.size is None else str(outcome.size),
                (outcome.sha256 or "")[:12],
                f"{outcome.duration:.1f}s" if result else "",
                error,
            ]
        )
    ui.table(
        f"backup {record.run_id}",
        ["host", "role", "group", "status", "size", "sha256", "duration", "error"],
        rows,
    )
    ui.failure_hints(summary.results)
    counts = {s: sum(1 for o in record.outcomes if o.status == s) for s in ("ok", "failed", "skipped")}
    ui.line(
        f"{counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped"
        + (" (interrupted)" if summary.interrupted else "")
        + (f"; run record {record_path}" if record_path else "")
    )


def _plan_json(plan: backup.BackupPlan) -> dict[str, object]:
    return {
        "hosts": [{"host": h.name, "group": h.group, "role": h.role.value, "endpoint": h.endpoint} for h in plan.hosts],
        "skipped": [{"host": s.host.name, "reason": s.reason} for s in plan.skipped],
    }


def _result_json(record: RunRecord, record_path: str | None, code: int) -> dict[str, object]:
    document = record.to_json()
    document["run_record"] = record_path
    document["exit_code"] = code
    document["summary"] = {s: sum(1 for o in record.outcomes if o.status == s) for s in ("ok", "failed", "skipped")}
    return document
