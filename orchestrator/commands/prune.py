"""``keyfleet prune``: remove key files beyond the newest N per server (``--check``: only list them)."""

from __future__ import annotations

import argparse

from orchestrator.console import print_json
from orchestrator.inventory.loader import load_inventory
from orchestrator.jobs.context import open_store, require_share_folder, share_for
from orchestrator.jobs.prune import PrunePlan, apply_prune, plan_prune
from orchestrator.share.manifest import format_iso


def plan_json(plan: PrunePlan, *, applied: bool) -> dict[str, object]:
    """The ``--json`` document: ``keyfleet-prune/1``."""
    return {
        "format": "keyfleet-prune/1",
        "keep": plan.keep,
        "applied": applied,
        "decisions": [
            {
                "action": str(d.action),
                "reason": d.reason,
                "id": d.entry.id,
                "host": d.entry.host,
                "path": d.entry.path,
                "created": format_iso(d.entry.created),
            }
            for d in plan.decisions
        ],
    }


def run(args: argparse.Namespace) -> int:
    inventory = load_inventory(args.inventory)
    with share_for(inventory, args.share) as share:
        require_share_folder(share)
        store = open_store(inventory, share, sign=not args.check)
        plan = plan_prune(inventory, store, args.keep)
        removed = plan.removals if args.check else apply_prune(store, plan)
    if args.json:
        print_json(plan_json(plan, applied=not args.check))
        return 0
    verb = "would remove" if args.check else "removed"
    for entry in removed:
        print(f"{verb} {entry.path} ({entry.host}, {format_iso(entry.created)})")
    kept = len(plan.decisions) - len(plan.removals)
    print(f"{verb} {len(removed)} key files; {kept} kept (newest {plan.keep} per server)")
    return 0
