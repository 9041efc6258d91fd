"""What a backup share must offer; the local and SMB backends implement it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from enum import StrEnum


class FolderState(StrEnum):
    EXISTS = "exists"
    MISSING = "missing"  # the share's folder is not there, its parent is
    NO_PARENT = "no-parent"  # neither is there (a mistyped path)


class Share(ABC):
    """A backup share. Paths are relative, '/'-separated, already validated by ``share.layout``.

    Guarantees every backend keeps:
    - ``write_new`` writes to a temporary name in the same folder, flushes, then renames; it raises
      ``ShareExistsError`` and leaves the existing file untouched when the target exists.
    - ``replace`` swaps a file atomically: a reader sees the old or the new bytes, never a mix.
    - ``lock`` serialises manifest updates between processes and controllers.
    - Files are created private (0600, folders 0700 where the backend has POSIX modes).
    - Temporary files are named ``.<name>.tmp-<random>`` and are never listed by ``list_files``.
    Every failure raises ``ShareError`` (or its subclass) with a message naming the share.
    """

    url: str

    @abstractmethod
    def read_bytes(self, path: str) -> bytes: ...

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
    def remove(self, path: str) -> None: ...

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
