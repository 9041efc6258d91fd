"""Backups on a share: key files, the signed manifest and run records, kept consistent under the lock.

Every write happens under the share's lock: a key file is written (never overwriting), then the
manifest is re-read, verified, extended, signed and replaced atomically. A crash at any moment
leaves the old or the new manifest, at worst an orphan key file that the audit reports. Because
no writer works outside the lock, temporaries found while holding it are stale and safe to delete.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from orchestrator.errors import ConfigError, IntegrityError, ShareError, ShareExistsError
from orchestrator.share import layout
from orchestrator.share.base import Share
from orchestrator.share.manifest import Manifest, ManifestEntry, public_key_sha256
from orchestrator.share.runrecord import RunRecord


class FileState(StrEnum):
    """What re-reading a manifest entry's key file found."""

    OK = "ok"
    LOST = "lost"  # the file is gone
    ALTERED = "altered"  # the bytes no longer hash to the entry's SHA-256 (or size)
    BAD_PATH = "bad-path"  # the entry's path is not a valid share path: never read


@dataclass(frozen=True)
class KeyFileCheck:
    entry: ManifestEntry
    state: FileState
    actual_sha256: str | None = None  # of the bytes found, when the file exists


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

    ``signer`` signs every manifest written (None: written unsigned). ``verifier`` (default: the
    signer's public key) is checked before the manifest is extended or pruned, so a tampered
    manifest is never re-signed.
    """

    def __init__(
        self,
        share: Share,
        signer: Ed25519PrivateKey | None = None,
        verifier: Ed25519PublicKey | None = None,
        *,
        lock_timeout: float = 60.0,
    ) -> None:
        if signer and verifier and public_key_sha256(signer.public_key()) != public_key_sha256(verifier):
            raise ConfigError("the signing private key does not belong to the public key", key="signing.public_key")
        self.share = share
        self.signer = signer
        self.verifier = verifier or (signer.public_key() if signer else None)
        self.lock_timeout = lock_timeout
        self.stored: list[ManifestEntry] = []  # every entry this store added, in order
        self._closed = False
        self._queue: list[_PendingAdd] = []
        self._queue_guard = threading.Lock()
        self._commit_guard = threading.Lock()

    # -- manifest ------------------------------------------------------------------------------

    def load_manifest(self, verify: bool = True) -> Manifest:
        """The manifest; ``verify`` checks its signature first.

        A share without a manifest is new (an empty manifest) only while it holds no key files;
        otherwise the manifest was deleted, and starting a new one would bury the history:
        IntegrityError.
        """
        if not self.share.exists(layout.MANIFEST):
            if verify and self._holds_backups():
                raise IntegrityError(
                    f"share {self.share.url}: manifest.json is missing but the share holds key files; "
                    "refusing to start a new manifest (run `keyfleet audit`)"
                )
            return Manifest()
        try:
            manifest = Manifest.from_bytes(self.share.read_bytes(layout.MANIFEST))
        except IntegrityError as exc:
            raise IntegrityError(f"share {self.share.url}: {exc}") from None
        if verify:
            if self.verifier is None:
                raise ConfigError("no public key to verify manifest.json with", key="signing.public_key")
            try:
                manifest.verify(self.verifier)
            except IntegrityError as exc:
                raise IntegrityError(f"share {self.share.url}: {exc}") from None
        return manifest

    def _holds_backups(self) -> bool:
        return any(layout.parse_key_file_path(path) is not None for path in self.share.list_files())

    def _manifest_for_update(self) -> Manifest:
        try:
            return self.load_manifest(verify=self.verifier is not None)
        except IntegrityError as exc:
            raise IntegrityError(f"{exc}; refusing to change it (run `keyfleet audit`)") from None

    def _save_manifest(self, entries: tuple[ManifestEntry, ...]) -> Manifest:
        manifest = Manifest(entries=entries, updated=datetime.now(UTC))
        if self.signer:
            manifest = manifest.signed(self.signer)
        self.share.replace(layout.MANIFEST, manifest.to_bytes())
        return manifest

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
        try:
            with self.share.lock(self.lock_timeout):
                manifest = self._manifest_for_update()
                if manifest.updated is None:
                    # a new share: a signed manifest exists before the first key file, so a share
                    # with key files and no manifest can only mean a deleted manifest
                    manifest = self._save_manifest(())
                known = {e.id: e for e in manifest.entries}
                added: list[_PendingAdd] = []
                for item in batch:
                    recorded = known.get(item.entry.id)
                    if recorded is not None and recorded.sha256 == item.entry.sha256:
                        item.result = recorded  # the same bytes, stored in the same second: already recorded
                        continue
                    try:
                        self._write_key_file(item.entry, item.data)
                    except (ShareError, IntegrityError) as exc:
                        item.error = exc
                        continue
                    known[item.entry.id] = item.entry
                    added.append(item)
                if added:
                    self._save_manifest((*manifest.entries, *(item.entry for item in added)))
                for item in added:
                    item.result = item.entry
                    self.stored.append(item.entry)
        except (ShareError, IntegrityError, ConfigError) as exc:
            for item in batch:
                if item.result is None and item.error is None:
                    item.error = exc
        finally:
            for item in batch:
                if item.result is None and item.error is None:
                    item.error = ShareError(f"share {self.share.url}: the manifest update did not complete")
                item.done = True

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
        """Write ``runs/<run-id>.json`` (never overwriting); return its share path."""
        path = layout.run_record_path(record.run_id)
        with self.share.lock(self.lock_timeout):
            self.share.write_new(path, record.to_bytes())
        return path

    def remove_entries(self, ids: Collection[str]) -> list[ManifestEntry]:
        """Drop entries from the manifest (signed, replaced atomically), then delete their files."""
        wanted = set(ids)
        with self.share.lock(self.lock_timeout):
            manifest = self._manifest_for_update()
            removed = [entry for entry in manifest.entries if entry.id in wanted]
            kept = tuple(entry for entry in manifest.entries if entry.id not in wanted)
            if not removed:
                return []
            self._save_manifest(kept)
            still_used = {entry.path for entry in kept}
            for entry in removed:
                if entry.path not in still_used and self.share.exists(entry.path):
                    self.share.remove(entry.path)
        return removed

    def remove_stale_temporaries(self) -> int:
        """Delete temporaries left by interrupted writers (safe: taken under the lock)."""
        with self.share.lock(self.lock_timeout):
            return self.share.remove_stale_temporaries()

    # -- reading -------------------------------------------------------------------------------

    def check_key_file(self, entry: ManifestEntry) -> KeyFileCheck:
        """Re-hash an entry's key file."""
        return self._check(entry)[0]

    def _check(self, entry: ManifestEntry) -> tuple[KeyFileCheck, bytes | None]:
        try:
            layout.validate_path(entry.path)
        except ConfigError:
            return KeyFileCheck(entry, FileState.BAD_PATH), None
        if not self.share.exists(entry.path):
            return KeyFileCheck(entry, FileState.LOST), None
        data = self.share.read_bytes(entry.path)
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
        }[check.state]
        raise IntegrityError(f"share {self.share.url}: key file {entry.path!r} of {entry.host} {reason}")

    def run_records(self, *, invalid: list[str] | None = None) -> list[RunRecord]:
        """Every run record, oldest first. Unreadable ones raise, or go to ``invalid`` if given."""
        records = []
        for path in self.share.list_files(layout.RUNS_DIR):
            if not layout.is_run_record_path(path):
                continue
            try:
                records.append(RunRecord.from_bytes(self.share.read_bytes(path), name=path))
            except IntegrityError:
                if invalid is None:
                    raise
                invalid.append(path)
        return sorted(records, key=lambda record: (record.started, record.run_id))

    def latest_run_record(self, command: str | None = None) -> RunRecord | None:
        """The most recent run record (of ``command`` if given), or None."""
        records = [r for r in self.run_records(invalid=[]) if command is None or r.command == command]
        return records[-1] if records else None
