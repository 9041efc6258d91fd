"""The lab journal: one record per HTTP request a lab host answered (never stdin content or passwords)."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

# Operations recorded; "auth-handshake" is an NTLM/Basic step, "encryption-init" pywinrm's empty POST,
# "rejected" a request refused before any WinRS operation (unencrypted, too large, unparsable).
OPERATIONS = (
    "auth-handshake",
    "encryption-init",
    "Create",
    "Command",
    "Send",
    "Receive",
    "Signal",
    "Delete",
    "unknown",
    "rejected",
)


@dataclass(frozen=True)
class JournalEntry:
    time: float  # seconds since the epoch
    host: str
    connection: int  # id of the TCP connection, unique within a fleet
    operation: str  # one of OPERATIONS
    status: int  # HTTP status answered (0: connection dropped without a reply)
    user: str | None = None
    command_line: str | None = None  # Command only
    stdin_bytes: int | None = None  # Send only
    options: str | None = None  # Create and Command: the WinRS options, e.g. "WINRS_CODEPAGE=65001"
    request: str | None = None  # Send: the JSON request line a helper got (its script as a hash)
    detail: str | None = None  # a fault or rejection reason
    auth: str | None = None  # how the request's user logged on: kerberos, ntlm or basic


class Journal:
    """Thread-safe, in memory, and appended as JSON lines to ``path`` when given."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: list[JournalEntry] = []
        self._file: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # private, like every lab file
            if hasattr(os, "fchmod"):
                os.fchmod(fd, 0o600)  # an older journal may have been created wider
            self._file = os.fdopen(fd, "a", encoding="utf-8")

    def record(self, host: str, connection: int, operation: str, status: int, **fields: object) -> JournalEntry:
        entry = JournalEntry(time.time(), host, connection, operation, status, **fields)  # type: ignore[arg-type]
        with self._lock:
            self._entries.append(entry)
            if self._file is not None:
                self._file.write(json.dumps(asdict(entry), separators=(",", ":")) + "\n")
                self._file.flush()
        return entry

    def entries(self, host: str | None = None, operation: str | None = None) -> list[JournalEntry]:
        with self._lock:
            return [
                e
                for e in self._entries
                if (host is None or e.host == host) and (operation is None or e.operation == operation)
            ]

    def connections(self, host: str) -> set[int]:
        """Ids of the TCP connections that carried at least one request to ``host``."""
        return {e.connection for e in self.entries(host)}

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    @staticmethod
    def read(path: Path) -> list[JournalEntry]:
        """Entries of a journal file written by another process (e.g. ``keyfleet lab up``)."""
        with open(path, encoding="utf-8") as fh:
            return [JournalEntry(**json.loads(line)) for line in fh if line.strip()]
