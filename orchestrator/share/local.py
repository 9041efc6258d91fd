"""A backup share on a local or mounted path (also a UNC path when the controller runs on Windows)."""

from __future__ import annotations

import errno
import os
import stat
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

from orchestrator.errors import ShareError, ShareExistsError
from orchestrator.share import layout
from orchestrator.share.base import (
    FILE_ATTRIBUTE_REPARSE_POINT,
    FolderState,
    ItemKind,
    Share,
    ShareAccessDenied,
    ShareItem,
    ShareLinkError,
    split_temporary,
)

if sys.platform == "win32":  # pragma: no cover - exercised only on a Windows controller
    import msvcrt
else:
    import fcntl

_FILE_MODE = 0o600
_DIR_MODE = 0o700
_LOCK_POLL_MIN, _LOCK_POLL_MAX = 0.005, 0.1
_process_locks: dict[Path, threading.Lock] = {}
_process_locks_guard = threading.Lock()
# link(2) is not offered by every mounted filesystem (FAT, some CIFS mounts): claim the name instead.
_NO_LINK = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV}
_REASONS = {
    errno.ENOSPC: "no space left on the share",
    errno.EDQUOT: "disk quota exceeded on the share",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or folder",
    errno.EROFS: "the share is mounted read-only",
    errno.ENOTDIR: "a path component is not a folder",
    errno.EISDIR: "is a folder",
    errno.EIO: "input/output error",
    errno.ESTALE: "stale file handle (the share went away)",
}


