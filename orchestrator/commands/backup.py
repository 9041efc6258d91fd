"""``keyfleet backup``: back up the selected servers and render the outcome."""

from __future__ import annotations

import argparse

from orchestrator.commands.outcomes import run_and_record
from orchestrator.console import Ui, print_result_json
from orchestrator.durations import duration_option
from orchestrator.inventory.limit import select_hosts
from orchestrator.inventory.loader import load_inventory
from orchestrator.inventory.model import HostConfig, Inventory
from orchestrator.jobs import backup, context, identity
from orchestrator.report.json import backup_plan_json, nothing_to_back_up_json
from orchestrator.runner.interrupts import Interrupts, deferred
from orchestrator.secret import Secret
from orchestrator.share.runrecord import new_run_id
from orchestrator.share.store import BackupStore


def run(args: argparse.Namespace) -> int:
    ui = Ui()
    inv = load_inventory(args.inventory)
    share = context.share_for(inv, args.share)
    with share:
        context.require_share_folder(share, creatable=True, dry_run=args.check)
        store = context.open_store(inv, share, sign=not args.check)
        if args.limit and args.limit.strip() == "@last-failed" and not backup.last_failed_hosts(store):
            ui.line("@last-failed: every host succeeded in the latest run; nothing to do")
            if args.json:
                print_result_json("backup", nothing_to_back_up_json(), 0)
            return 0
        hosts = list(inv.hosts.values()) if not args.limit else _select(inv, args.limit, store)
        only_stale = None if args.only_stale is None else duration_option(args.only_stale, "--only-stale")
        plan = backup.prepare_backup(store, hosts, only_stale=only_stale)
        if args.check:
            for line in plan.describe(inv, share.url):
                ui.line(line)
            if args.json:
                print_result_json("backup", backup_plan_json(plan), 0)
            return 0
        password = context.backup_password(inv)  # before any host is touched
        # exit 2 on a mismatch, before any host; its scrypt runs while the WinRM stack loads
        identity.claim_identity_while(store, inv.backup.password_id, password, backup.load_session_stack)
        for warning in context.security_warnings(plan.hosts):
            ui.warn(warning)
        passwords = context.winrm_passwords(plan.hosts)
        run_id = new_run_id()
        with deferred() as interrupts:  # from here every Ctrl-C ends in a run record and the --json document
            # the run's marker, which its record replaces, and its write probe: an unwritable share fails here
            context.mark_run_started(store, run_id, "backup", plan.hosts, args.forks)
            return _run(args, ui, inv, share.url, store, plan, password, passwords, run_id, interrupts)


def _run(
    args: argparse.Namespace,
    ui: Ui,
    inv: Inventory,
    share_url: str,
    store: BackupStore,
    plan: backup.BackupPlan,
    password: Secret,
    passwords: dict[str, Secret | None],
    run_id: str,
    interrupts: Interrupts,
) -> int:
    task = backup.BackupTask(
        store=store,
        password=password,
        password_id=inv.backup.password_id,
        winrm_passwords=passwords,
        run_id=run_id,
    )
    return run_and_record(args, ui, inv, share_url, store, plan, task, "backup", interrupts)


def _select(inv: Inventory, limit: str, store: BackupStore) -> list[HostConfig]:
    return select_hosts(inv, limit, at_resolver=backup.last_failed_resolver(store))
