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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from orchestrator.errors import ShareError, ShareExistsError
from orchestrator.privatefile import create_private, write_private
from orchestrator.share import layout
from orchestrator.share.base import (
    FolderState,
    ItemKind,
    Share,
    ShareAccessDenied,
    ShareItem,
    ShareLinkError,
    is_link_reparse,
    read_limit,
    split_temporary,
    unusable,
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
    """A share rooted at ``root``; the root folder is created (0700) on the first write.

    Every path under the root is reached from an open folder, one component at a time, without
    following a link (``openat`` with O_NOFOLLOW|O_DIRECTORY, then ``*at`` calls relative to the last
    folder): a folder swapped for a symbolic link after a check cannot redirect a read, write, rename,
    delete or listing. Where the OS has no ``openat`` (Windows), each component is checked with
    ``lstat`` before use instead (a junction is a reparse point there).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    # -- helpers -------------------------------------------------------------------------------

    def _error(self, action: str, path: str, exc: OSError) -> ShareError:
        reason = _REASONS.get(exc.errno or 0) or exc.strerror or exc.__class__.__name__
        where = f" {path}" if path else ""
        error = ShareAccessDenied if exc.errno in (errno.EACCES, errno.EPERM) else ShareError
        return error(f"share {self.url}: cannot {action}{where}: {reason}")

    def _link_error(self, link: str, path: str) -> ShareLinkError:
        return ShareLinkError(
            f"share {self.url}: {link} is a symbolic link or junction; keyfleet never follows a link under "
            f"the share (refusing {path}; run `keyfleet audit`)"
        )

    @contextmanager
    def _folder(self, relative: str, *, create: bool = False, path: str = "") -> Iterator[_Folder]:
        """The share folder ``relative`` ("" for the root), opened without following a link; ``create``
        makes missing folders (0700, each synced into its parent). FileNotFoundError when it is missing
        and not created; ShareLinkError when a component is a link; other OSErrors as raised."""
        path = path or relative or "the share"
        if create:
            self._make_root()
        folder = _Folder("", self._open_root(), str(self.root))
        try:
            for part in relative.split("/") if relative else []:
                folder = self._enter(folder, part, create, path)
            yield folder
        finally:
            folder.close()

    def _open_root(self) -> int | None:
        return os.open(self.root, os.O_RDONLY | _DIRECTORY) if _FD_RELATIVE else None

    def _enter(self, parent: _Folder, name: str, create: bool, path: str) -> _Folder:
        """The sub-folder ``name`` of ``parent`` (which is closed)."""
        relative = f"{parent.path}/{name}" if parent.path else name
        try:
            try:
                fd = self._open_child(parent, name, relative, path)
            except FileNotFoundError:
                if not create:
                    raise
                with suppress(FileExistsError):
                    os.mkdir(parent.at(name), _DIR_MODE, dir_fd=parent.fd)
                    parent.sync()
                fd = self._open_child(parent, name, relative, path)
                if fd is not None:
                    os.fchmod(fd, _DIR_MODE)  # the umask may have removed bits; it must not add any
            return _Folder(relative, fd, os.path.join(parent.full, name))
        finally:
            parent.close()

    def _open_child(self, parent: _Folder, name: str, relative: str, path: str) -> int | None:
        if parent.fd is None:  # pragma: no cover - Windows: lstat, then use the path
            if _is_link(os.lstat(parent.at(name))):
                raise self._link_error(relative, path)
            if not os.path.isdir(parent.at(name)):
                raise NotADirectoryError(errno.ENOTDIR, "not a folder", relative)
            return None
        try:
            return os.open(name, os.O_RDONLY | _DIRECTORY | _NOFOLLOW, dir_fd=parent.fd)
        except (NotADirectoryError, OSError) as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP) and _is_link(
                os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
            ):
                raise self._link_error(relative, path) from None
            raise

    def _make_root(self) -> None:
        """Create the root folder and missing parents 0700 (the root itself is the user's path, not the share's)."""
        missing: list[Path] = []
        current = self.root
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

    def _final(self, folder: _Folder, name: str, path: str) -> os.stat_result | None:
        """What is at ``name`` in ``folder``, never following it; None when nothing; a link raises."""
        try:
            info = os.stat(folder.at(name), dir_fd=folder.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if _is_link(info):
            raise self._link_error(path, path)
        return info

    # -- Share -----------------------------------------------------------------------------------

    def read_bytes(self, path: str) -> bytes:
        relative = layout.validate_path(path)
        folder_path, _, name = relative.rpartition("/")
        try:
            with self._folder(folder_path, path=path) as folder:
                # O_NONBLOCK: opening a named pipe someone left on the share must not wait for a writer
                flags = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_BINARY", 0)
                try:
                    fd = os.open(folder.at(name), flags | _NONBLOCK, dir_fd=folder.fd)
                except BlockingIOError:  # a lease another process holds (NFS, Samba's kernel oplocks)
                    info = self._final(folder, name, path)
                    if info is None or not stat.S_ISREG(info.st_mode):
                        raise
                    fd = os.open(folder.at(name), flags, dir_fd=folder.fd)  # a file: wait as a plain open
            with os.fdopen(fd, "rb") as handle:
                info = os.fstat(handle.fileno())
                if not stat.S_ISREG(info.st_mode):
                    raise unusable(self.url, path, "is not a regular file")
                if info.st_size > read_limit(relative):
                    raise unusable(self.url, path, f"is {info.st_size} bytes, more than any file keyfleet writes")
                if _NONBLOCK:
                    os.set_blocking(fd, True)
                data = handle.read(info.st_size + 1)
                if len(data) > info.st_size:  # keyfleet never grows a file in place
                    raise unusable(self.url, path, "grew while it was read")
                return data
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._link_error(path, path) from None
            raise self._error("read", path, exc) from None

    def write_new(self, path: str, data: bytes) -> None:
        relative = layout.validate_path(path)
        folder_path, _, name = relative.rpartition("/")
        try:
            with self._folder(folder_path, create=True, path=path) as folder:
                if not create_private(folder.at(name), data, dir_fd=folder.fd):
                    raise ShareExistsError(f"share {self.url}: {path} already exists; it is never overwritten")
                folder.sync()
        except OSError as exc:
            raise self._error("write", path, exc) from None

    def replace(self, path: str, data: bytes) -> None:
        relative = layout.validate_path(path)
        folder_path, _, name = relative.rpartition("/")
        try:
            with self._folder(folder_path, create=True, path=path) as folder:
                self._final(folder, name, path)
                write_private(folder.at(name), data, dir_fd=folder.fd)  # a link at the name is replaced, not followed
                folder.sync()
        except OSError as exc:
            raise self._error("replace", path, exc) from None

    def exists(self, path: str) -> bool:
        relative = layout.validate_path(path)
        folder_path, _, name = relative.rpartition("/")
        try:
            with self._folder(folder_path, path=path) as folder:
                info = self._final(folder, name, path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise self._error("look up", path, exc) from None
        return info is not None and stat.S_ISREG(info.st_mode)

    def folder_state(self) -> FolderState:
        if self.root.is_dir():
            return FolderState.EXISTS
        if os.path.lexists(self.root):
            # another first backup may have made it between the two looks: a folder now is a folder
            return FolderState.EXISTS if self.root.is_dir() else FolderState.NOT_FOLDER
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
        relative = layout.validate_path(prefix) if prefix.strip("/") else ""
        found = [item.path for item in self._walk_from(relative) if item.kind is ItemKind.FILE]
        yield from sorted(found)

    def scan(self) -> list[ShareItem]:
        return sorted(self._walk_from(""), key=lambda item: item.path)

    def _walk_from(self, relative: str) -> list[ShareItem]:
        try:
            with self._folder(relative) as folder:
                return self._walk(folder)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise self._error("list", relative or "the share", exc) from None

    def _walk(self, folder: _Folder) -> list[ShareItem]:
        """Items below ``folder``, links reported and never entered (sub-folders opened relative to it)."""
        items: list[ShareItem] = []
        with os.scandir(folder.fd if folder.fd is not None else folder.full) as listing:
            entries = [(entry.name, entry.stat(follow_symlinks=False)) for entry in _existing(listing)]
        for name, info in entries:
            path = f"{folder.path}/{name}" if folder.path else name
            if not folder.path and name == layout.LOCK_NAME:
                continue
            modified = datetime.fromtimestamp(info.st_mtime, UTC)
            if _is_link(info):
                items.append(ShareItem(path, ItemKind.LINK, modified))
            elif stat.S_ISDIR(info.st_mode):
                try:
                    child = self._enter(folder.borrow(), name, False, path)
                except ShareLinkError:  # swapped for a link since the listing
                    items.append(ShareItem(path, ItemKind.LINK, modified))
                    continue
                except FileNotFoundError:
                    continue
                try:
                    items.extend(self._walk(child))
                finally:
                    child.close()
            elif layout.is_temporary(name):
                items.append(ShareItem(path, ItemKind.TEMPORARY, modified))
            else:
                items.append(ShareItem(path, ItemKind.FILE, modified))
        return items

    def remove(self, path: str) -> None:
        relative = layout.validate_path(path)
        folder_path, _, name = relative.rpartition("/")
        try:
            with self._folder(folder_path, path=path) as folder:
                self._final(folder, name, path)
                os.unlink(folder.at(name), dir_fd=folder.fd)  # unlinkat never follows the last component
                folder.sync()
        except OSError as exc:
            raise self._error("remove", path, exc) from None

    def remove_temporary(self, path: str) -> None:
        folder_path, name = split_temporary(path)
        try:
            with self._folder(folder_path, path=path) as folder:
                os.unlink(folder.at(name), dir_fd=folder.fd)  # unlink removes a link itself, never its target
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
            with self._folder("", create=True) as root:
                fd = os.open(root.at(layout.LOCK_NAME), os.O_RDWR | os.O_CREAT | _NOFOLLOW, _FILE_MODE, dir_fd=root.fd)
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
        temporaries = [item.path for item in self._walk_from("") if item.kind is ItemKind.TEMPORARY]
        for path in temporaries:
            self.remove_temporary(path)
        return len(temporaries)


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
# openat and friends: every POSIX controller; not Windows, where each component is checked with lstat.
# (os.replace takes src_dir_fd/dst_dir_fd like os.rename, but only os.rename is listed in supports_dir_fd.)
_FD_RELATIVE = {os.open, os.stat, os.mkdir, os.unlink, os.link, os.rename} <= os.supports_dir_fd and (
    os.scandir in os.supports_fd
)


@dataclass
class _Folder:
    """An open folder of the share: ``fd`` (every name used relative to it) or, without openat,
    ``None`` and its lstat-checked ``full`` path."""

    path: str  # share-relative, "" for the root
    fd: int | None
    full: str
    owned: bool = True

    def at(self, name: str) -> str:
        """The argument naming ``name`` in this folder, for a call given ``dir_fd=self.fd``."""
        return name if self.fd is not None else os.path.join(self.full, name)

    def borrow(self) -> _Folder:
        """The same folder, not closed by whoever it is handed to."""
        return _Folder(self.path, self.fd, self.full, owned=False)

    def sync(self) -> None:
        """Make a rename or new entry in this folder durable (Windows cannot open folders)."""
        if self.fd is not None:
            _fsync_folder(self.fd)

    def close(self) -> None:
        if self.fd is not None and self.owned:
            # not owned first: a Ctrl-C between the two lines leaks the descriptor, never closes it twice
            # (a second close could end a descriptor another thread has opened under the same number since)
            self.owned = False
            os.close(self.fd)


def _existing(listing: Iterator[os.DirEntry[str]]) -> Iterator[os.DirEntry[str]]:
    """Entries whose status can still be read (a file removed meanwhile is skipped)."""
    for entry in listing:
        try:
            entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        yield entry


def _is_link(info: os.stat_result) -> bool:
    """A symbolic link, or on Windows a reparse point that leads elsewhere (junction, mount point)."""
    attributes = getattr(info, "st_file_attributes", 0)
    return stat.S_ISLNK(info.st_mode) or is_link_reparse(attributes, getattr(info, "st_reparse_tag", None))


def _process_lock(root: Path) -> threading.Lock:
    """One lock per share folder in this process."""
    key = root.absolute()
    with _process_locks_guard:
        return _process_locks.setdefault(key, threading.Lock())


def _sync_folder(folder: Path) -> None:
    """Make a new entry in ``folder`` durable (POSIX only; Windows cannot open folders)."""
    if sys.platform == "win32":  # pragma: no cover
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        _fsync_folder(fd)
    finally:
        os.close(fd)


def _fsync_folder(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems (e.g. CIFS) refuse fsync on a folder
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise


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
