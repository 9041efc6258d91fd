"""Backups on a share: key files, group commits to the signed history, removals and run records.

Every write happens under the share's lock: a key file is written (never overwriting), then one
signed log segment records it (share/historystore.py). The history is read and verified once per
command and kept in memory, so a commit costs what it adds. A crash at any moment leaves the old or
the new generation, at worst an orphan key file that the audit reports. Because no writer works
outside the lock, temporaries found while holding it are stale and safe to delete.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from orchestrator.errors import ConfigError, IntegrityError, ShareError, ShareExistsError
from orchestrator.share import layout
from orchestrator.share.base import Share, ShareFileUnusable
from orchestrator.share.history import History
from orchestrator.share.historystore import HistoryStore
from orchestrator.share.keyfiles import FileState, KeyFileCheck, check_key_file, read_key_file
from orchestrator.share.manifest import Manifest, ManifestEntry
from orchestrator.share.runrecord import RunMarker, RunRecord

__all__ = ["BackupStore", "FileState", "KeyFileCheck"]  # FileState, KeyFileCheck: where callers import them

_COMMIT_ATTEMPTS = 5  # another controller's segment of the same generation sends us back to re-read


@dataclass
class _PendingAdd:
    """One key file waiting for the next group commit, and how it ended."""

    entry: ManifestEntry
    data: bytes = field(repr=False)
    done: bool = False
    result: ManifestEntry | None = None
    error: Exception | None = None


class BackupStore(HistoryStore):
    """Key files, manifest and run records on one share (see HistoryStore for the arguments)."""

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
        super().__init__(
            share, signer, verifier, lock_timeout=lock_timeout, record_signer=record_signer, state_root=state_root
        )
        self.stored: list[ManifestEntry] = []  # every entry this store added, in order
        self._closed = False
        self._queue: list[_PendingAdd] = []
        self._queue_guard = threading.Lock()
        self._commit_guard = threading.Lock()
        self._marked: set[str] = set()  # run ids whose marker this store wrote

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

    def mark_running(self, marker: RunMarker) -> str:
        """Write ``marker`` (signed) before the run contacts any server; return its share path. It is the
        run's write probe too: a share that refuses it raises ShareError before any server exports its
        key. write_run_record removes it once the record is on the share."""
        path = layout.run_marker_path(marker.run_id)
        with self.share.lock(self.lock_timeout):  # no writer outside it: stale temporaries are removed under it
            self.share.write_new(path, marker.to_bytes(self.record_signer))
        self._marked.add(marker.run_id)
        return path

    def unmark_running(self, run_id: str) -> None:
        """Remove the marker of a run this store marked that ends without a record (it committed nothing)."""
        self._unmark(run_id, known=True)

    def _unmark(self, run_id: str, *, known: bool) -> None:
        """Remove the marker of ``run_id``, whose record is now on the share (``known``: this store wrote
        it; else look first). One left behind (the share refused the removal) is harmless: a run with a
        record is not under way, whatever its marker says."""
        path = layout.run_marker_path(run_id)
        with contextlib.suppress(ShareError):
            if known or self.share.exists(path):
                self.share.remove(path)
        self._marked.discard(run_id)

    def run_markers(self, *, invalid: list[str] | None = None) -> dict[str, RunMarker]:
        """The markers on the share that prove themselves (signed by the inventory's key), by run id: runs
        under way, or that never wrote their record. Others raise, or go to ``invalid`` if given."""
        markers: dict[str, RunMarker] = {}
        for path in self.share.list_files(layout.RUNS_DIR):
            run_id = layout.marker_run_id(path)
            if run_id is None:
                continue
            try:
                data = self.share.read_bytes(path)
            except ShareFileUnusable:  # a named pipe, a huge file: no marker keyfleet wrote
                if invalid is None:
                    raise
                invalid.append(path)
                continue
            except ShareError:
                if not self.share.exists(path):
                    continue  # its run wrote its record and removed it since the listing
                raise
            try:
                marker = RunMarker.from_bytes(data, name=path, verifier=self._verifier())
                if marker.run_id != run_id:
                    raise IntegrityError(f"{path} marks another run ({marker.run_id})")
            except IntegrityError:
                if invalid is None:
                    raise
                invalid.append(path)
                continue
            markers[run_id] = marker
        return markers

    def chained(self, record: RunRecord) -> RunRecord:
        """``record`` naming the generation of the history this store holds now (the one its run left)."""
        history = self._history
        return record if history is None else replace(record, generation=history.generation, head=history.head)

    def write_run_record(self, record: RunRecord) -> str:
        """Write ``runs/<run-id>.json`` (never overwriting), signed and naming the generation the run
        left behind; return its share path. When the share refuses it, the signed record is kept in
        this controller's state (the next backup writes it) and the error is raised."""
        path = layout.run_record_path(record.run_id)
        history = self._history
        record = self.chained(record)
        data = record.to_bytes(self.record_signer)
        self._remember()  # once per run: the generation it leaves behind
        try:
            with self.share.lock(self.lock_timeout):
                self.share.write_new(path, data)
        except ShareError:
            state = self.controller_state(history) if history is not None else None
            if state is not None:
                state.keep_pending(record.run_id, data)
            raise  # the marker stays: until it runs out, the audit takes the run for one under way
        if record.run_id in self._marked:
            self._unmark(record.run_id, known=True)
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
            self._unmark(run_id, known=False)
            written.append(path)
            self.notices.append(f"wrote run record {path}, which run {run_id} could not write to the share")
            if state is not None:
                state.drop_pending(run_id)
        return written

    def unrecorded_runs(self) -> list[str]:
        """Runs that committed generations since the checkpoint but have no run record on the share
        (a run that could not write it, or a record deleted since), and none kept by this controller for
        the next storing run to write (context.mark_run_started): a notice for each."""
        history = self._history or self.load_history()
        runs = {s.run_id for s in history.segments if s.run_id}
        present = set(self.share.list_files(layout.RUNS_DIR))
        if any(layout.run_record_path(run_id) not in present for run_id in runs):
            # markers, then the records again: a run writes its record before it removes its marker, so a
            # run whose marker is gone by now has its record in the listing that follows
            now = datetime.now(UTC)
            runs -= {run_id for run_id, m in self.run_markers(invalid=[]).items() if m.until > now}
            present = set(self.share.list_files(layout.RUNS_DIR))
        missing = sorted(run_id for run_id in runs if layout.run_record_path(run_id) not in present)
        if missing:  # a record this controller kept is not lost: the run's marker writes it (and says so)
            state = self.controller_state(history)
            kept = {run_id for run_id, _ in state.pending()} if state is not None else set()
            missing = [run_id for run_id in missing if run_id not in kept]
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
            gone = {entry.id for entry in removed}
            still_used = {e.path for e in history.entries.values() if e.id not in gone}
            # before any commit (an old-format share's upgrade is one): a file reached through a link
            # refuses the whole prune (ShareLinkError), with nothing changed
            files = [e.path for e in removed if e.path not in still_used and self.share.exists(e.path)]
            if history.legacy:  # an old-format share: upgraded first, as a backup would
                history = self._history = self._start(history, run_id)
            self._append(history, run_id, [], [entry.id for entry in removed])
            for path in files:
                try:
                    self.share.remove(path)
                except (ShareError, IntegrityError) as exc:
                    # committed: the entries are gone from the history whatever happens to their files, so
                    # the caller still records the run; a file left is an orphan the audit names
                    self.notices.append(f"{path} left on the share (its entry is removed): {exc}")
        self._remember()
        return removed

    def remove_unlisted(self, paths: Collection[str]) -> set[str]:
        """Delete files no entry of the (re-read, verified) history lists (key files, temporaries, run
        markers), under the lock; never a listed file, never through a link. Return the paths removed."""
        removed: set[str] = set()
        with self.share.lock(self.lock_timeout):
            # re-read under the lock: another controller may have committed a key file (and its
            # segment) since this store read the history, and that file is listed, not an orphan
            self._history = None
            history = self._history_for_update()
            listed = {entry.path for entry in history.entries.values()}
            for path in paths:
                name = path.rsplit("/", 1)[-1]
                marker = layout.marker_run_id(path) is not None
                if path in listed or not (layout.is_temporary(name) or layout.parse_key_file_path(path) or marker):
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
        return check_key_file(self.share, entry)[0]

    def newest_intact(self, manifest: Manifest, host: str, *, skip: int = 0) -> ManifestEntry | None:
        """The newest of ``host``'s entries in ``manifest`` whose key file is intact (re-hashed), or None;
        ``skip``: that many of the newest are known not to be (they were just checked)."""
        entries = manifest.entries_for(host)[skip:]
        return next((e for e in entries if self.check_key_file(e).state is FileState.OK), None)

    def read_key_file(self, entry: ManifestEntry) -> bytes:
        """The bytes of an entry's key file; IntegrityError if missing or not what the manifest says."""
        return read_key_file(self.share, entry)

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
