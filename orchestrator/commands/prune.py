"""``keyfleet prune``: remove key files beyond the newest N per server, or (``--orphans``) leftovers:
key files no entry lists, stale temporaries and markers of runs that are over. ``--check`` only lists them."""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from datetime import UTC, datetime

from orchestrator.console import print_result_json
from orchestrator.durations import format_duration
from orchestrator.errors import ConfigError, IntegrityError
from orchestrator.inventory.loader import load_inventory
from orchestrator.jobs.context import mark_run_started, open_store, record_run, require_share_folder, share_for
from orchestrator.jobs.prune import (
    Leftover,
    PrunePlan,
    apply_prune,
    plan_leftovers,
    plan_prune,
    prune_record,
    remove_leftovers,
)
from orchestrator.report.json import prune_leftovers_json, prune_plan_json
from orchestrator.runner.interrupts import deferred
from orchestrator.share.manifest import ManifestEntry, format_iso
from orchestrator.share.runrecord import new_run_id


def run(args: argparse.Namespace) -> int:
    if (args.keep is None) == (not args.orphans):
        raise ConfigError("give either --keep N or --orphans", key="prune")
    inventory = load_inventory(args.inventory)
    with ExitStack() as stack:
        share = stack.enter_context(share_for(inventory, args.share))
        require_share_folder(share)
        store = open_store(inventory, share, sign=not args.check)
        if args.orphans:
            leftovers = plan_leftovers(store)
            if args.check:
                return _report_leftovers(args, leftovers, 0)
        else:
            plan = plan_prune(inventory, store, args.keep)
            if args.check:
                return _report(args, plan, plan.removals, 0)
        share_left_open = stack.pop_all()  # closed below, inside the deferred section
    # from here a Ctrl-C never stops a prune half-way: before its commit it removes nothing (exit 130); once
    # it committed, its record is written, its marker removed and what it removed printed
    with deferred() as interrupts, share_left_open:
        if args.orphans:
            return _report_leftovers(args, remove_leftovers(store, leftovers), 0)
        run_id, started = new_run_id(), datetime.now(UTC)
        if plan.removals:  # its commit comes before its record, as a backup's: an audit meanwhile sees a run
            mark_run_started(store, run_id, "prune", [], forks=1)
            if interrupts:  # pressed before the commit: nothing is removed
                store.unmark_running(run_id)
                return _report(args, plan, [], 130)
        try:
            removed = apply_prune(store, plan, run_id)
        except IntegrityError:  # refused before its commit (a link on the way, an altered history)
            if plan.removals:
                store.unmark_running(run_id)
            raise
        if removed:
            record_run(store, prune_record(run_id, started, inventory, share.url, removed), _warn)
        elif plan.removals:  # another controller removed them first: no commit, no record
            store.unmark_running(run_id)
        for notice in store.notices:
            print(f"keyfleet: {notice}", file=sys.stderr)
        return _report(args, plan, removed, 0)


def _report(args: argparse.Namespace, plan: PrunePlan, removed: list[ManifestEntry], code: int) -> int:
    if args.json:
        print_result_json("prune", prune_plan_json(plan, applied=not args.check and code == 0), code)
        return code
    verb = "would remove" if args.check else "removed"
    for entry in removed:
        print(f"{verb} {entry.path} ({entry.host}, {format_iso(entry.created)})")
    kept = len(plan.decisions) - len(removed if not args.check else plan.removals)
    print(f"{verb} {len(removed)} key files; {kept} kept (newest {plan.keep} per server)")
    return code


def _report_leftovers(args: argparse.Namespace, removed: list[Leftover], code: int) -> int:
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
