"""A share's signed history as one controller keeps it: read and verified once, extended under the lock.

Reading checks the history against what this controller saw before (its state file) and against the
newest run record. A commit writes one signed log segment naming the previous generation, never
overwriting: a segment of that generation written by another controller sends this one back to
re-read. A compaction writes a new checkpoint, then deletes the segments before it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from orchestrator.errors import ConfigError, IntegrityError
from orchestrator.share import layout
from orchestrator.share.base import Share
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


@dataclass
class CommitStats:
    """What this store's commits cost: group commits made, entries they added, the CPU time of the
    committing threads (key file writes, segment, compactions), and how many compactions ran."""

    commits: int = 0
    entries: int = 0
    cpu_seconds: float = 0.0  # user + system (the kernel's share: writes, fsync, renames)
    compactions: int = 0


class HistoryStore:
    """The verified history of one share, kept in memory for the commits to come.

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
        self.stats = CommitStats()
        self.verifiers: dict[str, dict[str, Any]] = {}  # password_id -> the verifier this run's password matches
        self._accepts: dict[str, Callable[[dict[str, Any]], bool]] = {}
        self._history: History | None = None

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
            # the newest run record first, the history after: another controller that commits meanwhile
            # writes its record after its commit, so a record read before the history can never be newer
            # than it unless history was removed (read the other way round, that commit was a false rollback)
            latest = self._latest_record()
            history = read_history(self.share, self._verifier())
            if not history.exists and self._holds_backups():
                raise HistoryError(
                    "manifest-missing",
                    "manifest.json is missing but the share holds key files; refusing to start a new "
                    "manifest (run `keyfleet audit`)",
                    layout.MANIFEST,
                )
            if latest is not None:
                self._check_latest_record(history, *latest)
            state = self.controller_state(history)
            if state is not None:
                history = self.check_controller_state(state, history)
                state.remember(history)
        except HistoryError as exc:
            self._history = None  # what was proven before is no ground to build on now
            raise HistoryError(exc.kind, f"share {self.share.url}: {exc.kind}: {exc}", exc.path) from None
        self._history = history
        return history

    def check_controller_state(self, state: ShareState, history: History) -> History:
        """``history`` checked against the newest generation this controller saw (HistoryError ``rollback``).
        Another keyfleet process of this controller may have committed, and remembered its generation,
        after ``history`` was read: on a mismatch the history is read once more, after the memory, and
        that reading decides; it is returned (a real rollback stays one whichever is read)."""
        seen = state.load()
        try:
            state.check(history, seen)
        except HistoryError:
            history = read_history(self.share, self._verifier())
            state.check(history, seen)
        return history

    def controller_state(self, history: History) -> ShareState | None:
        if history.share_id is None or self.verifier is None:
            return None
        return ShareState(history.share_id, public_key_sha256(self.verifier), self.share.url, self.state_root)

    def _verifier(self) -> Ed25519PublicKey:
        if self.verifier is None:
            raise ConfigError("no public key to verify manifest.json with", key="signing.public_key")
        return self.verifier

    def _latest_record(self) -> tuple[str, RunRecord] | None:
        """The newest run record, or None (none, or one the audit reports: it proves nothing either way)."""
        names = [p for p in self.share.list_files(layout.RUNS_DIR) if layout.is_run_record_path(p)]
        if not names:
            return None
        latest = max(names)
        try:
            return latest, RunRecord.from_bytes(self.share.read_bytes(latest), name=latest, verifier=self._verifier())
        except IntegrityError:
            return None

    def _check_latest_record(self, history: History, latest: str, record: RunRecord) -> None:
        """A signed run record naming a generation the history does not reach means a rollback."""
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
