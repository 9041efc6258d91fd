"""``keyfleet collect``: store the key files administrators made with the wizard on each server."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from orchestrator.commands.outcomes import render_outcomes, result_json
from orchestrator.console import Ui, print_json
from orchestrator.inventory.loader import load_inventory
from orchestrator.jobs import backup, context
from orchestrator.jobs.collect import CollectTask
from orchestrator.lab.fleet import serving
from orchestrator.runner import RunnerEvents
from orchestrator.share.runrecord import new_run_id


def run(args: argparse.Namespace) -> int:
    ui = Ui()
    inv = load_inventory(args.inventory)
    share = context.share_for(inv, args.share)
    with share:
        store = context.open_store(inv, share, sign=True)
        hosts = inv.select(args.limit)
        manifest = store.load_manifest(verify=True)  # a tampered manifest is found before any host
        plan = backup.plan_backup(store, hosts, manifest=manifest, only_stale=None)
        for warning in context.security_warnings(plan.hosts):
            ui.warn(warning)
        passwords = context.winrm_passwords(plan.hosts)
        run_id = new_run_id()
        started = datetime.now(UTC)
        task = CollectTask(
            store=store,
            manifest=manifest,
            password_id=inv.backup.password_id,
            winrm_passwords=passwords,
            run_id=run_id,
            path=args.path,
            remove=args.remove,
        )
        with serving(inv), ui.fleet_progress("collect", [h.name for h in plan.hosts]) as progress:
            summary = backup.run_backup(
                plan,
                task,
                forks=args.forks,
                events=RunnerEvents(on_state=progress.on_state, on_done=progress.on_done),
            )
        record = backup.build_run_record(
            run_id=run_id,
            command="collect",
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
    render_outcomes(ui, summary, record, record_path)
    if args.json:
        print_json(result_json(record, record_path, code))
    return code
