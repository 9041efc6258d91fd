"""Backup coverage from the inventory and the share alone: per-server status, coverage, share findings.

No server is contacted. The share is read and checked by jobs/audit_findings.py; each server's
status comes from its intact entries, its integrity findings and its run record outcomes. The
result is a value (jobs/audit_model.py); ``orchestrator.report`` renders it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orchestrator.durations import format_duration
from orchestrator.inventory.model import HostConfig, Inventory, Role
from orchestrator.jobs.audit_findings import STALE_TEMPORARY, ShareFindings
from orchestrator.jobs.audit_model import (
    BACKUP_COMMANDS,
    GAPS,
    INTEGRITY,
    Attempt,
    AuditReport,
    Coverage,
    CoverageStatus,
    Finding,
    ServerCoverage,
    Severity,
    SignatureState,
)
from orchestrator.share.manifest import Manifest, format_iso, public_key_sha256
from orchestrator.share.runrecord import HostOutcome, RunRecord
from orchestrator.share.store import BackupStore
from orchestrator.status import Status

# the audit's values, importable from here as before the split
__all__ = [
    "BACKUP_COMMANDS",
    "GAPS",
    "INTEGRITY",
    "STALE_TEMPORARY",
    "Attempt",
    "AuditReport",
    "Coverage",
    "CoverageStatus",
    "Finding",
    "ServerCoverage",
    "Severity",
    "SignatureState",
    "run_audit",
]


def _server(
    audit: ShareFindings,
    host: HostConfig,
    manifest: Manifest,
    intact: set[str],
    outcomes: list[tuple[RunRecord, HostOutcome]],
) -> ServerCoverage:
    """A server's status: its integrity findings first, then its latest attempt, newest intact entry and age."""
    entries = manifest.entries_for(host.name)
    good = next((entry for entry in entries if entry.id in intact), None)
    attempt, version = _history(outcomes)
    age = audit.now - good.created if good else None
    problems = tuple(audit.problems.get(host.name, ()))
    if problems:
        status = CoverageStatus.ALTERED if host.name in audit.altered_hosts else CoverageStatus.LOST
        reason = problems[0] + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")
    elif attempt and attempt.status is Status.FAILED and (good is None or attempt.time > good.created):
        status = CoverageStatus.FAILING
        why = f"{attempt.kind}: {attempt.message}" if attempt.message else str(attempt.kind)
        reason = f"latest attempt {format_iso(attempt.time)} failed: {why}"
    elif good is None or age is None:
        status, reason = CoverageStatus.MISSING, "never backed up"
    elif age >= audit.max_age:
        status = CoverageStatus.STALE
        reason = f"last backup {format_duration(age)} old (max age {format_duration(audit.max_age)})"
    elif version and good.scsm_version and version[1] > good.created and version[0] != good.scsm_version:
        status = CoverageStatus.STALE
        reason = f"SCSM version changed from {good.scsm_version} to {version[0]} since the last backup"
    else:
        status, reason = CoverageStatus.COVERED, f"backed up {format_duration(age)} ago"
    return ServerCoverage(
        host=host.name,
        group=host.group,
        role=str(host.role),
        status=status,
        reason=reason,
        last_good=good,
        age=age,
        sha256_verified=good is not None,
        current_version=version[0] if version else None,
        backups=len(entries),
        last_attempt=attempt,
        problems=problems,
    )


def _outcomes_by_host(records: list[RunRecord]) -> dict[str, list[tuple[RunRecord, HostOutcome]]]:
    """Each host's outcomes in record order: one pass, so the audit stays linear in the history."""
    index: dict[str, list[tuple[RunRecord, HostOutcome]]] = {}
    for record in records:
        seen: set[str] = set()
        for outcome in record.outcomes:
            if outcome.host not in seen:  # a host's first outcome in a record, as RunRecord.outcome gives
                seen.add(outcome.host)
                index.setdefault(outcome.host, []).append((record, outcome))
    return index


def _history(outcomes: list[tuple[RunRecord, HostOutcome]]) -> tuple[Attempt | None, tuple[str, datetime] | None]:
    """The host's latest attempt (ok or failed) and latest seen SCSM version, from its run record outcomes."""
    attempt: Attempt | None = None
    version: tuple[str, datetime] | None = None
    for record, outcome in reversed(outcomes):
        if attempt is None and record.command in BACKUP_COMMANDS and outcome.status is not Status.SKIPPED:
            attempt = Attempt(record.run_id, record.started, outcome.status, outcome.kind, outcome.message)
        if version is None and outcome.scsm_version:
            version = (outcome.scsm_version, record.started)
        if attempt and version:
            break
    return attempt, version


def _coverage(name: str, servers: list[ServerCoverage]) -> Coverage:
    return Coverage(name, len(servers), sum(1 for s in servers if s.status is CoverageStatus.COVERED))


def run_audit(
    inventory: Inventory, store: BackupStore, *, max_age: timedelta, now: datetime | None = None
) -> AuditReport:
    """Audit ``store`` (whose ``verifier`` is the inventory's public key) against ``inventory``."""
    when = now or datetime.now(UTC)
    for last in (False, True):
        audit = ShareFindings(inventory, store, max_age, when)
        history, signature = audit.history()
        # markers before records: a run writes its record before it removes its marker, so one whose marker
        # is gone by now is found with its record (a history read first holds no commit made without a marker)
        markers = audit.run_markers()
        records = audit.run_records(history)
        newer = any(r.signed and r.generation is not None and r.generation > history.generation for r in records)
        # a run that committed and wrote its record after the history was read (a backup beside the audit):
        # audit again from a newer reading, which covers it unless newer history really was removed
        if last or not newer:
            break
    manifest = history.manifest()
    invalid = {f.path for f in audit.findings if f.kind == "run-record-invalid" and f.path}
    recorded = {record.run_id for record in records}
    markers = {run_id: marker for run_id, marker in markers.items() if run_id not in recorded}
    audit.chain_records(history, records, invalid, markers)
    audit.unfinished_runs(history, markers, invalid)
    intact = audit.check_entries(manifest, records)
    audit.share_files(manifest, signature, store.share.scan())
    audit.controller(history)
    by_host = _outcomes_by_host(records)
    servers = [_server(audit, host, manifest, intact, by_host.get(host.name, [])) for host in inventory.hosts.values()]
    audit.old_password_ids(servers, history)
    roles = [r for r in Role if any(s.role == r for s in servers)]
    return AuditReport(
        generated=audit.now,
        inventory=str(inventory.path),
        share=store.share.url,
        max_age=max_age,
        signature=signature,
        public_key_sha256=public_key_sha256(store.verifier) if store.verifier else None,
        manifest_entries=len(manifest.entries),
        manifest_updated=manifest.updated,
        servers=tuple(servers),
        roles=tuple(_coverage(str(role), [s for s in servers if s.role == role]) for role in roles),
        groups=tuple(_coverage(name, [s for s in servers if s.group == name]) for name in inventory.groups),
        findings=tuple(audit.findings),
        generation=history.generation,
        records=tuple(records),
    )
