"""The SMB backup share: the Share guarantees over smbprotocol's smbclient, with a private session pool."""

from __future__ import annotations

import errno
import io
import ntpath
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import Any, NoReturn

import smbclient
from smbprotocol.exceptions import SMBAuthenticationError, SMBConnectionClosed, SMBException, SMBOSError
from smbprotocol.header import NtStatus
from smbprotocol.open import CreateOptions, FilePipePrinterAccessMask

from orchestrator.errors import ShareError, ShareExistsError
from orchestrator.secret import Secret, mask
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
from orchestrator.share.smbadapter import connections_alive, credits_exhausted, entry_info, send_rename

_LOCK_POLL = 0.1
_FILE_ATTRIBUTE_DIRECTORY = 0x10
_REPLACE_POLL = 0.01
_REPLACE_PATIENCE = 10.0

_LOGON_STATUSES = frozenset(
    {NtStatus.STATUS_LOGON_FAILURE, NtStatus.STATUS_WRONG_PASSWORD, NtStatus.STATUS_PASSWORD_EXPIRED}
)
_MISSING_SHARE_STATUSES = frozenset(
    {NtStatus.STATUS_BAD_NETWORK_NAME, NtStatus.STATUS_NOT_FOUND, NtStatus.STATUS_OBJECT_PATH_NOT_FOUND}
)
_LOST_STATUSES = frozenset(
    {NtStatus.STATUS_NETWORK_NAME_DELETED, NtStatus.STATUS_USER_SESSION_DELETED, NtStatus.STATUS_FILE_CLOSED}
)
_BUSY_STATUSES = frozenset({NtStatus.STATUS_ACCESS_DENIED, NtStatus.STATUS_SHARING_VIOLATION})
_SMB_ERRORS = (SMBException, OSError, ValueError)
_DELETE_ACCESS = FilePipePrinterAccessMask.DELETE | FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES
_DELETE_OPTIONS = CreateOptions.FILE_DELETE_ON_CLOSE | CreateOptions.FILE_NON_DIRECTORY_FILE
# The temp file is opened for writing and DELETE, so it can be renamed through its own handle.
_TEMP_ACCESS = (
    FilePipePrinterAccessMask.FILE_WRITE_DATA
    | FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES
    | FilePipePrinterAccessMask.FILE_WRITE_ATTRIBUTES
    | FilePipePrinterAccessMask.DELETE
)


def listed_kind(name: str, attributes: int, tag: int | None = None) -> ItemKind | None:
    """What a listed name is, from its file attributes (MS-FSCC 2.6) and reparse tag; None for a folder
    to enter. A reparse point that leads elsewhere (symbolic link, junction, mount point: a Windows
    server lists them so) is a link, never entered, whatever else it is; a deduplicated file is a file."""
    if is_link_reparse(attributes, tag):
        return ItemKind.LINK
    if attributes & _FILE_ATTRIBUTE_DIRECTORY:
        return None
    return ItemKind.TEMPORARY if layout.is_temporary(name) else ItemKind.FILE


def _gone(exc: SMBOSError) -> bool:
    """Whether a failed open means the name is not there: missing, or deleted and waiting for its last
    handle to close (STATUS_DELETE_PENDING, which smbprotocol maps to no errno of its own)."""
    return exc.errno in (errno.ENOENT, errno.ENOTDIR) or exc.ntstatus == NtStatus.STATUS_DELETE_PENDING


def _status(exc: BaseException) -> int | None:
    if isinstance(exc, SMBOSError):
        return int(exc.ntstatus)
    status = getattr(exc, "status", None)  # SMBResponseException
    return status if isinstance(status, int) else None


