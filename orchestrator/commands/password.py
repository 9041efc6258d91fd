"""``keyfleet password rotate --from ID --to ID``: re-export every server under a new password and id."""

from __future__ import annotations

import argparse

from orchestrator.commands.outcomes import run_and_record
from orchestrator.console import Ui
from orchestrator.errors import ConfigError
from orchestrator.inventory.limit import select_hosts
from orchestrator.inventory.loader import load_inventory
from orchestrator.jobs import backup, context, identity
from orchestrator.runner.interrupts import deferred
from orchestrator.share.runrecord import new_run_id
from orchestrator.share.store import BackupStore


def run(args: argparse.Namespace) -> int:
    ui = Ui()
    inv = load_inventory(args.inventory)
    old, new = args.from_id, args.to_id
    if old == new:
        raise ConfigError(f"--from and --to are the same password_id {old!r}", key="--to")
    share = context.share_for(inv, args.share)
    with share:
        context.require_share_folder(share)
        store = context.open_store(inv, share, sign=True)
        manifest = store.load_manifest(verify=True)
        store.unrecorded_runs()
        old_verifier = store.password_verifier(old)
        if old_verifier is None and not any(e.password_id == old for e in manifest.entries):
            raise ConfigError(f"the share holds no backup under password_id {old!r}", key="--from")
        plan = backup.plan_backup(store, select_hosts(inv, args.limit), manifest=manifest, only_stale=None)
        resumed = store.password_verifier(new) is not None  # a rotation run again for the servers that failed
        password = context.backup_password(inv, new=not resumed)  # before any host is touched
        if old_verifier is not None and identity.matches(password, old_verifier, old):
            raise ConfigError(f"the new password is the one of password_id {old!r}: choose another", key="--to")
        identity.claim_identity(store, new, password, rotated_from=old)  # a resumed rotation: checked
        for warning in context.security_warnings(plan.hosts):
            ui.warn(warning)
        passwords = context.winrm_passwords(plan.hosts)
        run_id = new_run_id()
        with deferred() as interrupts:
            # the run's marker, which its record replaces, and its write probe: an unwritable share fails here
            context.mark_run_started(store, run_id, "backup", plan.hosts, args.forks)
            task = backup.BackupTask(
                store=store, password=password, password_id=new, winrm_passwords=passwords, run_id=run_id
            )
            code = run_and_record(args, ui, inv, share.url, store, plan, task, "backup", interrupts)
        still = still_on(store, [h.name for h in inv.hosts.values()], old)
    if still:
        ui.line(f"still on password_id {old!r}: {', '.join(still)} (run the same command again for them)")
    else:
        ui.line(f"no server is on password_id {old!r} any more")
    if inv.backup.password_id != new:
        ui.line(f"set backup.password_id: {new} (and the new password) in {inv.path} for the backups to come")
    return code


def still_on(store: BackupStore, hosts: list[str], password_id: str) -> list[str]:
    """The hosts whose newest intact backup was taken under ``password_id``."""
    manifest = store.load_manifest(verify=True)
    newest = {host: store.newest_intact(manifest, host) for host in hosts}
    return [host for host, entry in newest.items() if entry is not None and entry.password_id == password_id]
