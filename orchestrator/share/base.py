"""What a backup share must offer; the local and SMB backends implement it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from orchestrator.errors import ConfigError, IntegrityError, ShareError
from orchestrator.share import layout

FILE_ATTRIBUTE_REPARSE_POINT = 0x400  # symbolic links and junctions on Windows (MS-FSCC 2.6)
# MS-FSCC 2.1.2.1: a reparse tag with this bit names another file or folder (symbolic link, junction,
# mount point); without it the file is itself (Data Deduplication, 0x80000013; cloud files), read as is
_NAME_SURROGATE = 0x20000000


def is_link_reparse(attributes: int, tag: int | None) -> bool:
    """Whether a Windows file with these attributes and reparse tag leads elsewhere: a reparse point
    whose tag is a name surrogate, or whose tag is unknown (``None`` or 0: treated as a link, never followed)."""
    if not attributes & FILE_ATTRIBUTE_REPARSE_POINT:
        return False
    return not tag or bool(tag & _NAME_SURROGATE)


# The largest file keyfleet reads from a share: far above any it writes (a key file is at most 256 KiB, a
# run record of 10,000 hosts about 4 MB), and a bound on what one file can cost (parsing JSON takes a few
# times its size in memory). manifest.json, the checkpoint, grows with the entries (about 600 bytes
# each): its bound holds 1.7 million, years of daily backups of 1,000 servers that were never pruned.
MAX_READ_BYTES = 128 * 1024 * 1024
MAX_CHECKPOINT_BYTES = 1024 * 1024 * 1024


def read_limit(path: str) -> int:
    """The most bytes keyfleet reads from the share file ``path``."""
    return MAX_CHECKPOINT_BYTES if path == layout.MANIFEST else MAX_READ_BYTES


class ShareLinkError(IntegrityError):
    """A path under the share goes through a symbolic link or junction: never followed (exit 3)."""


class ShareFileUnusable(IntegrityError):
    """A path under the share is not a regular file keyfleet could have written (a named pipe, a device),
    or is larger than any it writes: never read (exit 3)."""


def unusable(url: str, path: str, why: str) -> ShareFileUnusable:
    return ShareFileUnusable(f"share {url}: {path} {why}; keyfleet never reads it (run `keyfleet audit`)")


class ShareAccessDenied(ShareError):
    """The share refuses to open one path (permissions; Samba also answers so for a symbolic link
    leading out of the share, which its default ``wide links = no`` never follows)."""


class ItemKind(StrEnum):
    FILE = "file"
    TEMPORARY = "temporary"  # a writer's ``.<name>.tmp-<random>``
    LINK = "link"  # a symbolic link, junction or other reparse point: never followed


@dataclass(frozen=True)
class ShareItem:
    """One thing found under the share by :meth:`Share.scan`."""

    path: str
    kind: ItemKind
    modified: datetime | None


class FolderState(StrEnum):
    EXISTS = "exists"
    MISSING = "missing"  # the share's folder is not there, its parent is
    NO_PARENT = "no-parent"  # neither is there (a mistyped path)
    NOT_FOLDER = "not-folder"  # something else (a file) is at the share's path


class Share(ABC):
    """A backup share. Paths are relative, '/'-separated, already validated by ``share.layout``.

    Guarantees every backend keeps:
    - ``write_new`` writes to a temporary name in the same folder, flushes, then renames; it raises
      ``ShareExistsError`` and leaves the existing file untouched when the target exists.
    - ``replace`` swaps a file atomically: a reader sees the old or the new bytes, never a mix.
    - ``lock`` serialises manifest updates between processes and controllers.
    - Files are created private (0600, folders 0700 where the backend has POSIX modes).
    - Temporary files are named ``.<name>.tmp-<random>`` and are never listed by ``list_files``.
    - No path is followed through a symbolic link or junction: an operation whose path meets one
      raises ``ShareLinkError``; ``list_files`` does not list or enter them, ``scan`` reports them.
    Every failure raises ``ShareError`` (or its subclass) with a message naming the share.
    """

    url: str

    @abstractmethod
    def read_bytes(self, path: str) -> bytes:
        """The whole file; ShareFileUnusable (never read) for anything but a regular file of at most
        ``read_limit(path)`` bytes."""

    @abstractmethod
    def write_new(self, path: str, data: bytes) -> None: ...

    @abstractmethod
    def replace(self, path: str, data: bytes) -> None: ...

    @abstractmethod
    def exists(self, path: str) -> bool: ...

    @abstractmethod
    def list_files(self, prefix: str = "") -> Iterator[str]:
        """Every file below ``prefix`` (recursively), as share-relative paths, temp files excluded."""

    @abstractmethod
    def scan(self) -> list[ShareItem]:
        """Every file, temporary file and link under the share (links not entered), with its
        modification time; the lock file is left out."""

    @abstractmethod
    def remove(self, path: str) -> None: ...

    @abstractmethod
    def remove_temporary(self, path: str) -> None:
        """Delete one writer's temporary file (its folder checked as any path; a missing file is fine)."""

    @abstractmethod
    def lock(self, timeout: float = 60.0) -> AbstractContextManager[None]: ...

    @abstractmethod
    def remove_stale_temporaries(self) -> int:
        """Delete temporary files left by an interrupted writer; return how many."""

    @abstractmethod
    def folder_state(self) -> FolderState:
        """Whether the share's own folder exists, and if not, whether its parent does."""

    @abstractmethod
    def create_folder(self) -> None:
        """Create the share's own folder (private); its parent must exist."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the default has nothing to release."""

    def __enter__(self) -> Share:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def split_temporary(path: str) -> tuple[str, str]:
    """``(folder, name)`` of a temporary file's share path; ConfigError unless it is one."""
    folder, _, name = path.rpartition("/")
    if not layout.is_temporary(name):
        raise ConfigError(f"{path!r} is not a temporary file of the share")
    if folder:
        layout.validate_path(folder)
    return folder, name
