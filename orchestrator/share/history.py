"""The share's signed, hash-chained history: one log segment per commit, compacted into manifest.json.

``log/<generation>.json`` (``keyfleet-log/1``) is written once per commit, never changed: the entries
it adds and removes, its generation, the run that made it and the digest of its predecessor, all
under one Ed25519 signature. ``manifest.json`` (``keyfleet-manifest/2``) is a signed checkpoint: every
entry at generation G and the digest of segment G. The current state is the checkpoint plus the
segments after it; a commit costs what it adds, and a compaction (a new checkpoint, then the
segments before it deleted) happens once the log holds a quarter of the checkpoint's size.
``verifiers``: per ``password_id``, the scrypt verifier of its password (jobs/identity.py), signed and
carried into every checkpoint like the entries; the first one recorded for an id stays.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from orchestrator.errors import IntegrityError
from orchestrator.share import layout
from orchestrator.share.base import Share
from orchestrator.share.manifest import (
    FORMAT as LEGACY_FORMAT,
)
from orchestrator.share.manifest import (
    Manifest,
    ManifestEntry,
    format_iso,
    parse_iso,
    signed_bytes,
    verified_bytes,
    verify_document,
)

LOG_DIR = "log"
SEGMENT_FORMAT = "keyfleet-log/1"
CHECKPOINT_FORMAT = "keyfleet-manifest/2"
COMPACT_MIN = 64  # changes in the log before a compaction is considered
COMPACT_RATIO = 4  # ... and at least 1/COMPACT_RATIO of the checkpoint's entries: amortised O(added)
# ... or this many segments, whatever they hold: a share written by one-host runs would otherwise keep
# up to N/4 segments, each a signature to check on every read (about 0.1 ms each)
COMPACT_SEGMENTS = 1024
_SEGMENT = re.compile(r"log/(\d{12})\.json")


class HistoryError(IntegrityError):
    """The history does not prove its own order. ``kind`` is the audit finding it becomes."""

    def __init__(self, kind: str, message: str, path: str | None = None) -> None:
        self.kind = kind
        self.path = path
        super().__init__(message)


def segment_path(generation: int) -> str:
    return f"{LOG_DIR}/{generation:012d}.json"


def segment_generation(path: str) -> int | None:
    match = _SEGMENT.fullmatch(path)
    return int(match[1]) if match else None


@dataclass(frozen=True)
class Segment:
    """One commit: what it added and removed, under the signature with its generation and predecessor."""

    generation: int
    previous: str | None
    time: datetime
    run_id: str | None
    added: tuple[ManifestEntry, ...]
    removed: tuple[str, ...]
    digest: str
    upgraded_from: str | None = None  # SHA-256 of the keyfleet-manifest/1 file this segment replaced
    legacy_records: dict[str, str] = field(default_factory=dict)  # run record path -> SHA-256 at upgrade
    verifiers: dict[str, dict[str, Any]] = field(default_factory=dict)  # password_id -> its password verifier
    share_id: str | None = None  # the share the segment was signed for


def build_segment(
    key: Ed25519PrivateKey,
    *,
    share_id: str,
    generation: int,
    previous: str | None,
    run_id: str | None,
    added: list[ManifestEntry],
    removed: list[str],
    upgraded_from: str | None = None,
    legacy_records: dict[str, str] | None = None,
    verifiers: dict[str, dict[str, Any]] | None = None,
) -> tuple[bytes, Segment]:
    """The signed bytes of a new segment, and the segment they hold."""
    now = datetime.now(UTC)
    document: dict[str, Any] = {
        "format": SEGMENT_FORMAT,
        "share_id": share_id,
        "generation": generation,
        "previous": previous,
        "time": format_iso(now),
        "run_id": run_id,
        "added": [entry.to_json() for entry in added],
        "removed": list(removed),
    }
    if upgraded_from is not None:
        document["upgraded_from"] = upgraded_from
        document["legacy_records"] = dict(legacy_records or {})
    if verifiers:
        document["verifiers"] = verifiers
    data = signed_bytes(document, key)
    return data, parse_segment(data, segment_path(generation), key.public_key(), share_id)


def parse_segment(data: bytes, path: str, verifier: Ed25519PublicKey, share_id: str | None) -> Segment:
    """A verified segment; HistoryError ``segment-invalid`` when it is malformed, unsigned or foreign."""
    verified = verified_bytes(data, verifier)
    if verified is not None:
        document, digest = verified
        if document.get("format") != SEGMENT_FORMAT:
            raise HistoryError("segment-invalid", f"{path} is not a {SEGMENT_FORMAT} document", path)
    else:
        document = _load(data, path, SEGMENT_FORMAT, "segment-invalid")
        try:
            digest = verify_document(document, verifier, path)
        except IntegrityError as exc:
            raise HistoryError("segment-invalid", str(exc), path) from None
        except RecursionError:  # nested just deep enough to decode but not to encode again
            raise HistoryError("segment-invalid", f"{path} is nested too deep", path) from None
    try:
        generation = document["generation"]
        if not isinstance(generation, int) or segment_generation(path) != generation:
            raise ValueError(f"generation {generation!r} does not match the file name")
        if share_id is not None and document.get("share_id") != share_id:
            raise ValueError("it belongs to another share (share_id differs)")
        previous, run_id = document.get("previous"), document.get("run_id")
        if previous is not None and not isinstance(previous, str):
            raise ValueError("'previous' is not a string")
        if run_id is not None and not isinstance(run_id, str):
            raise ValueError("'run_id' is not a string")
        removed = document.get("removed")
        if not isinstance(removed, list) or not all(isinstance(i, str) for i in removed):
            raise ValueError("'removed' is not a list of ids")
        legacy = document.get("legacy_records", {})
        if not isinstance(legacy, dict) or not all(isinstance(v, str) for v in legacy.values()):
            raise ValueError("'legacy_records' is malformed")
        return Segment(
            generation=generation,
            previous=previous,
            time=parse_iso(str(document["time"])),
            run_id=run_id,
            added=tuple(ManifestEntry.from_json(e) for e in _list(document, "added")),
            removed=tuple(removed),
            digest=digest,
            upgraded_from=document.get("upgraded_from"),
            legacy_records=dict(legacy),
            verifiers=_verifiers(document),
            share_id=share if isinstance(share := document.get("share_id"), str) else None,
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise HistoryError("segment-invalid", f"{path} is not a valid log segment: {exc}", path) from None


@dataclass
class History:
    """The share's state as folded from its checkpoint and log. ``legacy``: still keyfleet-manifest/1."""

    share_id: str | None = None
    generation: int = 0
    head: str | None = None
    updated: datetime | None = None
    entries: dict[str, ManifestEntry] = field(default_factory=dict)
    checkpoint_generation: int = 0
    changes: int = 0  # entries added or removed since the checkpoint
    legacy_records: dict[str, str] = field(default_factory=dict)
    segments: list[Segment] = field(default_factory=list)  # read or written after the checkpoint
    legacy: bool = False
    legacy_sha256: str | None = None  # of the keyfleet-manifest/1 file, while ``legacy``
    exists: bool = False  # manifest.json was found
    verifiers: dict[str, dict[str, Any]] = field(default_factory=dict)  # password_id -> its password verifier

    def apply(self, segment: Segment) -> None:
        """Fold one segment in; HistoryError ``chain-broken`` unless it is the direct successor."""
        path = segment_path(segment.generation)
        if segment.generation != self.generation + 1 or segment.previous != self.head:
            raise HistoryError(
                "chain-broken",
                f"{path} does not follow generation {self.generation} (its predecessor digest differs)",
                path,
            )
        for entry_id in segment.removed:
            self.entries.pop(entry_id, None)
        for entry in segment.added:
            self.entries[entry.id] = entry
        self.legacy_records.update(segment.legacy_records)
        for password_id, verifier in segment.verifiers.items():
            self.verifiers.setdefault(password_id, verifier)
        self.generation, self.head, self.updated = segment.generation, segment.digest, segment.time
        self.changes += len(segment.added) + len(segment.removed)
        self.segments.append(segment)

    def committed_runs(self) -> set[str]:
        """The runs named by the segments since the checkpoint and by the entries it holds."""
        runs = {segment.run_id for segment in self.segments} | {entry.run_id for entry in self.entries.values()}
        return {run_id for run_id in runs if run_id}

    def manifest(self) -> Manifest:
        return Manifest(
            entries=tuple(self.entries.values()),
            updated=self.updated,
            generation=self.generation,
            head=self.head,
            share_id=self.share_id,
            legacy=self.legacy,
        )

    def needs_compaction(self) -> bool:
        enough = self.changes >= max(COMPACT_MIN, len(self.entries) // COMPACT_RATIO)
        return enough or len(self.segments) >= COMPACT_SEGMENTS

    def checkpoint_bytes(self, key: Ed25519PrivateKey) -> bytes:
        """A signed manifest.json of the current generation."""
        assert self.share_id is not None
        document = {
            "format": CHECKPOINT_FORMAT,
            "share_id": self.share_id,
            "generation": self.generation,
            "head": self.head,
            "updated": format_iso(self.updated or datetime.now(UTC)),
            "entries": [entry.to_json() for entry in self.entries.values()],
            "legacy_records": self.legacy_records,
        }
        if self.verifiers:
            document["verifiers"] = self.verifiers
        return signed_bytes(document, key)

    def compacted(self) -> None:
        self.checkpoint_generation, self.changes, self.segments = self.generation, 0, []


def new_share_id() -> str:
    return secrets.token_hex(16)


def read_history(share: Share, verifier: Ed25519PublicKey, problems: list[HistoryError] | None = None) -> History:
    """The verified history of ``share``. HistoryError for the first problem; when ``problems`` is
    given, problems go there instead and the history is what could be proven (the audit's view)."""
    history = History()
    generations = sorted(g for g in (segment_generation(p) for p in share.list_files(LOG_DIR)) if g is not None)
    try:
        if share.exists(layout.MANIFEST):
            history = _read_checkpoint(share, verifier, generations, problems)
        elif generations:
            raise HistoryError(
                "manifest-missing", "manifest.json is missing but the log holds segments", layout.MANIFEST
            )
    except HistoryError as exc:
        if problems is None:
            raise
        problems.append(exc)
        return History(exists=share.exists(layout.MANIFEST))
    _read_segments(share, verifier, history, generations, problems)
    return history


def _read_checkpoint(
    share: Share, verifier: Ed25519PublicKey, generations: list[int], problems: list[HistoryError] | None
) -> History:
    """The checkpoint; with ``problems``, a bad signature is reported there and the entries are still
    read (unproven), so the audit can name the servers they belong to."""
    data = share.read_bytes(layout.MANIFEST)
    verified = verified_bytes(data, verifier)
    document = verified[0] if verified is not None else _load(data, layout.MANIFEST, None, "manifest-invalid")
    if document.get("format") == LEGACY_FORMAT:
        return _read_legacy(data, verifier, generations, problems)
    if document.get("format") != CHECKPOINT_FORMAT:
        raise HistoryError("manifest-invalid", f"manifest.json has an unknown format {document.get('format')!r}")
    try:
        if verified is None:
            try:
                verify_document(document, verifier, layout.MANIFEST)
            except RecursionError:  # nested just deep enough to decode but not to encode again
                raise IntegrityError("manifest.json is nested too deep") from None
    except IntegrityError as exc:
        kind = "signature-missing" if document.get("signature") is None else "signature-invalid"
        if problems is None:
            raise HistoryError(kind, str(exc), layout.MANIFEST) from None
        problems.append(HistoryError(kind, str(exc), layout.MANIFEST))
    try:
        generation, head = document["generation"], document.get("head")
        if not isinstance(generation, int) or generation < 0 or not isinstance(document["share_id"], str):
            raise ValueError("'generation' or 'share_id' is malformed")
        entries = [ManifestEntry.from_json(e) for e in _list(document, "entries")]
        legacy = document.get("legacy_records", {})
        if not isinstance(legacy, dict):
            raise ValueError("'legacy_records' is malformed")
        return History(
            share_id=document["share_id"],
            generation=generation,
            head=head if isinstance(head, str) else None,
            updated=parse_iso(str(document["updated"])),
            entries={e.id: e for e in entries},
            checkpoint_generation=generation,
            legacy_records={str(k): str(v) for k, v in legacy.items()},
            exists=True,
            verifiers=_verifiers(document),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise HistoryError("manifest-invalid", f"manifest.json is not a valid checkpoint: {exc}") from None


def _read_legacy(
    data: bytes, verifier: Ed25519PublicKey, generations: list[int], problems: list[HistoryError] | None
) -> History:
    """A keyfleet-manifest/1 file: verified as before. With a log beside it, it is either an upgrade
    interrupted before the checkpoint (segment 1 names this very file) or a rolled-back manifest."""
    try:
        manifest = Manifest.from_bytes(data)
    except IntegrityError as exc:
        raise HistoryError("manifest-invalid", str(exc), layout.MANIFEST) from None
    try:
        manifest.verify(verifier)
    except IntegrityError as exc:
        kind = "signature-missing" if manifest.signature is None else "signature-invalid"
        if problems is None:
            raise HistoryError(kind, str(exc), layout.MANIFEST) from None
        problems.append(HistoryError(kind, str(exc), layout.MANIFEST))
    sha256 = hashlib.sha256(data).hexdigest()
    if generations:
        # the caller folds the log from generation 1, whose segment must name this file (checked there)
        return History(legacy_sha256=sha256, exists=True)
    return History(
        updated=manifest.updated,
        entries={e.id: e for e in manifest.entries},
        legacy=True,
        legacy_sha256=sha256,
        exists=True,
    )


def _read_segments(
    share: Share,
    verifier: Ed25519PublicKey,
    history: History,
    generations: list[int],
    problems: list[HistoryError] | None,
) -> None:
    upgrading = history.legacy_sha256 is not None and not history.legacy
    try:
        for generation in generations:
            if generation <= history.checkpoint_generation and not upgrading:
                if generation == history.checkpoint_generation and generation > 0:
                    _check_checkpoint_head(share, verifier, history)
                continue
            if generation != history.generation + 1:
                raise HistoryError(
                    "rollback" if upgrading else "chain-broken",
                    f"log segment {history.generation + 1} is missing (next found: {generation})",
                    segment_path(history.generation + 1),
                )
            path = segment_path(generation)
            segment = parse_segment(share.read_bytes(path), path, verifier, history.share_id)
            if generation == 1 and upgrading and segment.upgraded_from != history.legacy_sha256:
                raise HistoryError(
                    "rollback",
                    "manifest.json is an old-format manifest but the log was started from another one "
                    "(the manifest was put back from an older copy)",
                    layout.MANIFEST,
                )
            if history.share_id is None:  # from the segment verified above, not from a second read
                history.share_id = segment.share_id
            history.apply(segment)
    except HistoryError as exc:
        if problems is None:
            raise
        problems.append(exc)


def _check_checkpoint_head(share: Share, verifier: Ed25519PublicKey, history: History) -> None:
    path = segment_path(history.generation)
    segment = parse_segment(share.read_bytes(path), path, verifier, history.share_id)
    if segment.digest != history.head:
        raise HistoryError("chain-broken", f"{path} is not the segment manifest.json was compacted from", path)


def _load(data: bytes, path: str, expected_format: str | None, kind: str) -> dict[str, Any]:
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise HistoryError(kind, f"{path} is not valid JSON: {type(exc).__name__}: {exc}", path) from None
    if not isinstance(document, dict):
        raise HistoryError(kind, f"{path} is not a JSON object", path)
    if expected_format is not None and document.get("format") != expected_format:
        raise HistoryError(kind, f"{path} is not a {expected_format} document", path)
    return document


def _verifiers(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    value = document.get("verifiers", {})
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, dict) for k, v in value.items()):
        raise ValueError("'verifiers' is malformed")
    return value


def _list(document: dict[str, Any], key: str) -> list[Any]:
    value = document.get(key)
    if not isinstance(value, list):
        raise ValueError(f"{key!r} is not a list")
    return value
