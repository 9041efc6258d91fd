"""Retention: keep the newest N backups of every inventory server, never its newest good one; and
leftovers: orphan key files (listed by no entry), temporaries of interrupted writers and markers of runs
that are over.

The plan is computed from the verified history; applying it drops the entries in one signed log
segment under the lock before deleting their files, so a crash leaves at worst orphan files, never
an entry without its file. Every prune that changes the share writes a signed run record.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from orchestrator.errors import ConfigError
from orchestrator.inventory.model import Inventory
from orchestrator.jobs.audit import STALE_TEMPORARY
from orchestrator.jobs.record import run_record
from orchestrator.share import layout
from orchestrator.share.base import ItemKind
from orchestrator.share.manifest import ManifestEntry
from orchestrator.share.runrecord import HostOutcome, RunRecord
from orchestrator.share.store import BackupStore
from orchestrator.status import Status


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
        newest_good = store.newest_intact(manifest, host)
        for index, entry in enumerate(entries):
            if index < keep:
                decisions.append(PruneDecision(entry, Action.KEEP, f"among the newest {keep}"))
            elif entry is newest_good:
                decisions.append(PruneDecision(entry, Action.KEEP, "newest intact backup of the server"))
            else:
                decisions.append(PruneDecision(entry, Action.REMOVE, f"older than the newest {keep}"))
    return PrunePlan(keep, tuple(decisions))


def apply_prune(store: BackupStore, plan: PrunePlan, run_id: str | None = None) -> list[ManifestEntry]:
    """Remove the planned entries (history first, then files); return what was removed."""
    return store.remove_entries([entry.id for entry in plan.removals], run_id=run_id)


def prune_record(
    run_id: str, started: datetime, inventory: Inventory, share_url: str, removed: list[ManifestEntry]
) -> RunRecord:
    """The run record of a prune: one ``ok`` outcome per removed entry, so the audit can tell a
    pruned entry from one a rollback took away."""
    outcomes = [
        HostOutcome(e.host, e.group, e.role, Status.OK, message="removed", entry_id=e.id, sha256=e.sha256, size=e.size)
        for e in removed
    ]
    return run_record(
        run_id=run_id,
        command="prune",
        started=started,
        inv=inventory,
        share_url=share_url,
        interrupted=False,
        outcomes=outcomes,
    )


@dataclass(frozen=True)
class Leftover:
    """A file no entry lists (``orphan``), a writer's temporary (``temporary``) or the marker of a run that
    is over (``marker``), and its age."""

    path: str
    kind: str
    age: timedelta | None


def plan_leftovers(store: BackupStore, now: datetime | None = None) -> list[Leftover]:
    """Orphan key files and temporaries older than ``STALE_TEMPORARY``, from the verified history, and the
    markers of runs that are over (beside their verified record, or run out having committed nothing).
    Links are never listed (the audit reports them; nothing is removed through one), nor a marker that
    does not verify (the audit reports it)."""
    now = now or datetime.now(UTC)
    history = store.load_history()
    listed = {entry.path for entry in history.entries.values()}
    markers = store.run_markers(invalid=[])
    recorded = {record.run_id for record in store.run_records(invalid=[], history=history)} if markers else set()
    committed = history.committed_runs()
    over = {
        run_id
        for run_id, marker in markers.items()
        if run_id in recorded or (marker.until <= now and run_id not in committed)
    }  # a run out of time that committed keeps its marker: the audit's run-record-missing names its times
    found = []
    for item in store.share.scan():
        age = now - item.modified if item.modified else None
        run_id = layout.marker_run_id(item.path)
        if item.kind is ItemKind.TEMPORARY and age is not None and age >= STALE_TEMPORARY:
            found.append(Leftover(item.path, "temporary", age))
        elif item.kind is ItemKind.FILE and layout.parse_key_file_path(item.path) and item.path not in listed:
            found.append(Leftover(item.path, "orphan", age))
        elif item.kind is ItemKind.FILE and run_id in over:
            found.append(Leftover(item.path, "marker", age))
    return found


def remove_leftovers(store: BackupStore, leftovers: list[Leftover]) -> list[Leftover]:
    """Delete the planned leftovers under the lock; an orphan some entry lists by now is kept."""
    removed = store.remove_unlisted([item.path for item in leftovers])
    return [item for item in leftovers if item.path in removed]
