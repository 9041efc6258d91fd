"""What an audit finds, as values the renderers render: coverage statuses, findings, the report."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from orchestrator.share.manifest import ManifestEntry
from orchestrator.share.runrecord import RunRecord
from orchestrator.status import Status


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
    rollback, chain-broken, segment-invalid, run-record-missing, run-in-progress, run-unfinished, run-marker-invalid,
    symlink, unreadable, temporary-file, legacy-format, old-password-id. ``age``: of a leftover file."""

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
    # the run records the audit read and verified (those that did not verify are findings): the
    # HTML and OpenMetrics renderers draw from them, so a damaged share still gets its report
    records: tuple[RunRecord, ...] = field(default=(), repr=False)

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