class LocalShare(Share):
    """A share rooted at ``root``; the root folder is created (0700) on the first write."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    # -- helpers -------------------------------------------------------------------------------

    def _error(self, action: str, path: str, exc: OSError) -> ShareError:
        reason = _REASONS.get(exc.errno or 0) or exc.strerror or exc.__class__.__name__
        where = f" {path}" if path else ""
        error = ShareAccessDenied if exc.errno in (errno.EACCES, errno.EPERM) else ShareError
        return error(f"share {self.url}: cannot {action}{where}: {reason}")

    def _full(self, path: str) -> Path:
        """The path of ``path`` under the root, after checking (lstat, never following) that none of
        its existing components is a link; the final open also refuses links (O_NOFOLLOW)."""
        relative = layout.validate_path(path)
        current = str(self.root)  # joined as strings: this runs for every file of an audit
        parts = relative.split("/")
        for depth, part in enumerate(parts, 1):
            current = os.path.join(current, part)
            try:
                info = os.lstat(current)
            except FileNotFoundError:
                break
            except OSError as exc:
                raise self._error("look up", path, exc) from None
            if _is_link(info):
                raise self._link_error("/".join(parts[:depth]), path)
        return self.root / relative

    def _link_error(self, link: str, path: str) -> ShareLinkError:
        return ShareLinkError(
            f"share {self.url}: {link} is a symbolic link or junction; keyfleet never follows a link under "
            f"the share (refusing {path}; run `keyfleet audit`)"
        )

    def _make_folders(self, folder: Path) -> None:
        """Create ``folder`` and missing parents 0700, syncing each new entry into its parent."""
        missing: list[Path] = []
        current = folder
        while not current.is_dir():
            missing.append(current)
            if current.parent == current:
                break
            current = current.parent
        for new in reversed(missing):
            try:
                new.mkdir(mode=_DIR_MODE)
            except FileExistsError:
                continue
            os.chmod(new, _DIR_MODE)  # the umask may have removed bits; it must not add any
            _sync_folder(new.parent)

    def _write_temporary(self, target: Path, data: bytes) -> Path:
        """Write ``data`` to a fresh private temporary file next to ``target``, flushed to disk."""
        self._make_folders(target.parent)
        temp = target.parent / layout.temporary_name(target.name)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), _FILE_MODE)
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, _FILE_MODE)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink_quietly(temp)
            raise
        os.close(fd)
        return temp

    # -- Share -----------------------------------------------------------------------------------

    def read_bytes(self, path: str) -> bytes:
        full = self._full(path)
        try:
            fd = os.open(full, os.O_RDONLY | _NOFOLLOW | getattr(os, "O_BINARY", 0))
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._link_error(path, path) from None
            raise self._error("read", path, exc) from None
        try:
            with os.fdopen(fd, "rb") as handle:
                return handle.read()
        except OSError as exc:
            raise self._error("read", path, exc) from None

    def write_new(self, path: str, data: bytes) -> None:
        target = self._full(path)
        try:
            temp = self._write_temporary(target, data)
            try:
                _link_exclusively(temp, target)
            finally:
                _unlink_quietly(temp)
            _sync_folder(target.parent)
        except FileExistsError:
            raise ShareExistsError(f"share {self.url}: {path} already exists; it is never overwritten") from None
        except OSError as exc:
            raise self._error("write", path, exc) from None

    def replace(self, path: str, data: bytes) -> None:
        target = self._full(path)
        try:
            temp = self._write_temporary(target, data)
            try:
                os.replace(temp, target)
            except BaseException:
                _unlink_quietly(temp)
                raise
            _sync_folder(target.parent)
        except OSError as exc:
            raise self._error("replace", path, exc) from None

    def exists(self, path: str) -> bool:
        full = self._full(path)
        try:
            return stat.S_ISREG(os.lstat(full).st_mode)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise self._error("look up", path, exc) from None

    def folder_state(self) -> FolderState:
        if self.root.is_dir():
            return FolderState.EXISTS
        if os.path.lexists(self.root):
            return FolderState.NOT_FOLDER
        return FolderState.MISSING if self.root.parent.is_dir() else FolderState.NO_PARENT

    def create_folder(self) -> None:
        try:
            self.root.mkdir(mode=_DIR_MODE)
            os.chmod(self.root, _DIR_MODE)
            _sync_folder(self.root.parent)
        except FileExistsError:
            return
        except OSError as exc:
            raise self._error("create", "its folder", exc) from None

    def list_files(self, prefix: str = "") -> Iterator[str]:
        top = self._full(prefix) if prefix else self.root
        relative = prefix.strip("/")
        found = [item.path for item in self._walk(top, relative) if item.kind is ItemKind.FILE]
        yield from sorted(found)

    def scan(self) -> list[ShareItem]:
        return sorted(self._walk(self.root, ""), key=lambda item: item.path)

    def _walk(self, folder: Path, relative: str) -> list[ShareItem]:
        """Items below ``folder`` (share path ``relative``), links reported and never entered."""
        items: list[ShareItem] = []
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return items
            raise self._error("list", relative or "the share", exc) from None
        for entry in entries:
            path = f"{relative}/{entry.name}" if relative else entry.name
            if not relative and entry.name == layout.LOCK_NAME:
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise self._error("list", path, exc) from None
            modified = datetime.fromtimestamp(info.st_mtime, UTC)
            if _is_link(info):
                items.append(ShareItem(path, ItemKind.LINK, modified))
            elif stat.S_ISDIR(info.st_mode):
                items.extend(self._walk(Path(entry.path), path))
            elif layout.is_temporary(entry.name):
                items.append(ShareItem(path, ItemKind.TEMPORARY, modified))
            else:
                items.append(ShareItem(path, ItemKind.FILE, modified))
        return items

    def remove(self, path: str) -> None:
        target = self._full(path)
        try:
            target.unlink()
            _sync_folder(target.parent)
        except OSError as exc:
            raise self._error("remove", path, exc) from None

    def remove_temporary(self, path: str) -> None:
        folder, name = split_temporary(path)
        target = (self._full(folder) if folder else self.root) / name
        try:
            os.unlink(target)  # unlink removes a link itself, never its target
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._error("remove", path, exc) from None

    @contextmanager
    def lock(self, timeout: float = 60.0) -> Iterator[None]:
        """Hold ``<root>/.keyfleet.lock`` exclusively (flock on POSIX, a byte lock on Windows).

        Threads of one process queue on an in-process lock first, so only other processes are
        polled for. The lock works between controllers only where the mounted filesystem forwards
        locks to the server (NFSv4, SMB mounts with locking enabled).
        """
        deadline = time.monotonic() + timeout
        in_process = _process_lock(self.root)
        if not in_process.acquire(timeout=timeout):
            raise self._lock_timeout(timeout)
        try:
            with self._file_lock(deadline, timeout):
                yield
        finally:
            in_process.release()

    def _lock_timeout(self, timeout: float) -> ShareError:
        return ShareError(
            f"share {self.url}: timed out after {timeout:g} s waiting for {layout.LOCK_NAME} "
            "(another keyfleet run is updating the manifest)"
        )

    @contextmanager
    def _file_lock(self, deadline: float, timeout: float) -> Iterator[None]:
        try:
            self._make_folders(self.root)
            fd = os.open(self.root / layout.LOCK_NAME, os.O_RDWR | os.O_CREAT, _FILE_MODE)
        except OSError as exc:
            raise self._error("open the lock file", layout.LOCK_NAME, exc) from None
        try:
            pause = _LOCK_POLL_MIN
            while not _try_lock(fd):
                if time.monotonic() >= deadline:
                    raise self._lock_timeout(timeout)
                time.sleep(pause)
                pause = min(pause * 2, _LOCK_POLL_MAX)
            try:
                yield
            finally:
                _unlock(fd)
        finally:
            os.close(fd)

    def remove_stale_temporaries(self) -> int:
        """Delete every temporary file (never through a link); call it under :meth:`lock`
        (``BackupStore`` does)."""
        removed = 0
        for item in self._walk(self.root, ""):
            if item.kind is not ItemKind.TEMPORARY:
                continue
            try:
                os.unlink(self.root / item.path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise self._error("remove", item.path, exc) from None
            removed += 1
        return removed


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # POSIX; on Windows the lstat walk of ``_full`` stands alone


def _is_link(info: os.stat_result) -> bool:
    """A symbolic link, or on Windows any reparse point (junction, mount point)."""
    return stat.S_ISLNK(info.st_mode) or bool(getattr(info, "st_file_attributes", 0) & FILE_ATTRIBUTE_REPARSE_POINT)


def _process_lock(root: Path) -> threading.Lock:
    """One lock per share folder in this process."""
    key = root.absolute()
    with _process_locks_guard:
        return _process_locks.setdefault(key, threading.Lock())


def _link_exclusively(temp: Path, target: Path) -> None:
    """Give ``temp``'s bytes the name ``target``; FileExistsError if ``target`` exists."""
    if sys.platform == "win32":  # pragma: no cover - Windows rename refuses an existing target
        os.rename(temp, target)
        return
    try:
        os.link(temp, target)
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        # No hard links: claim the name with O_EXCL (fails if it exists), then swap our bytes in.
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE))
        try:
            os.replace(temp, target)
        except BaseException:
            _unlink_quietly(target)
            raise


def _sync_folder(folder: Path) -> None:
    """Make a rename or a new entry in ``folder`` durable (POSIX only; Windows cannot open folders)."""
    if sys.platform == "win32":  # pragma: no cover
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems (e.g. CIFS) refuse fsync on a folder
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":  # pragma: no cover
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlock(fd: int) -> None:
    if sys.platform == "win32":  # pragma: no cover
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
