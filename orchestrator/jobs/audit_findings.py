"""The audit's reading of a share: the history, run records and key files checked, every problem a finding.

The history (checkpoint and log segments) and every run record are verified with the inventory's
public key (never one found on the share) and checked against each other in both directions and
against the generation this controller saw last; every key file is re-hashed. Links, leftover
temporaries and orphan files are reported with their age.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

from orchestrator.durations import format_duration
from orchestrator.errors import ConfigError
from orchestrator.inventory.model import Inventory
from orchestrator.jobs import identity
from orchestrator.jobs.audit_model import BACKUP_COMMANDS, Finding, ServerCoverage, Severity, SignatureState
from orchestrator.share import layout
from orchestrator.share.base import ItemKind, ShareItem
from orchestrator.share.history import LOG_DIR, History, HistoryError, read_history
from orchestrator.share.keyfiles import FileState
from orchestrator.share.manifest import Manifest, ManifestEntry, format_iso
from orchestrator.share.runrecord import RunMarker, RunRecord
from orchestrator.share.store import BackupStore
from orchestrator.status import Status

_UNREADABLE = frozenset({"manifest-invalid", "signature-invalid", "signature-missing", "manifest-missing"})
STALE_TEMPORARY = timedelta(hours=1)  # longer than any run's writes take: its writer is gone


class ShareFindings:
    """One audit's reading of the share; ``findings`` and ``problems`` (per host) collect as it goes."""

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
            self.store.check_controller_state(state, history)
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

    def run_markers(self) -> dict[str, RunMarker]:
        """The markers of runs under way (or that never finished), by run id; an invalid one is an
        integrity finding, as an invalid run record is."""
        if self.store.verifier is None:
            return {}  # nothing can prove itself: the audit reports the missing key
        invalid: list[str] = []
        markers = self.store.run_markers(invalid=invalid)
        for path in invalid:
            self.find(
                "run-marker-invalid",
                Severity.INTEGRITY,
                f"{path} is not a valid run marker (not signed by the inventory's key, changed, or malformed)",
                path=path,
            )
        return markers

    def unfinished_runs(self, history: History, markers: dict[str, RunMarker], invalid: set[str]) -> None:
        """A warning per run that marked itself, committed nothing, wrote no record and cannot be going any
        more (killed, or its controller stopped); one that committed is run-record-missing (chain_records)."""
        committed = history.committed_runs()
        for run_id, marker in sorted(markers.items()):
            if marker.until > self.now or run_id in committed or layout.run_record_path(run_id) in invalid:
                continue
            self.find(
                "run-unfinished",
                Severity.WARNING,
                f"run {run_id} ({marker.command}, started {format_iso(marker.started)}) never wrote its run "
                f"record and had to end by {format_iso(marker.until)}: it was killed, or its controller stopped "
                "(`keyfleet prune --orphans` removes its marker)",
                path=layout.run_marker_path(run_id),
            )

    def chain_records(
        self, history: History, records: list[RunRecord], invalid: set[str], markers: dict[str, RunMarker]
    ) -> None:
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
            marker = markers.get(run_id)
            if marker is not None and marker.until > self.now:
                self.find(
                    "run-in-progress",
                    Severity.WARNING,
                    f"{what} was committed by run {run_id} ({marker.command}, started {format_iso(marker.started)}), "
                    f"which has not written its run record yet: it may be under way until {format_iso(marker.until)}",
                    path=layout.run_marker_path(run_id),
                )
                continue
            ended = ""
            if marker is not None:
                ended = f"; it started {format_iso(marker.started)} and had to end by {format_iso(marker.until)}"
            self.find(
                "run-record-missing",
                Severity.INTEGRITY,
                f"{what} was committed by run {run_id or '(none named)'}, whose run record is missing "
                f"(deleted, or the run could not write it{ended})",
                path=path,
            )
        digests = {segment.generation: segment.digest for segment in history.segments}
        # the checkpoint's own digest: what the first segment after it names as its predecessor
        checkpoint_head = history.segments[0].previous if history.segments else history.head
        digests.setdefault(history.checkpoint_generation, checkpoint_head or "")
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
            old = f" ({format_duration(age)} old)" if age is not None else ""
            # prune removes only what keyfleet writes: a key file where keyfleet puts them; anything else
            # on the share may be someone else's, for a person to judge
            what = "`keyfleet prune --orphans` removes it" if parsed else "not a keyfleet file: prune leaves it"
            self.find(
                "orphan-file",
                Severity.WARNING,
                f"{item.path} is not in the manifest{old} ({what})",
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
