"""Every use of smbprotocol's undocumented internals, in one place, with a check that they still exist.

smbclient has no call that renames a file through a handle already open (its rename/replace open the
target for FILE_EXECUTE, which a server with ``create mask = 0600`` refuses), so the rename is an SMB2
SET_INFO FileRenameInformation request (MS-SMB2 2.2.39, MS-FSCC 2.4.42.2) sent on the handle's own
connection. ``check_internals`` names what an smbprotocol upgrade changed (tests call it).
"""

from __future__ import annotations

import inspect
import ntpath
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from smbclient._io import SMBRawIO
from smbclient._os import SMBDirEntry, SMBDirEntryInformation, SMBStatResult
from smbprotocol.connection import Connection
from smbprotocol.exceptions import SMBException
from smbprotocol.file_info import FileRenameInformation
from smbprotocol.open import Open, SMB2SetInfoRequest


def send_rename(raw: Any, name: str, *, replace: bool) -> None:
    """Rename the file open as ``raw`` (an ``smbclient.open_file(..., buffering=0)`` object) to ``name``
    in its folder; SMBException with the server's status on refusal."""
    handle = raw.fd  # SMBRawIO.fd: the smbprotocol Open behind the file object
    info = FileRenameInformation()
    info["replace_if_exists"] = replace
    info["file_name"] = ntpath.join(ntpath.dirname(handle.file_name), name)
    request = SMB2SetInfoRequest()
    request["info_type"] = info.INFO_TYPE
    request["file_info_class"] = info.INFO_CLASS
    request["file_id"] = handle.file_id
    request["buffer"] = info
    tree = handle.tree_connect
    sent = handle.connection.send(request, sid=tree.session.session_id, tid=tree.tree_connect_id)
    handle.connection.receive(sent)


def entry_info(entry: Any) -> tuple[int, int, datetime]:
    """The file attributes (MS-FSCC 2.6), reparse tag and last write time of an ``smbclient.scandir``
    entry, as the server listed them (no extra round trip, links not followed). The listing's EaSize
    holds the reparse tag of a reparse point (MS-FSCC 2.4.17, FileIdFullDirectoryInformation)."""
    info = entry.smb_info
    return int(info.file_attributes), int(info.ea_size), info.last_write_time


def connections_alive(pool: Iterable[Any]) -> bool:
    """Whether every connection of an smbclient connection cache still has its socket."""
    return all(getattr(connection.transport, "connected", False) for connection in pool)


def credits_exhausted(exc: BaseException) -> bool:
    """smbprotocol's refusal to send a request the server granted no credits for (``Connection._send``
    raises at once instead of waiting): the server stopped answering, e.g. it died in the middle of a
    write whose requests had used up the credits it granted."""
    return isinstance(exc, SMBException) and "credits are available" in str(exc)


def check_internals() -> list[str]:
    """What the functions above rely on and an smbprotocol upgrade no longer offers (empty: all there)."""
    problems: list[str] = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            problems.append(f"smbprotocol changed: {what} (orchestrator/share/smbadapter.py relies on it)")

    need("self.fd" in inspect.getsource(SMBRawIO.__init__), "smbclient._io.SMBRawIO no longer keeps its Open as .fd")
    need(isinstance(getattr(SMBDirEntry, "smb_info", None), property), "smbclient._os.SMBDirEntry.smb_info is gone")
    need("ea_size" in SMBDirEntryInformation._fields, "smbclient's listing no longer carries ea_size (the reparse tag)")
    need("st_reparse_tag" in SMBStatResult._fields, "smbclient.lstat no longer reports st_reparse_tag")
    open_init = inspect.getsource(Open.__init__)
    for attribute in ("file_name", "file_id", "connection", "tree_connect"):
        need(f"self.{attribute}" in open_init, f"smbprotocol.open.Open no longer sets .{attribute}")
    send = inspect.signature(Connection.send).parameters
    need({"message", "sid", "tid"} <= set(send), "Connection.send(message, sid=, tid=) changed")
    need("request" in inspect.signature(Connection.receive).parameters, "Connection.receive(request) changed")
    need("transport" in inspect.getsource(Connection.__init__), "Connection no longer has .transport")
    need(
        "credits are available" in inspect.getsource(Connection._send), "Connection._send words credit exhaustion anew"
    )
    rename, request = FileRenameInformation(), SMB2SetInfoRequest()
    for structure, fields in (
        (rename, ("replace_if_exists", "file_name")),
        (request, ("info_type", "file_info_class", "file_id", "buffer")),
    ):
        missing = [f for f in fields if f not in structure.fields]
        need(not missing, f"{type(structure).__name__} lost fields {missing}")
    need(hasattr(rename, "INFO_TYPE") and hasattr(rename, "INFO_CLASS"), "FileRenameInformation.INFO_TYPE/INFO_CLASS")
    return problems
