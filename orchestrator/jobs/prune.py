"""Retention: keep the newest N backups of every inventory server, never its newest good one.

The plan is computed from the verified manifest; applying it drops the entries from the manifest
under the lock (signed, replaced atomically) before deleting their files, so a crash leaves at
worst orphan files, never an entry without its file.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from orchestrator.errors import ConfigError
from orchestrator.inventory.model import Inventory
from orchestrator.share.manifest import ManifestEntry
from orchestrator.share.store import BackupStore, FileState


class Action(StrEnum):
    KEEP = "keep"
    REMOVE = "remove"


@dataclass(frozen=True)
class PruneDecision:
    entry: ManifestEntry
    action: Action
    reason: str


@dataclass(frozen=True)
class PrunePlan:
    keep: int
    decisions: tuple[PruneDecision, ...]

    @property
    def removals(self) -> list[ManifestEntry]:
        return [d.entry for d in self.decisions if d.action is Action.REMOVE]


def plan_prune(inventory: Inventory, store: BackupStore, keep: int) -> PrunePlan:
    """Decide, per inventory server, which entries go. Hosts not in the inventory are left alone."""
    if keep < 1:
        raise ConfigError(f"must be at least 1, got {keep}", key="--keep")
    manifest = store.load_manifest(verify=store.verifier is not None)
    decisions: list[PruneDecision] = []
    for host in inventory.hosts:
        entries = manifest.entries_for(host)
        newest_good = next((e for e in entries if store.check_key_file(e).state is FileState.OK), None)
        for index, entry in enumerate(entries):
            if index < keep:
                decisions.append(PruneDecision(entry, Action.KEEP, f"among the newest {keep}"))
            elif entry is newest_good:
                decisions.append(PruneDecision(entry, Action.KEEP, "newest intact backup of the server"))
            else:
                decisions.append(PruneDecision(entry, Action.REMOVE, f"older than the newest {keep}"))
    return PrunePlan(keep, tuple(decisions))


def apply_prune(store: BackupStore, plan: PrunePlan) -> list[ManifestEntry]:
    """Remove the planned entries (manifest first, then files); return what was removed."""
    return store.remove_entries([entry.id for entry in plan.removals])
