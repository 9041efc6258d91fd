"""``keyfleet collect``: store the key files administrators made with the wizard on each server."""

from __future__ import annotations

import argparse

from orchestrator.commands.outcomes import run_and_record
from orchestrator.console import Ui
from orchestrator.inventory.limit import select_hosts
from orchestrator.inventory.loader import load_inventory
from orchestrator.jobs import backup, context, identity
from orchestrator.jobs.collect import CollectTask
from orchestrator.runner.interrupts import deferred
from orchestrator.share.runrecord import new_run_id


def run(args: argparse.Namespace) -> int:
    ui = Ui()
    inv = load_inventory(args.inventory)
    share = context.share_for(inv, args.share)
    with share:
        context.require_share_folder(share, creatable=True, dry_run=False)
        store = context.open_store(inv, share, sign=True)
        hosts = select_hosts(inv, args.limit)
        manifest = store.load_manifest(verify=True)  # a tampered manifest is found before any host
        plan = backup.plan_backup(store, hosts, manifest=manifest, only_stale=None)
        # the password administrators typed into the wizard: checked against (or recorded as) its id's verifier
        known = store.password_verifier(inv.backup.password_id) is not None
        password = context.backup_password(inv, new=not known)
        identity.claim_identity(store, inv.backup.password_id, password)
        for warning in context.security_warnings(plan.hosts):
            ui.warn(warning)
        passwords = context.winrm_passwords(plan.hosts)
        run_id = new_run_id()
        with deferred() as interrupts:  # from here every Ctrl-C ends in a run record and the --json document
            # the run's marker, which its record replaces, and its write probe: an unwritable share fails here
            context.mark_run_started(store, run_id, "collect", plan.hosts, args.forks)
            task = CollectTask(
                store=store,
                manifest=manifest,
                password_id=inv.backup.password_id,
                winrm_passwords=passwords,
                run_id=run_id,
                path=args.path,
                remove=args.remove,
            )
            return run_and_record(args, ui, inv, share.url, store, plan, task, "collect", interrupts)
