"""``keyfleet prune``: remove key files beyond the newest N per server, or (``--orphans``) leftovers:
key files no entry lists, stale temporaries and markers of runs that are over. ``--check`` only lists them."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from orchestrator.console import print_result_json
from orchestrator.durations import format_duration
from orchestrator.errors import ConfigError
from orchestrator.inventory.loader import load_inventory
from orchestrator.jobs.context import mark_run_started, open_store, record_run, require_share_folder, share_for
from orchestrator.jobs.prune import (
    apply_prune,
    plan_leftovers,
    plan_prune,
    prune_record,
    remove_leftovers,
)
from orchestrator.report.json import prune_leftovers_json, prune_plan_json
from orchestrator.runner.interrupts import deferred
from orchestrator.share.manifest import format_iso
from orchestrator.share.runrecord import new_run_id
from orchestrator.share.store import BackupStore


def run(args: argparse.Namespace) -> int:
    if (args.keep is None) == (not args.orphans):
        raise ConfigError("give either --keep N or --orphans", key="prune")
    inventory = load_inventory(args.inventory)
    with share_for(inventory, args.share) as share:
        require_share_folder(share)
        store = open_store(inventory, share, sign=not args.check)
        if args.orphans:
            return _orphans(store, args)
        plan = plan_prune(inventory, store, args.keep)
        code = 0
        if args.check:
            removed = plan.removals
        else:
            # from here a Ctrl-C waits for the prune to end: its commit is recorded, its marker removed
            with deferred() as interrupts:
                run_id, started = new_run_id(), datetime.now(UTC)
                if plan.removals:  # its commit comes before its record, as a backup's: an audit sees a run
                    mark_run_started(store, run_id, "prune", [], forks=1)
                removed = apply_prune(store, plan, run_id)
                if removed:
                    record_run(store, prune_record(run_id, started, inventory, share.url, removed), _warn)
                elif plan.removals:  # another controller removed them first: no commit, no record
                    store.unmark_running(run_id)
                code = 130 if interrupts else 0
            for notice in store.notices:
                print(f"keyfleet: {notice}", file=sys.stderr)
    if args.json:
        print_result_json("prune", prune_plan_json(plan, applied=not args.check), code)
        return code
    verb = "would remove" if args.check else "removed"
    for entry in removed:
        print(f"{verb} {entry.path} ({entry.host}, {format_iso(entry.created)})")
    kept = len(plan.decisions) - len(plan.removals)
    print(f"{verb} {len(removed)} key files; {kept} kept (newest {plan.keep} per server)")
    return code


def _orphans(store: BackupStore, args: argparse.Namespace) -> int:
    leftovers = plan_leftovers(store)
    code = 0
    if args.check:
        removed = leftovers
    else:
        with deferred() as interrupts:  # a Ctrl-C waits for the removals to end: the list says what went
            removed = remove_leftovers(store, leftovers)
            code = 130 if interrupts else 0
    if args.json:
        print_result_json("prune", prune_leftovers_json(removed, applied=not args.check), code)
        return code
    verb = "would remove" if args.check else "removed"
    for item in removed:
        age = f", {format_duration(item.age)} old" if item.age is not None else ""
        print(f"{verb} {item.path} ({item.kind}{age})")
    print(f"{verb} {len(removed)} leftover files (orphan key files, stale temporaries, markers of runs that are over)")
    return code


def _warn(message: str) -> None:
    print(f"keyfleet: warning: {message}", file=sys.stderr)
