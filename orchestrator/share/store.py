"""Backups on a share: key files, the signed history and run records, kept consistent under the lock.

Every write happens under the share's lock: a key file is written (never overwriting), then one
signed log segment naming the previous generation is created (never overwriting: a segment of that
generation written by another controller sends this one back to re-read). The history is read and
verified once per command and kept in memory, so a commit costs what it adds. A crash at any moment
leaves the old or the new generation, at worst an orphan key file that the audit reports. Because
no writer works outside the lock, temporaries found while holding it are stale and safe to delete.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from orchestrator.errors import ConfigError, IntegrityError, ShareError, ShareExistsError
from orchestrator.share import layout
from orchestrator.share.base import Share, ShareAccessDenied, ShareLinkError
from orchestrator.share.history import (
    LOG_DIR,
    History,
    HistoryError,
    build_segment,
    new_share_id,
    read_history,
    segment_generation,
    segment_path,
)
from orchestrator.share.manifest import Manifest, ManifestEntry, public_key_sha256
from orchestrator.share.runrecord import RunRecord
from orchestrator.share.state import ShareState

_COMMIT_ATTEMPTS = 5  # another controller's segment of the same generation sends us back to re-read


class FileState(StrEnum):
    """What re-reading a manifest entry's key file found."""

    OK = "ok"
    LOST = "lost"  # the file is gone
    ALTERED = "altered"  # the bytes no longer hash to the entry's SHA-256 (or size)
    BAD_PATH = "bad-path"  # the entry's path is not a valid share path: never read
    LINKED = "linked"  # the path goes through a symbolic link or junction: never followed
    UNREADABLE = "unreadable"  # the share refuses to open it (access denied)


@dataclass(frozen=True)
class KeyFileCheck:
    entry: ManifestEntry
    state: FileState
    actual_sha256: str | None = None  # of the bytes found, when the file exists


@dataclass
class CommitStats:
    """What this store's commits cost: group commits made, entries they added, the CPU time of the
    committing threads (key file writes, segment, compactions), and how many compactions ran."""

    commits: int = 0
    entries: int = 0
    cpu_seconds: float = 0.0  # user + system (the kernel's share: writes, fsync, renames)
    compactions: int = 0


@dataclass
class _PendingAdd:
    """One key file waiting for the next group commit, and how it ended."""

    entry: ManifestEntry
    data: bytes = field(repr=False)
    done: bool = False
    result: ManifestEntry | None = None
    error: Exception | None = None