class SMBShare(Share):
    """A folder on an SMB share (``smb://server:port/share/path``), reached without a mount.

    Each instance has its own connection pool, so two instances are two SMB sessions (as two
    controllers would be). Credentials are passed on every call, so a dropped connection is
    re-established (and re-authenticated) by the next operation.
    """

    def __init__(
        self,
        server: str,
        port: int,
        share: str,
        path: str,
        username: str | None,
        password: Secret | None,
        require_encryption: bool,
        *,
        connect_timeout: float = 10.0,
    ) -> None:
        folder = path.strip("/")
        self.server = server
        self.port = port
        self.share = share
        self.username = username
        self.require_encryption = require_encryption
        self.url = f"smb://{server}:{port}/{share}" + (f"/{folder}" if folder else "")
        self._password = password
        self._connect_timeout = connect_timeout
        self._share_unc = f"\\\\{server}\\{share}"
        self._root = self._share_unc + "".join(f"\\{part}" for part in folder.split("/") if part)
        self._pool: dict[str, Any] = {}
        self._connect_lock = threading.Lock()
        self._connected = False

    def __repr__(self) -> str:
        return f"SMBShare({self.url!r}, user={self.username!r}, encrypt={self.require_encryption})"

    # -- Share interface -------------------------------------------------------------------------

    def read_bytes(self, path: str) -> bytes:
        with (
            self._translate(f"cannot read {path}"),
            smbclient.open_file(self._unc(path), "rb", share_access="rwd", **self._session()) as fd,
        ):
            # a named pipe or device on the server is not opened as a file by Samba or Windows (it is
            # refused, or is a reparse point the path check refuses); the size is what bounds a read. The
            # size the server gave when the file was opened (smbclient seeks to its end without a request)
            size = fd.seek(0, io.SEEK_END)
            if size > read_limit(layout.validate_path(path)):
                raise unusable(self.url, path, f"is {size} bytes, more than any file keyfleet writes")
            fd.seek(0)
            return bytes(fd.read())

    def write_new(self, path: str, data: bytes) -> None:
        self._write(path, data, replace=False)

    def replace(self, path: str, data: bytes) -> None:
        self._write(path, data, replace=True)

    def exists(self, path: str) -> bool:
        with self._translate(f"cannot check {path}"):
            try:
                smbclient.stat(self._unc(path), **self._session())
            except SMBOSError as exc:
                if _gone(exc):
                    return False
                raise
        return True

    def list_files(self, prefix: str = "") -> Iterator[str]:
        found: list[ShareItem] = []
        prefix = prefix.strip("/")
        with self._translate(f"cannot list {prefix or 'the share'}"):
            self._walk(self._unc(prefix) if prefix else self._root, prefix, found)
        return iter(sorted(item.path for item in found if item.kind is ItemKind.FILE))

    def scan(self) -> list[ShareItem]:
        found: list[ShareItem] = []
        with self._translate("cannot list the share"):
            self._walk(self._root, "", found)
        return sorted(found, key=lambda item: item.path)

    def folder_state(self) -> FolderState:
        if self._root == self._share_unc:
            self._session()  # the share itself: connecting checks it exists
            return FolderState.EXISTS
        with self._translate("cannot check its folder"):
            if self._is_folder(self._root):
                return FolderState.EXISTS
            if self._exists(self._root):
                # another first backup may have made it between the two looks: a folder now is a folder
                return FolderState.EXISTS if self._is_folder(self._root) else FolderState.NOT_FOLDER
            return FolderState.MISSING if self._is_folder(ntpath.dirname(self._root)) else FolderState.NO_PARENT

    def create_folder(self) -> None:
        with self._translate("cannot create its folder"):
            try:
                smbclient.mkdir(self._root, **self._session())
            except SMBOSError as exc:
                if exc.errno != errno.EEXIST:
                    raise

    def _exists(self, unc: str) -> bool:
        try:
            smbclient.stat(unc, **self._session())
        except SMBOSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return False
            raise
        return True

    def _is_folder(self, unc: str) -> bool:
        try:
            return stat.S_ISDIR(smbclient.stat(unc, **self._session()).st_mode)
        except SMBOSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return False
            raise

    def remove(self, path: str) -> None:
        with self._translate(f"cannot remove {path}"):
            self._delete(self._unc(path))

    def remove_temporary(self, path: str) -> None:
        folder, name = split_temporary(path)
        with self._translate(f"cannot remove the temporary {path}"):
            try:
                self._delete((self._unc(folder) if folder else self._root) + "\\" + name)
            except SMBOSError as exc:
                if exc.errno != errno.ENOENT:
                    raise

    def lock(self, timeout: float = 60.0) -> AbstractContextManager[None]:
        return self._locked(timeout)

    def remove_stale_temporaries(self) -> int:
        """Delete temporaries nobody has open (a live writer's temp is open without delete sharing)."""
        found: list[ShareItem] = []
        with self._translate("cannot clean temporary files"):
            self._walk(self._root, "", found)
        removed = 0
        for path in (item.path for item in found if item.kind is ItemKind.TEMPORARY):
            with self._translate(f"cannot remove the temporary {path}"):
                try:
                    # Names the server listed (temp names are not valid layout paths), so no validation.
                    self._delete(self._root + "\\" + path.replace("/", "\\"))
                except SMBOSError as exc:
                    if exc.ntstatus == NtStatus.STATUS_SHARING_VIOLATION or exc.errno == errno.ENOENT:
                        continue  # a live writer holds it, or it is already gone
                    raise
            removed += 1
        return removed

    def close(self) -> None:
        with self._connect_lock:
            self._connected = False
            # A connection the server already dropped has nothing left to release.
            smbclient.reset_connection_cache(fail_on_error=False, connection_cache=self._pool)

    # -- internals ---------------------------------------------------------------------------------

    def _unc(self, path: str) -> str:
        """The UNC path of ``path``, after checking that none of its existing components is a reparse
        point (symbolic link, junction): the server or smbprotocol would follow it. Each check is a request:
        callers run it inside ``_translate``."""
        parts = layout.validate_path(path).split("/")
        unc = self._root
        for index, part in enumerate(parts):
            unc += f"\\{part}"
            try:
                # lstat opens with FILE_OPEN_REPARSE_POINT: the link itself, not its target
                info = smbclient.lstat(unc, **self._session())
            except SMBOSError as exc:
                if _gone(exc):
                    break
                raise
            if is_link_reparse(info.st_file_attributes, info.st_reparse_tag):
                link = "/".join(parts[: index + 1])
                raise ShareLinkError(
                    f"share {self.url}: {link} is a symbolic link or junction (a reparse point); keyfleet never "
                    f"follows a link under the share (refusing {path}; run `keyfleet audit`)"
                )
        return self._root + "".join(f"\\{part}" for part in parts)

    def _kwargs(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "password": self._password.reveal() if self._password is not None else None,
            "port": self.port,
            # None rather than False: a server that wants encryption may still turn it on.
            "encrypt": True if self.require_encryption else None,
            "connection_timeout": self._connect_timeout,
            "connection_cache": self._pool,
        }

    def _session(self) -> dict[str, Any]:
        """The smbclient keyword arguments, after a first explicit logon and tree connect.

        Connecting explicitly once gives clear errors (logon failure, missing share) before any file
        operation; later reconnects after a drop happen inside smbclient with the same arguments.
        """
        kwargs = self._kwargs()
        with self._connect_lock:
            if not self._connected:
                try:
                    smbclient.register_session(
                        self.server,
                        username=kwargs["username"],
                        password=kwargs["password"],
                        port=self.port,
                        encrypt=kwargs["encrypt"],
                        connection_timeout=self._connect_timeout,
                        connection_cache=self._pool,
                    )
                    smbclient.stat(self._share_unc, **kwargs)
                except _SMB_ERRORS as exc:
                    self._fail("cannot connect", exc, connecting=True)
                self._connected = True
        return kwargs

    def _write(self, path: str, data: bytes, *, replace: bool) -> None:
        with self._translate(f"cannot write {path}"):  # its checks of the path's folders go to the server too
            target = self._unc(path)
        folder, name = ntpath.split(target)
        temp = ntpath.join(folder, layout.temporary_name(name))
        kwargs = self._session()
        renamed = False
        try:
            with self._translate(f"cannot write {path}"):
                smbclient.makedirs(folder, exist_ok=True, **kwargs)
                raw = smbclient.open_file(
                    temp, "xb", buffering=0, share_access="r", desired_access=_TEMP_ACCESS, **kwargs
                )
                try:
                    view = memoryview(data)
                    while view:
                        view = view[raw.write(view) :]
                    raw.flush()
                    self._rename_open(raw, name, replace=replace, path=path)
                    renamed = True
                finally:
                    if renamed:
                        # the file is in place: a connection lost now does not undo the write, and
                        # the server frees the handles of a dropped connection itself
                        with suppress(OSError, SMBException):
                            raw.close()
                    else:
                        raw.close()
        except BaseException:
            if not renamed:
                self._discard(temp)
            raise

    def _rename_open(self, raw: Any, name: str, *, replace: bool, path: str) -> None:
        """Rename the open temp file in its folder, through its own handle (share/smbadapter.py).

        smbclient.rename/replace first open the target for FILE_EXECUTE, which a server with a
        ``create mask`` of 0600 refuses; renaming through our own handle needs only DELETE.
        """
        deadline = time.monotonic() + _REPLACE_PATIENCE
        while True:
            try:
                send_rename(raw, name, replace=replace)
                return
            except SMBException as exc:
                status = _status(exc)
                if not replace and status == NtStatus.STATUS_OBJECT_NAME_COLLISION:
                    raise ShareExistsError(
                        f"share {self.url}: cannot write {path}: it already exists (never overwritten)"
                    ) from exc
                # Windows semantics (Samba keeps them): a file cannot be renamed over while a reader has
                # it open. Readers hold it for milliseconds, so wait for a gap.
                if not (replace and status in _BUSY_STATUSES and time.monotonic() < deadline):
                    raise
            time.sleep(_REPLACE_POLL)

    def _delete(self, unc: str) -> None:
        """Open for DELETE only, delete-on-close (smbclient.remove also asks FILE_WRITE_ATTRIBUTES,
        which a file owned by someone else refuses; deleting needs only the folder's permission).

        A file another handle holds open without delete sharing raises a sharing violation.
        """
        smbclient.open_file(
            unc,
            "rb",
            buffering=0,
            share_access="rwd",
            desired_access=_DELETE_ACCESS,
            create_options=_DELETE_OPTIONS,
            **self._session(),
        ).close()

    def _discard(self, temp: str) -> None:
        """Best-effort removal of a failed writer's temp file; the original error is what gets raised.

        When the connection is gone the file stays behind and ``remove_stale_temporaries`` takes it.
        """
        with suppress(*_SMB_ERRORS):
            self._delete(temp)

    def _walk(self, folder: str, relative: str, found: list[ShareItem]) -> None:
        """Items below ``folder``; reparse points are reported as links and never entered.

        (Samba follows symlinks inside the share itself and hides those leading out of it, with its
        default ``wide links = no``; a Windows server lists them as reparse points.)
        """
        try:
            with smbclient.scandir(folder, **self._session()) as entries:
                listed = [(entry.name, *entry_info(entry)) for entry in entries]
        except SMBOSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return  # not there (yet), or removed while we walked
            raise
        for name, attributes, tag, modified in listed:
            child = f"{relative}/{name}" if relative else name
            kind = listed_kind(name, attributes, tag)
            if kind is None:
                self._walk(f"{folder}\\{name}", child, found)
            elif child != layout.LOCK_NAME:
                found.append(ShareItem(child, kind, modified))

    @contextmanager
    def _locked(self, timeout: float) -> Iterator[None]:
        """Hold ``.keyfleet.lock`` open with no sharing; the server releases it if we die."""
        lock_path = f"{self._root}\\{layout.LOCK_NAME}"
        deadline = time.monotonic() + timeout
        with self._translate("cannot take the share lock"):
            kwargs = self._session()
            smbclient.makedirs(self._root, exist_ok=True, **kwargs)
            while True:
                try:
                    handle = smbclient.open_file(lock_path, "ab", buffering=0, share_access=None, **kwargs)
                    break
                except SMBOSError as exc:
                    if exc.ntstatus != NtStatus.STATUS_SHARING_VIOLATION:
                        raise
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise ShareError(
                            f"share {self.url}: timed out after {timeout:g} s waiting for "
                            f"{layout.LOCK_NAME} (another keyfleet run is updating the manifest)"
                        ) from None
                    time.sleep(min(_LOCK_POLL, remaining))
        try:
            yield
        except BaseException:
            # If the connection is gone, the server drops the handle (and the lock) with it.
            with suppress(*_SMB_ERRORS):
                handle.close()
            raise
        with self._translate("cannot release the share lock"):
            handle.close()

    @contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        try:
            yield
        except ShareError:
            raise
        except _SMB_ERRORS as exc:
            self._fail(action, exc)

    def _fail(self, action: str, exc: BaseException, *, connecting: bool = False) -> NoReturn:
        if isinstance(exc, ValueError) and not isinstance(exc.__cause__, OSError):
            raise exc  # a programming error, not an SMB failure
        error = ShareAccessDenied if _status(exc) == NtStatus.STATUS_ACCESS_DENIED and not connecting else ShareError
        raise error(f"share {self.url}: {action}: {self._reason(exc, connecting)}") from exc

    def _reason(self, exc: BaseException, connecting: bool) -> str:
        status = _status(exc)
        where = f"{self.server}:{self.port}"
        if isinstance(exc, SMBAuthenticationError) or status in _LOGON_STATUSES:
            user = repr(self.username) if self.username else "(Kerberos ticket)"
            return f"logon failure for user {user} on {where} (wrong user name or password?)"
        if status == NtStatus.STATUS_BAD_NETWORK_NAME or (connecting and status in _MISSING_SHARE_STATUSES):
            return f"share {self.share!r} does not exist on {where}"
        if isinstance(exc, ValueError):  # smbprotocol wraps socket errors: "Failed to connect to ..."
            cause = exc.__cause__
            detail = "timed out" if isinstance(cause, TimeoutError) else getattr(cause, "strerror", None)
            return f"server {where} unreachable ({detail or cause})"
        if status == NtStatus.STATUS_ACCESS_DENIED:
            return "access denied"
        if status == NtStatus.STATUS_DISK_FULL:
            return "the share is full"
        if isinstance(exc, SMBOSError) and exc.errno == errno.ENOENT:
            return "not found"
        if status in _LOST_STATUSES or isinstance(exc, SMBConnectionClosed) or not self._alive():
            return f"connection to {where} lost"
        if credits_exhausted(exc):  # before the connection's reader saw it end: requests got no answers
            return f"connection to {where} lost (the server stopped answering)"
        if connecting and "timeout" in str(exc).lower():
            return f"no SMB answer from {where} within {self._connect_timeout:g}s"
        return mask(str(exc))

    def _alive(self) -> bool:
        return connections_alive(self._pool.values())
