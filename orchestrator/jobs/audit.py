"""Backup coverage from the inventory and the share alone: per-server status, coverage, share findings.

No server is contacted. Every key file is re-hashed; the history (checkpoint and log segments) and
every run record are verified with the inventory's public key (never one found on the share) and
checked against each other in both directions and against the generation this controller saw last;
run records tell failed attempts and SCSM version changes. Links, leftover temporaries and orphan
files are reported with their age. The result is a value; ``orchestrator.report`` renders it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from orchestrator.durations import format_duration
from orchestrator.errors import ConfigError
from orchestrator.inventory.model import HostConfig, Inventory, Role
from orchestrator.jobs import identity
from orchestrator.share import layout
from orchestrator.share.base import ItemKind, ShareItem
from orchestrator.share.history import LOG_DIR, History, HistoryError, read_history
from orchestrator.share.manifest import Manifest, ManifestEntry, format_iso, public_key_sha256
from orchestrator.share.runrecord import HostOutcome, RunRecord
from orchestrator.share.store import BackupStore, FileState
from orchestrator.status import Status

_UNREADABLE = frozenset({"manifest-invalid", "signature-invalid", "signature-missing", "manifest-missing"})
STALE_TEMPORARY = timedelta(hours=1)  # longer than any run's writes take: its writer is gone


class CoverageStatus(StrEnum):
    """A server's coverage. When several apply, the first in the order altered, lost, failing,
    missing, stale, covered wins."""

    COVERED = "covered"  # a good backup younger than max_age, taken on the current SCSM version
    STALE = "stale"  # older than max_age, or taken before the SCSM version changed
    MISSING = "missing"  # never backed up (no intact backup on the share)
    FAILING = "failing"  # the latest attempt failed
    ALTERED = "altered"  # a key file or its manifest entry no longer matches
    LOST = "lost"  # a manifest entry's key file is gone


# Run records of these commands are backup attempts; any run record may report an SCSM version.
BACKUP_COMMANDS = frozenset({"backup", "run"})
INTEGRITY = frozenset({CoverageStatus.ALTERED, CoverageStatus.LOST})
GAPS = frozenset({CoverageStatus.STALE, CoverageStatus.MISSING, CoverageStatus.FAILING})


class SignatureState(StrEnum):
    VALID = "valid"
    INVALID = "invalid"  # changed after signing, or signed by another key
    MISSING = "missing"  # the manifest carries no signature
    UNVERIFIABLE = "unverifiable"  # the inventory has no public key to check it with
    UNREADABLE = "unreadable"  # manifest.json is not a complete manifest
    ABSENT = "absent"  # the share has no manifest.json yet


class Severity(StrEnum):
    INTEGRITY = "integrity"  # exit 3
    WARNING = "warning"  # reported, no effect on the exit code


@dataclass(frozen=True)
class Finding:
    """Something wrong on the share. ``kind``: signature-invalid, signature-missing,
    signature-unverifiable, manifest-invalid, manifest-missing, altered, lost, bad-path,
    entry-inconsistent, run-record-mismatch, orphan-file, unknown-host, run-record-invalid,
    rollback, chain-broken, segment-invalid, run-record-missing, symlink, unreadable,
    temporary-file, legacy-format, old-password-id. ``age``: of a leftover file."""

    kind: str
    severity: Severity
    message: str
    host: str | None = None
    path: str | None = None
    age: timedelta | None = None


@dataclass(frozen=True)
class Attempt:
    """A host's outcome in one run record."""

    run_id: str
    time: datetime
    status: Status
    kind: str | None
    message: str | None


@dataclass(frozen=True)
class ServerCoverage:
    host: str
    group: str
    role: str
    status: CoverageStatus
    reason: str
    last_good: ManifestEntry | None
    age: timedelta | None
    sha256_verified: bool
    current_version: str | None  # the newest SCSM version seen in run records
    backups: int  # manifest entries of this host
    last_attempt: Attempt | None
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Coverage:
    """Coverage of one role or one management group."""

    name: str
    servers: int
    covered: int

    @property
    def percent(self) -> float:
        return round(100.0 * self.covered / self.servers, 1) if self.servers else 100.0


@dataclass(frozen=True)
class AuditReport:
    generated: datetime
    inventory: str
    share: str
    max_age: timedelta
    signature: SignatureState
    public_key_sha256: str | None
    manifest_entries: int
    manifest_updated: datetime | None
    servers: tuple[ServerCoverage, ...]
    roles: tuple[Coverage, ...]
    groups: tuple[Coverage, ...]
    findings: tuple[Finding, ...] = field(default=())
    generation: int = 0  # of the share's history (0: new, or still in the old format)

    @property
    def counts(self) -> Counter[CoverageStatus]:
        return Counter(server.status for server in self.servers)

    @property
    def total(self) -> Coverage:
        return Coverage("all", len(self.servers), self.counts[CoverageStatus.COVERED])

    @property
    def recoverable(self) -> int:
        return sum(1 for server in self.servers if server.last_good is not None)

    @property
    def integrity_failure(self) -> bool:
        return any(f.severity is Severity.INTEGRITY for f in self.findings) or any(
            s.status in INTEGRITY for s in self.servers
        )

    @property
    def exit_code(self) -> int:
        if self.integrity_failure:
            return 3
        return 1 if any(s.status in GAPS for s in self.servers) else 0


