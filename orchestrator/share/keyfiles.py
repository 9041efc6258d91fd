"""Key files on a share: re-hashing one against its manifest entry, and reading it only when intact."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum

from orchestrator.errors import ConfigError, IntegrityError
from orchestrator.share import layout
from orchestrator.share.base import Share, ShareAccessDenied, ShareFileUnusable, ShareLinkError
from orchestrator.share.manifest import ManifestEntry


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


def check_key_file(share: Share, entry: ManifestEntry) -> tuple[KeyFileCheck, bytes | None]:
    """Re-hash an entry's key file: what was found, and the bytes when it could be read."""
    try:
        layout.validate_path(entry.path)
    except ConfigError:
        return KeyFileCheck(entry, FileState.BAD_PATH), None
    try:
        if not share.exists(entry.path):
            return KeyFileCheck(entry, FileState.LOST), None
        data = share.read_bytes(entry.path)
    except ShareLinkError:
        return KeyFileCheck(entry, FileState.LINKED), None
    except ShareAccessDenied:
        return KeyFileCheck(entry, FileState.UNREADABLE), None
    except ShareFileUnusable:  # far larger than the key file its entry names: not that file
        return KeyFileCheck(entry, FileState.ALTERED), None
    actual = hashlib.sha256(data).hexdigest()
    state = FileState.OK if actual == entry.sha256 and len(data) == entry.size else FileState.ALTERED
    return KeyFileCheck(entry, state, actual), data


def read_key_file(share: Share, entry: ManifestEntry) -> bytes:
    """The bytes of an entry's key file; IntegrityError if missing or not what the manifest says."""
    check, data = check_key_file(share, entry)
    if check.state is FileState.OK and data is not None:
        return data
    reason = {
        FileState.LOST: "is missing",
        FileState.ALTERED: "does not match its SHA-256 in the manifest",
        FileState.BAD_PATH: "has an invalid path in the manifest",
        FileState.LINKED: "is behind a symbolic link or junction (never followed)",
        FileState.UNREADABLE: "cannot be read (access denied)",
    }[check.state]
    raise IntegrityError(f"share {share.url}: key file {entry.path!r} of {entry.host} {reason}")
