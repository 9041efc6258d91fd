"""Files only their owner may read (0600), written atomically: secrets, keys, lab state, the local share's files.

The one writer of such files: a flushed temporary file ``.<name>.tmp-<random>`` beside the target, then
a rename (replace) or a hard link (create, never overwriting). With ``dir_fd`` the name is relative to
that open folder, so a folder swapped for a symbolic link after it was opened is never followed, and
the temporary and final names are opened without following a link (O_NOFOLLOW).
"""

from __future__ import annotations

import errno
import os
import secrets
import sys
from pathlib import Path

_FILE_MODE = 0o600
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# link(2) is not offered by every mounted filesystem (FAT, some CIFS mounts): claim the name instead.
_NO_LINK = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV}


def temporary_name(name: str) -> str:
    """The name a writer uses before the final rename: ``.<name>.tmp-<random>``."""
    return f".{name}.tmp-{secrets.token_hex(6)}"


def _temporary_copy(path: str, data: bytes, dir_fd: int | None) -> str:
    """A flushed 0600 temporary file holding ``data`` beside ``path``; the caller moves or removes it."""
    folder, name = os.path.split(path)
    temp = os.path.join(folder, temporary_name(name))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_BINARY", 0)
    fd = os.open(temp, flags, _FILE_MODE, dir_fd=dir_fd)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, _FILE_MODE)  # the umask may have removed bits; it must not add any
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(temp, dir_fd)
        raise
    os.close(fd)
    return temp


def write_private(path: Path | str, data: bytes, *, dir_fd: int | None = None) -> None:
    """Replace ``path`` with ``data`` atomically: a reader sees the old or the new bytes."""
    path = os.fspath(path)
    temp = _temporary_copy(path, data, dir_fd)
    try:
        os.replace(temp, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        _unlink_quietly(temp, dir_fd)
        raise


def create_private(path: Path | str, data: bytes, *, dir_fd: int | None = None) -> bool:
    """Create ``path`` holding ``data`` unless it exists (False then); of two creators one wins."""
    path = os.fspath(path)
    temp = _temporary_copy(path, data, dir_fd)
    try:
        _link_exclusively(temp, path, dir_fd)
    except FileExistsError:
        return False
    finally:
        _unlink_quietly(temp, dir_fd)
    return True


def _link_exclusively(temp: str, target: str, dir_fd: int | None) -> None:
    """Give ``temp``'s bytes the name ``target``; FileExistsError if ``target`` exists."""
    if sys.platform == "win32":  # pragma: no cover - Windows rename refuses an existing target
        os.rename(temp, target)
        return
    try:
        os.link(temp, target, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        # No hard links: claim the name with O_EXCL (fails if it exists), then swap our bytes in.
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, _FILE_MODE, dir_fd=dir_fd))
        try:
            os.replace(temp, target, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            _unlink_quietly(target, dir_fd)
            raise


def _unlink_quietly(path: str, dir_fd: int | None) -> None:
    try:
        os.unlink(path, dir_fd=dir_fd)
    except FileNotFoundError:
        return