class _Audit:
    """One audit run; ``findings`` and ``problems`` collect as the share is read."""

    def __init__(self, inventory: Inventory, store: BackupStore, max_age: timedelta, now: datetime) -> None:
        self.inventory, self.store, self.max_age, self.now = inventory, store, max_age, now
        self.findings: list[Finding] = []
        self.problems: dict[str, list[str]] = {}  # host -> integrity problems of its entries
        self.altered_hosts: set[str] = set()

    def find(
        self,
        kind: str,
        severity: Severity,
        message: str,
        host: str | None = None,
        path: str | None = None,
        age: timedelta | None = None,
    ) -> None:
        self.findings.append(Finding(kind, severity, message, host, path, age))
        if severity is Severity.INTEGRITY and host is not None:
            self.problems.setdefault(host, []).append(message)
            if kind != "lost":
                self.altered_hosts.add(host)

    def history(self) -> tuple[History, SignatureState]:
        """The history as far as it proves itself; every problem a finding."""
        if self.store.verifier is None:
            if not self.store.share.exists(layout.MANIFEST):
                return History(), SignatureState.ABSENT
            self.find(
                "signature-unverifiable",
                Severity.INTEGRITY,
                "the inventory has no signing.public_key: the manifest cannot be verified",
                path=layout.MANIFEST,
            )
            return History(), SignatureState.UNVERIFIABLE
        problems: list[HistoryError] = []
        history = read_history(self.store.share, self.store.verifier, problems)
        for problem in problems:
            self.find(problem.kind, Severity.INTEGRITY, str(problem), path=problem.path)
        kinds = {problem.kind for problem in problems}
        if "manifest-invalid" in kinds:
            return history, SignatureState.UNREADABLE
        for kind, state in (
            ("signature-missing", SignatureState.MISSING),
            ("signature-invalid", SignatureState.INVALID),
        ):
            if kind in kinds:
                return history, state
        if not history.exists:
            return history, SignatureState.ABSENT
        if history.legacy:
            self.find(
                "legacy-format",
                Severity.WARNING,
                "manifest.json is in the old keyfleet-manifest/1 format (no generations: a rollback cannot be "
                "detected); the next backup upgrades it",
                path=layout.MANIFEST,
            )
        return history, SignatureState.VALID

    def controller(self, history: History) -> None:
        """Compare with the newest generation this controller saw; remember this one if it is sound."""
        state = self.store.controller_state(history)
        if state is None:
            return
        try:
            state.check(history)
        except HistoryError as exc:
            self.find(exc.kind, Severity.INTEGRITY, str(exc), path=layout.MANIFEST)
            return
        if not any(f.severity is Severity.INTEGRITY for f in self.findings):
            state.remember(history)

    def run_records(self, history: History) -> list[RunRecord]:
        invalid: list[str] = []
        records = self.store.run_records(invalid=invalid, history=history)
        severity = Severity.WARNING if history.legacy else Severity.INTEGRITY
        for path in invalid:
            self.find(
                "run-record-invalid",
                severity,
                f"{path} is not a valid run record (not signed by the inventory's key, changed, or malformed)",
                path=path,
            )
        return records

    def chain_records(self, history: History, records: list[RunRecord], invalid: set[str]) -> None:
        """Run records against the history, both ways: every generation's run has its record, and no
        record (nor an entry it stored) is newer than the history."""
        if history.legacy and any(record.signed and record.generation for record in records):
            self.find(
                "rollback",
                Severity.INTEGRITY,
                "signed run records show the share was upgraded to the hash-chained history, but manifest.json "
                "is an old-format manifest again and the log is gone",
                path=layout.MANIFEST,
            )
        if history.legacy or not history.exists or any(f.kind in _UNREADABLE for f in self.findings):
            return  # nothing proven to check them against
        by_id = {record.run_id: record for record in records}
        missing: dict[str, str] = {}
        for segment in history.segments:
            if segment.run_id not in by_id:
                missing.setdefault(segment.run_id or "", f"generation {segment.generation}")
        for entry in history.entries.values():
            if entry.run_id and entry.run_id not in by_id:
                missing.setdefault(entry.run_id, f"entry {entry.id}")
        for run_id, what in sorted(missing.items()):
            path = layout.run_record_path(run_id) if run_id else None
            if path in invalid:
                continue  # already reported as invalid
            self.find(
                "run-record-missing",
                Severity.INTEGRITY,
                f"{what} was committed by run {run_id or '(none named)'}, whose run record is missing "
                "(deleted, or the run could not write it)",
                path=path,
            )
        digests = {segment.generation: segment.digest for segment in history.segments}
        digests.setdefault(history.checkpoint_generation, history.head or "")
        removed = {o.entry_id for r in records if r.command == "prune" for o in r.outcomes if o.entry_id}
        removed.update(i for segment in history.segments for i in segment.removed)
        for record in records:
            if not record.signed or record.generation is None:
                continue
            path = layout.run_record_path(record.run_id)
            if record.generation > history.generation:
                self.find(
                    "rollback",
                    Severity.INTEGRITY,
                    f"run {record.run_id} left the history at generation {record.generation}, but it ends at "
                    f"generation {history.generation}: newer history was removed",
                    path=path,
                )
            elif record.generation in digests and record.generation > 0 and digests[record.generation] != record.head:
                self.find(
                    "rollback",
                    Severity.INTEGRITY,
                    f"run {record.run_id} saw another generation {record.generation} than the history holds",
                    path=path,
                )
            if record.command not in BACKUP_COMMANDS:
                continue
            for outcome in record.outcomes:
                stored = outcome.entry_id
                if outcome.status is Status.OK and stored and stored not in history.entries and stored not in removed:
                    self.find(
                        "rollback",
                        Severity.INTEGRITY,
                        f"run {record.run_id} stored {stored}, which the history no longer holds (no prune removed it)",
                        outcome.host,
                        path,
                    )

    def check_entries(self, manifest: Manifest, records: list[RunRecord]) -> set[str]:
        """Re-hash every key file and cross-check every entry; return the ids of intact entries."""
        recorded = {(r.run_id, o.entry_id): o for r in records for o in r.outcomes if o.entry_id}
        # what each run stored per host: an entry whose run recorded another file for its host was swapped
        stored_by_run: dict[tuple[str, str], set[str]] = {}
        for record in records:
            for o in record.outcomes:
                if o.entry_id:
                    stored_by_run.setdefault((record.run_id, o.host), set()).add(o.entry_id)
        seen: set[str] = set()
        intact: set[str] = set()
        for entry in manifest.entries:
            ok = self._entry_consistent(entry, seen)
            outcome = recorded.get((entry.run_id or "", entry.id))
            stored = stored_by_run.get((entry.run_id or "", entry.host))
            if outcome is None and stored and entry.id not in stored:
                ok = False
                self.find(
                    "run-record-mismatch",
                    Severity.INTEGRITY,
                    f"entry {entry.id}: run record {entry.run_id} stored another key file for {entry.host}",
                    entry.host,
                    entry.path,
                )
            if outcome and (outcome.sha256 not in (None, entry.sha256) or outcome.size not in (None, entry.size)):
                ok = False
                self.find(
                    "run-record-mismatch",
                    Severity.INTEGRITY,
                    f"entry {entry.id}: SHA-256 or size differs from run record {entry.run_id}",
                    entry.host,
                    entry.path,
                )
            check = self.store.check_key_file(entry)
            if check.state is FileState.LOST:
                self.find("lost", Severity.INTEGRITY, f"key file {entry.path} is gone", entry.host, entry.path)
            elif check.state is FileState.ALTERED:
                self.find(
                    "altered",
                    Severity.INTEGRITY,
                    f"key file {entry.path} no longer matches its SHA-256 in the manifest",
                    entry.host,
                    entry.path,
                )
            elif check.state is FileState.UNREADABLE:
                self.find(
                    "unreadable",
                    Severity.INTEGRITY,
                    f"key file {entry.path} cannot be read: the share denies access (on Samba, also a "
                    "symbolic link leading out of the share)",
                    entry.host,
                    entry.path,
                )
            elif check.state is FileState.LINKED:
                self.find(
                    "symlink",
                    Severity.INTEGRITY,
                    f"key file {entry.path} is behind a symbolic link or junction (never followed)",
                    entry.host,
                    entry.path,
                )
            elif check.state is FileState.BAD_PATH:
                self.find(
                    "bad-path", Severity.INTEGRITY, f"entry {entry.id} has an unsafe path {entry.path!r}", entry.host
                )
            if ok and check.state is FileState.OK:
                intact.add(entry.id)
        return intact

    def _entry_consistent(self, entry: ManifestEntry, seen: set[str]) -> bool:
        try:
            expected = layout.key_file_path(entry.group, entry.role, entry.host, entry.created, entry.sha256)
            expected_id = layout.entry_id(entry.host, entry.created, entry.sha256)
        except ConfigError:
            expected = expected_id = ""
        problem = None
        if entry.id in seen:
            problem = f"entry {entry.id} appears twice in the manifest"
        elif (entry.path, entry.id) != (expected, expected_id):
            problem = f"entry {entry.id}: path and id do not match its host, time and SHA-256 (edited?)"
        seen.add(entry.id)
        if problem:
            self.find("entry-inconsistent", Severity.INTEGRITY, problem, entry.host, entry.path)
        return problem is None

    def share_files(self, manifest: Manifest, state: SignatureState, items: list[ShareItem]) -> None:
        known = {entry.path for entry in manifest.entries}
        orphans: list[ShareItem] = []
        for item in items:
            age = self.now - item.modified if item.modified else None
            if item.kind is ItemKind.LINK:
                self.find(
                    "symlink",
                    Severity.INTEGRITY,
                    f"{item.path} is a symbolic link or junction: keyfleet never follows links under the share, "
                    "and backup and prune refuse to write or delete through it",
                    path=item.path,
                )
            elif item.kind is ItemKind.TEMPORARY:
                if age is not None and age >= STALE_TEMPORARY:
                    self.find(
                        "temporary-file",
                        Severity.WARNING,
                        f"{item.path} is a temporary file left by an interrupted writer {format_duration(age)} ago "
                        "(`keyfleet prune --orphans` removes it)",
                        path=item.path,
                        age=age,
                    )
            elif not (
                item.path == layout.MANIFEST
                or item.path.startswith((f"{layout.RUNS_DIR}/", f"{LOG_DIR}/"))
                or item.path in known
            ):
                orphans.append(item)
        if orphans and state is SignatureState.ABSENT:
            self.find(
                "manifest-missing",
                Severity.INTEGRITY,
                f"{len(orphans)} files but no manifest.json",
                path=layout.MANIFEST,
            )
        for item in orphans:
            parsed = layout.parse_key_file_path(item.path)
            age = self.now - item.modified if item.modified else None
            self.find(
                "orphan-file",
                Severity.WARNING,
                f"{item.path} is not in the manifest" + (f" ({format_duration(age)} old)" if age is not None else ""),
                parsed.host if parsed else None,
                item.path,
                age,
            )
        unknown = Counter(e.host for e in manifest.entries if e.host not in self.inventory.hosts)
        for host, count in sorted(unknown.items()):
            self.find(
                "unknown-host",
                Severity.WARNING,
                f"{count} manifest entries for {host}, which is not in the inventory",
                host,
            )

    def old_password_ids(self, servers: list[ServerCoverage], history: History) -> None:
        """A finding per server whose newest good backup is under an id `keyfleet password rotate` replaced."""
        replaced = identity.rotated_ids(history.verifiers)
        for server in servers:
            good = server.last_good
            if good is not None and good.password_id in replaced:
                self.find(
                    "old-password-id",
                    Severity.WARNING,
                    f"its newest good backup is under password_id {good.password_id!r}, which "
                    f"`keyfleet password rotate` replaced with {replaced[good.password_id]!r}: back it up again",
                    host=server.host,
                    path=good.path,
                )

    def server(
        self, host: HostConfig, manifest: Manifest, intact: set[str], outcomes: list[tuple[RunRecord, HostOutcome]]
    ) -> ServerCoverage:
        entries = manifest.entries_for(host.name)
        good = next((entry for entry in entries if entry.id in intact), None)
        attempt, version = _history(outcomes)
        age = self.now - good.created if good else None
        problems = tuple(self.problems.get(host.name, ()))
        if problems:
            status = CoverageStatus.ALTERED if host.name in self.altered_hosts else CoverageStatus.LOST
            reason = problems[0] + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")
        elif attempt and attempt.status is Status.FAILED and (good is None or attempt.time > good.created):
            status = CoverageStatus.FAILING
            why = f"{attempt.kind}: {attempt.message}" if attempt.message else str(attempt.kind)
            reason = f"latest attempt {format_iso(attempt.time)} failed: {why}"
        elif good is None or age is None:
            status, reason = CoverageStatus.MISSING, "never backed up"
        elif age >= self.max_age:
            status = CoverageStatus.STALE
            reason = f"last backup {format_duration(age)} old (max age {format_duration(self.max_age)})"
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
    audit = _Audit(inventory, store, max_age, now or datetime.now(UTC))
    history, signature = audit.history()
    manifest = history.manifest()
    records = audit.run_records(history)
    invalid = {f.path for f in audit.findings if f.kind == "run-record-invalid" and f.path}
    audit.chain_records(history, records, invalid)
    intact = audit.check_entries(manifest, records)
    audit.share_files(manifest, signature, store.share.scan())
    audit.controller(history)
    by_host = _outcomes_by_host(records)
    servers = [audit.server(host, manifest, intact, by_host.get(host.name, [])) for host in inventory.hosts.values()]
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
    )
