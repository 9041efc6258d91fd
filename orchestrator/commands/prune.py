"""``keyfleet prune``: remove key files beyond the newest N per server (``--check``: only list them)."""

from __future__ import annotations

import argparse
import json

from orchestrator.errors import ConfigError
from orchestrator.inventory.loader import load_inventory
from orchestrator.inventory.model import Inventory
from orchestrator.jobs.prune import PrunePlan, apply_prune, plan_prune
from orchestrator.share.base import Share
from orchestrator.share.manifest import format_iso, load_private_key, load_public_key
from orchestrator.share.open import open_inventory_share
from orchestrator.share.store import BackupStore


def _store(inventory: Inventory, share: Share, check: bool) -> BackupStore:
    """A store that verifies with the inventory's public key and, unless checking, signs."""
    signing = inventory.signing
    if signing is None:
        return BackupStore(share)
    verifier = load_public_key(signing.public_key)
    if check:
        return BackupStore(share, verifier=verifier)
    if signing.private_key is None:
        raise ConfigError("prune rewrites the signed manifest and needs it", key="signing.private_key")
    from orchestrator.secretrefs import resolve

    signer = load_private_key(resolve(signing.private_key, purpose="manifest signing key"))
    return BackupStore(share, signer, verifier)


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
    with open_inventory_share(inventory, args.share) as share:
        store = _store(inventory, share, args.check)
        plan = plan_prune(inventory, store, args.keep)
        removed = plan.removals if args.check else apply_prune(store, plan)
    if args.json:
        print(json.dumps(plan_json(plan, applied=not args.check), indent=2))
        return 0
    verb = "would remove" if args.check else "removed"
    for entry in removed:
        print(f"{verb} {entry.path} ({entry.host}, {format_iso(entry.created)})")
    kept = len(plan.decisions) - len(plan.removals)
    print(f"{verb} {len(removed)} key files; {kept} kept (newest {plan.keep} per server)")
    return 0