class BackupStore:
    """Key files, manifest and run records on one share.

    ``signer`` signs every segment, checkpoint and run record written (None: nothing can be
    committed). ``verifier`` (default: the signer's public key) checks the history before it is
    extended or pruned, so a tampered history is never built on. ``record_signer`` signs run records
    of a store that commits nothing (restore). ``state_root``: where this controller remembers the
    generations it saw (default ``~/.local/state/keyfleet``). ``notices``: one-line messages for the
    user (an upgraded share, a run record written late).
    """

    def __init__(
        self,
        share: Share,
        signer: Ed25519PrivateKey | None = None,
        verifier: Ed25519PublicKey | None = None,
        *,
        lock_timeout: float = 60.0,
        record_signer: Ed25519PrivateKey | None = None,
        state_root: Path | None = None,
    ) -> None:
        if signer and verifier and public_key_sha256(signer.public_key()) != public_key_sha256(verifier):
            raise ConfigError("the signing private key does not belong to the public key", key="signing.public_key")
        self.share = share
        self.signer = signer
        self.verifier = verifier or (signer.public_key() if signer else None)
        self.record_signer = signer or record_signer
        self.lock_timeout = lock_timeout
        self.state_root = state_root
        self.notices: list[str] = []
        self.stored: list[ManifestEntry] = []  # every entry this store added, in order
        self.stats = CommitStats()
        self.verifiers: dict[str, dict[str, Any]] = {}  # password_id -> the verifier this run's password matches
        self._accepts: dict[str, Callable[[dict[str, Any]], bool]] = {}
        self._history: History | None = None
        self._closed = False
        self._queue: list[_PendingAdd] = []
        self._queue_guard = threading.Lock()
        self._commit_guard = threading.Lock()

    # -- history -------------------------------------------------------------------------------

    def load_manifest(self, verify: bool = True) -> Manifest:
        """The share's current entries, from its verified history (``verify=False``: the history as
        far as it can be proven, for a share known to be damaged).

        A share without a manifest is new only while it holds no key files; otherwise the manifest was
        deleted, and starting a new one would bury the history: IntegrityError.
        """
        if not verify:
            return read_history(self.share, self._verifier(), problems=[]).manifest()
        return self.load_history().manifest()

    def load_history(self) -> History:
        """Read and verify the whole history, check it against what this controller saw before and
        against the newest run record, and keep it for the commits to come."""
        try:
            history = read_history(self.share, self._verifier())
            if not history.exists and self._holds_backups():
                raise HistoryError(
                    "manifest-missing",
                    "manifest.json is missing but the share holds key files; refusing to start a new "
                    "manifest (run `keyfleet audit`)",
                    layout.MANIFEST,
                )
            self._check_latest_record(history)
            state = self.controller_state(history)
            if state is not None:
                state.check(history)
                state.remember(history)
        except HistoryError as exc:
            self._history = None  # what was proven before is no ground to build on now
            raise HistoryError(exc.kind, f"share {self.share.url}: {exc.kind}: {exc}", exc.path) from None
        self._history = history
        return history

    def controller_state(self, history: History) -> ShareState | None:
        if history.share_id is None or self.verifier is None:
            return None
        return ShareState(history.share_id, public_key_sha256(self.verifier), self.share.url, self.state_root)

    def _verifier(self) -> Ed25519PublicKey:
        if self.verifier is None:
            raise ConfigError("no public key to verify manifest.json with", key="signing.public_key")
        return self.verifier

    def _check_latest_record(self, history: History) -> None:
        """A signed run record naming a generation the history does not reach means a rollback."""
        names = [p for p in self.share.list_files(layout.RUNS_DIR) if layout.is_run_record_path(p)]
        if not names:
            return
        latest = max(names)
        try:
            record = RunRecord.from_bytes(self.share.read_bytes(latest), name=latest, verifier=self._verifier())
        except IntegrityError:
            return  # the audit reports it; it proves nothing either way
        if record.signed and record.generation and history.legacy:
            raise HistoryError(
                "rollback",
                f"run record {latest} is signed, so the share was upgraded to the hash-chained history, but "
                "manifest.json is an old-format manifest again and the log is gone",
                layout.MANIFEST,
            )
        if record.signed and record.generation is not None and record.generation > history.generation:
            raise HistoryError(
                "rollback",
                f"run record {latest} was written at generation {record.generation}, but the history "
                f"ends at generation {history.generation}: newer history was removed",
                latest,
            )

    def _holds_backups(self) -> bool:
        return any(layout.parse_key_file_path(path) is not None for path in self.share.list_files())

    def _history_for_update(self) -> History:
        """The history to extend: the one in memory while its newest segment is still in place
        (another controller's compaction removes it), else re-read and re-verified."""
        history = self._history
        if history is None or history.generation == 0 or not self.share.exists(segment_path(history.generation)):
            try:
                history = self.load_history()
            except IntegrityError as exc:
                raise IntegrityError(f"{exc}; refusing to change it (run `keyfleet audit`)") from None
        return history

    def _signer(self) -> Ed25519PrivateKey:
        if self.signer is None:
            raise ConfigError("signing.private_key is needed to change the share's history", key="signing.private_key")
        return self.signer

    def _start(self, history: History, run_id: str | None) -> History:
        """Give a new share its identity (an empty signed checkpoint), or upgrade an old-format one."""
        key = self._signer()
        if history.legacy:
            legacy_records = {
                path: hashlib.sha256(self.share.read_bytes(path)).hexdigest()
                for path in self.share.list_files(layout.RUNS_DIR)
                if layout.is_run_record_path(path)
            }
            upgraded = History(share_id=new_share_id(), exists=True)
            data, segment = build_segment(
                key,
                share_id=upgraded.share_id or "",
                generation=1,
                previous=None,
                run_id=run_id,
                added=list(history.entries.values()),
                removed=[],
                upgraded_from=history.legacy_sha256,
                legacy_records=legacy_records,
            )
            self.share.write_new(segment_path(1), data)
            upgraded.apply(segment)
            self._compact(upgraded)
            self.notices.append(
                f"share {self.share.url}: upgraded to the hash-chained history (generation 1, "
                f"{len(upgraded.entries)} entries and {len(legacy_records)} run records kept)"
            )
            return upgraded
        fresh = History(share_id=new_share_id(), exists=True)
        self.share.replace(layout.MANIFEST, fresh.checkpoint_bytes(key))
        return fresh

    def _append(
        self,
        history: History,
        run_id: str | None,
        added: list[ManifestEntry],
        removed: list[str],
        verifiers: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """Write the next generation's segment; ShareExistsError when another controller wrote it first."""
        data, segment = build_segment(
            self._signer(),
            share_id=history.share_id or "",
            generation=history.generation + 1,
            previous=history.head,
            run_id=run_id,
            added=added,
            removed=removed,
            verifiers=verifiers,
        )
        self.share.write_new(segment_path(segment.generation), data)
        history.apply(segment)
        if history.needs_compaction():
            self._compact(history)

    def _compact(self, history: History) -> None:
        """A new checkpoint of the current generation, then the segments before it go (segment G stays:
        a controller holding G in memory finds it and knows nothing was compacted past it)."""
        self.share.replace(layout.MANIFEST, history.checkpoint_bytes(self._signer()))
        history.compacted()
        self.stats.compactions += 1
        for path in self.share.list_files(LOG_DIR):
            generation = segment_generation(path)
            if generation is not None and generation < history.generation:
                self.share.remove(path)

    def compact(self) -> None:
        """Write a checkpoint of the current generation now (the commits do it when it pays)."""
        with self.share.lock(self.lock_timeout):
            history = self._history_for_update()
            if history.legacy or not history.exists:
                raise ConfigError("nothing to compact: the share has no hash-chained history yet")
            self._compact(history)

    def password_verifier(self, password_id: str) -> dict[str, Any] | None:
        """The signed verifier of ``password_id``'s password (jobs/identity.py), or None before its first backup."""
        history = self._history or self.load_history()
        return history.verifiers.get(password_id)

    def expect_verifier(
        self, password_id: str, verifier: dict[str, Any], accepts: Callable[[dict[str, Any]], bool]
    ) -> None:
        """The verifier this run's password was checked against (or made for a first backup): the next
        commit records it when the history holds none for ``password_id``. When another controller
        recorded another one meanwhile, ``accepts`` (does this run's password match it?) decides: adopt
        it, or refuse every commit."""
        self.verifiers[password_id] = verifier
        self._accepts[password_id] = accepts

    def _new_verifiers(self, history: History) -> dict[str, dict[str, Any]]:
        fresh = {}
        for password_id, verifier in self.verifiers.items():
            recorded = history.verifiers.get(password_id)
            if recorded is None:
                fresh[password_id] = verifier
            elif recorded != verifier and self._accepts[password_id](recorded):
                self.verifiers[password_id] = recorded  # another controller's first backup, same password
            elif recorded != verifier:
                raise IntegrityError(
                    f"share {self.share.url}: another controller recorded the password of password_id "
                    f"{password_id!r} during this run, and it is another password"
                )
        return fresh

    def _remember(self) -> None:
        history = self._history
        state = self.controller_state(history) if history is not None else None
        if state is not None and history is not None:
            state.remember(history)

    # -- writing -------------------------------------------------------------------------------

    def add(
        self,
        *,
        host: str,
        group: str,
        role: str,
        data: bytes,
        password_id: str,
        scsm_version: str | None = None,
        helper_version: str | None = None,
        run_id: str | None = None,
        created: datetime | None = None,
        method: str | None = None,
    ) -> ManifestEntry:
        """Store one key file and record it in the manifest; return its entry."""
        if not data:
            raise IntegrityError(f"{host}: refusing to store an empty key file")
        sha256 = hashlib.sha256(data).hexdigest()
        created = (created or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        entry = ManifestEntry(
            id=layout.entry_id(host, created, sha256),
            host=host,
            group=group,
            role=str(role),
            path=layout.key_file_path(group, str(role), host, created, sha256),
            sha256=sha256,
            size=len(data),
            created=created,
            password_id=password_id,
            scsm_version=scsm_version,
            helper_version=helper_version,
            run_id=run_id,
            method=method,
        )
        if self._closed:
            raise ShareError(f"share {self.share.url}: the run was aborted; nothing more is stored")
        pending = _PendingAdd(entry, data)
        with self._queue_guard:
            self._queue.append(pending)
        # Group commit: whoever holds the commit lock stores every add queued so far under one
        # hold of the share's lock and one manifest write; the others find theirs done.
        with self._commit_guard:
            if not pending.done:
                with self._queue_guard:
                    batch, self._queue = self._queue, []
                self._commit(batch)
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def _commit(self, batch: list[_PendingAdd]) -> None:
        started = time.thread_time()
        stored = len(self.stored)
        try:
            with self.share.lock(self.lock_timeout):
                for attempt in range(_COMMIT_ATTEMPTS):
                    try:
                        self._commit_once(batch)
                        break
                    except ShareExistsError:
                        self._history = None  # another controller wrote this generation: re-read
                        if attempt == _COMMIT_ATTEMPTS - 1:
                            raise
        except (ShareError, IntegrityError, ConfigError) as exc:
            for item in batch:
                if item.result is None and item.error is None:
                    item.error = exc
        finally:
            for item in batch:
                if item.result is None and item.error is None:
                    item.error = ShareError(f"share {self.share.url}: the manifest update did not complete")
                item.done = True
            self.stats.commits += 1
            self.stats.entries += len(self.stored) - stored
            self.stats.cpu_seconds += time.thread_time() - started

    def _commit_once(self, batch: list[_PendingAdd]) -> None:
        history = self._history_for_update()
        run_id = next((item.entry.run_id for item in batch if item.entry.run_id), None)
        if history.legacy or not history.exists:
            # a signed manifest exists before the first key file, so a share with key files and no
            # manifest can only mean a deleted manifest
            history = self._history = self._start(history, run_id)
        verifiers = self._new_verifiers(history)
        known = history.entries
        added: list[_PendingAdd] = []
        for item in batch:
            if item.result is not None or item.error is not None:
                continue
            recorded = known.get(item.entry.id)
            if recorded is not None and recorded.sha256 == item.entry.sha256:
                item.result = recorded  # the same bytes, stored in the same second: already recorded
                continue
            try:
                self._write_key_file(item.entry, item.data)
            except (ShareError, IntegrityError) as exc:
                item.error = exc
                continue
            added.append(item)
        if added:
            self._append(history, run_id, [item.entry for item in added], [], verifiers)
        for item in added:
            item.result = item.entry
            self.stored.append(item.entry)

    def _write_key_file(self, entry: ManifestEntry, data: bytes) -> None:
        try:
            self.share.write_new(entry.path, data)
        except ShareExistsError:
            # Left by an add interrupted before the manifest update: adopt it only if identical.
            if hashlib.sha256(self.share.read_bytes(entry.path)).hexdigest() != entry.sha256:
                raise

    def stop_adding(self) -> list[ManifestEntry]:
        """Refuse further adds (an aborted run), after any commit under way has finished; return
        every entry this store added, so the run record can list exactly what the manifest holds."""
        with self._commit_guard:
            self._closed = True
            return list(self.stored)

    def write_run_record(self, record: RunRecord) -> str:
        """Write ``runs/<run-id>.json`` (never overwriting), signed and naming the generation the run
        left behind; return its share path. When the share refuses it, the signed record is kept in
        this controller's state (the next backup writes it) and the error is raised."""
        path = layout.run_record_path(record.run_id)
        history = self._history
        if history is not None:
            record = replace(record, generation=history.generation, head=history.head)
        data = record.to_bytes(self.record_signer)
        self._remember()  # once per run: the generation it leaves behind
        try:
            with self.share.lock(self.lock_timeout):
                self.share.write_new(path, data)
        except ShareError:
            state = self.controller_state(history) if history is not None else None
            if state is not None:
                state.keep_pending(record.run_id, data)
            raise
        return path

    def write_pending_records(self) -> list[str]:
        """Write run records an earlier run could not write (kept in this controller's state)."""
        history = self._history or self.load_history()
        state = self.controller_state(history)
        written: list[str] = []
        for run_id, data in state.pending() if state is not None else []:
            path = layout.run_record_path(run_id)
            try:
                with self.share.lock(self.lock_timeout):
                    self.share.write_new(path, data)
            except ShareExistsError:
                pass
            written.append(path)
            self.notices.append(f"wrote run record {path}, which run {run_id} could not write to the share")
            if state is not None:
                state.drop_pending(run_id)
        return written

    def unrecorded_runs(self) -> list[str]:
        """Runs that committed generations since the checkpoint but have no run record on the share
        (a run that could not write it, or a record deleted since): a notice for each."""
        history = self._history or self.load_history()
        present = set(self.share.list_files(layout.RUNS_DIR))
        missing = sorted(
            {s.run_id for s in history.segments if s.run_id and layout.run_record_path(s.run_id) not in present}
        )
        for run_id in missing:
            self.notices.append(
                f"run {run_id} committed backups but its run record {layout.run_record_path(run_id)} is missing "
                "(the share refused it, or it was deleted): `keyfleet audit` reports it"
            )
        return missing

    def remove_entries(self, ids: Collection[str], *, run_id: str | None = None) -> list[ManifestEntry]:
        """Drop entries from the history (one signed segment), then delete their files."""
        wanted = set(ids)
        with self.share.lock(self.lock_timeout):
            history = self._history_for_update()
            removed = [history.entries[i] for i in wanted if i in history.entries]
            if not removed:
                return []
            if history.legacy:  # an old-format share: upgraded first, as a backup would
                history = self._history = self._start(history, run_id)
            self._append(history, run_id, [], [entry.id for entry in removed])
            still_used = {entry.path for entry in history.entries.values()}
            for entry in removed:
                if entry.path not in still_used and self.share.exists(entry.path):
                    self.share.remove(entry.path)
        self._remember()
        return removed

    def remove_unlisted(self, paths: Collection[str]) -> set[str]:
        """Delete files no entry of the (re-read, verified) history lists, under the lock; never a
        listed file, never through a link. Return the paths removed."""
        removed: set[str] = set()
        with self.share.lock(self.lock_timeout):
            history = self._history_for_update()
            listed = {entry.path for entry in history.entries.values()}
            for path in paths:
                name = path.rsplit("/", 1)[-1]
                if path in listed or not (layout.is_temporary(name) or layout.parse_key_file_path(path)):
                    continue
                if layout.is_temporary(name):
                    self.share.remove_temporary(path)
                elif self.share.exists(path):
                    self.share.remove(path)
                removed.add(path)
        return removed

    def remove_stale_temporaries(self) -> int:
        """Delete temporaries left by interrupted writers (safe: taken under the lock)."""
        with self.share.lock(self.lock_timeout):
            return self.share.remove_stale_temporaries()

    # -- reading -------------------------------------------------------------------------------

    def check_key_file(self, entry: ManifestEntry) -> KeyFileCheck:
        """Re-hash an entry's key file."""
        return self._check(entry)[0]

    def newest_intact(self, manifest: Manifest, host: str) -> ManifestEntry | None:
        """The newest of ``host``'s entries in ``manifest`` whose key file is intact (re-hashed), or None."""
        return next((e for e in manifest.entries_for(host) if self.check_key_file(e).state is FileState.OK), None)

    def _check(self, entry: ManifestEntry) -> tuple[KeyFileCheck, bytes | None]:
        try:
            layout.validate_path(entry.path)
        except ConfigError:
            return KeyFileCheck(entry, FileState.BAD_PATH), None
        try:
            if not self.share.exists(entry.path):
                return KeyFileCheck(entry, FileState.LOST), None
            data = self.share.read_bytes(entry.path)
        except ShareLinkError:
            return KeyFileCheck(entry, FileState.LINKED), None
        except ShareAccessDenied:
            return KeyFileCheck(entry, FileState.UNREADABLE), None
        actual = hashlib.sha256(data).hexdigest()
        state = FileState.OK if actual == entry.sha256 and len(data) == entry.size else FileState.ALTERED
        return KeyFileCheck(entry, state, actual), data

    def read_key_file(self, entry: ManifestEntry) -> bytes:
        """The bytes of an entry's key file; IntegrityError if missing or not what the manifest says."""
        check, data = self._check(entry)
        if check.state is FileState.OK and data is not None:
            return data
        reason = {
            FileState.LOST: "is missing",
            FileState.ALTERED: "does not match its SHA-256 in the manifest",
            FileState.BAD_PATH: "has an invalid path in the manifest",
            FileState.LINKED: "is behind a symbolic link or junction (never followed)",
            FileState.UNREADABLE: "cannot be read (access denied)",
        }[check.state]
        raise IntegrityError(f"share {self.share.url}: key file {entry.path!r} of {entry.host} {reason}")

    def run_records(self, *, invalid: list[str] | None = None, history: History | None = None) -> list[RunRecord]:
        """Every run record that proves itself, oldest first: signed by the inventory's key, or an
        old-format record the history vouches for (its SHA-256 listed at the upgrade, or a share not
        upgraded yet). Others raise, or go to ``invalid`` if given."""
        history = history or self._history or (self.load_history() if self.verifier is not None else None)
        records = []
        for path in self.share.list_files(layout.RUNS_DIR):
            if not layout.is_run_record_path(path):
                continue
            try:
                records.append(self._read_record(path, history))
            except IntegrityError:
                if invalid is None:
                    raise
                invalid.append(path)
        return sorted(records, key=lambda record: (record.started, record.run_id))

    def _read_record(self, path: str, history: History | None) -> RunRecord:
        data = self.share.read_bytes(path)
        record = RunRecord.from_bytes(data, name=path, verifier=self.verifier)
        if layout.run_record_path(record.run_id) != path:
            raise IntegrityError(f"{path} holds the record of another run ({record.run_id})")
        if record.signed or history is None or history.legacy:
            return record  # history None: no public key, nothing can be verified (the audit says so)
        if history.legacy_records.get(path) == hashlib.sha256(data).hexdigest():
            return record
        raise IntegrityError(f"{path} is not signed and is not a record the history vouches for")
