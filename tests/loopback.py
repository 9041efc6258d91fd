"""The one allocator of lab loopback addresses: each pytest-xdist worker owns a disjoint /16 of 127.0.0.0/8.

Worker ``gwN`` (``PYTEST_XDIST_WORKER``; a run without xdist is worker 0) owns 127.(128+N).0.0/16 when
it is free (below), so lab fleets of parallel workers never bind the same address:port, and none of them
meets a developer's ``keyfleet lab up`` (127.0.20.1) or ``lab bench`` (127.1.0.1) at their default
addresses. Inside its /16 a worker hands out whole /24s in turn, wrapping around after the last (the
fleets of tests long finished).
Services on kernel-chosen free ports (the hostile servers, smbd, the KDC) stay on 127.0.0.1: the kernel
keeps their ports apart.

Two pytest sessions on one machine (two checkouts, or CI beside a developer) have a worker 0 each: a
worker therefore claims its /16, on first use, with an exclusive lock on ``/tmp/keyfleet-loopback/<N>.lock``
held until the process ends, and takes the next free /16 when another session's worker holds its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import re
import threading
from pathlib import Path

FIRST_OCTET = 128  # worker N owns 127.(FIRST_OCTET + N).0.0/16
MAX_WORKERS = 255 - FIRST_OCTET  # 127.255.0.0/16 stays free: tests put out-of-range plans there


def worker_index(worker: str | None) -> int:
    """0 for a run without xdist (or its controller), N for ``gwN``."""
    if not worker or worker == "master":
        return 0
    match = re.fullmatch(r"gw(\d+)", worker)
    if match is None:
        raise ValueError(f"PYTEST_XDIST_WORKER={worker!r} is not gwN")
    return int(match.group(1))


class LoopbackAllocator:
    """Hands out fresh /24s (or runs of consecutive addresses) of one worker's /16."""

    def __init__(self, index: int | None) -> None:
        """``index``: the /16 to use; None: the one this process claims (``claim``) on first use, so a process
        that only loads the tests (pytest-xdist's controller) holds none."""
        if index is not None and not 0 <= index < MAX_WORKERS:
            raise ValueError(f"worker {index}: loopback ranges exist for {MAX_WORKERS} xdist workers at most")
        self._index = index
        self._next = 0  # the next /24 to hand out, 0..255
        self._lock = threading.Lock()

    @property
    def network(self) -> ipaddress.IPv4Network:
        with self._lock:
            if self._index is None:
                self._index, fd = claim(worker_index(os.environ.get("PYTEST_XDIST_WORKER")))
                _held.append(fd)
        return ipaddress.IPv4Network(f"127.{FIRST_OCTET + self._index}.0.0/16")

    def _take(self, count: int) -> ipaddress.IPv4Network:
        """``count`` consecutive /24s, as one network of their first address (wrapping to the start)."""
        network = self.network
        with self._lock:
            if self._next + count > 256:
                self._next = 0
            first = self._next
            self._next += count
        return ipaddress.IPv4Network(f"{network.network_address + first * 256}/24")

    def subnet(self) -> ipaddress.IPv4Network:
        """A fresh /24: a lab inventory's hosts take its addresses .1, .2, ..."""
        return self._take(1)

    def address(self) -> str:
        """One fresh address (the .1 of a fresh /24)."""
        return str(self.subnet().network_address + 1)

    def run(self, count: int) -> str:
        """The first of ``count`` fresh consecutive addresses (what ``--base-address`` takes)."""
        if not 0 < count <= 65000:
            raise ValueError(f"{count} addresses do not fit in one worker's /16")
        return str(self._take((count + 1) // 256 + 1).network_address + 1)


LOCKS = Path("/tmp/keyfleet-loopback")  # not $TMPDIR: every session on the machine must see the same locks
_held: list[int] = []  # the claimed /16's lock, open for the life of the process


def claim(preferred: int, locks: Path = LOCKS) -> tuple[int, int]:
    """The first /16 index from ``preferred`` on (wrapping) whose lock no other process holds, and the
    open descriptor that holds it (closing it gives the /16 back)."""
    if not locks.is_dir():
        locks.mkdir(exist_ok=True)
        with contextlib.suppress(PermissionError):  # another user made it first
            locks.chmod(0o1777)  # shared by every user's sessions, as /tmp itself
    for index in [*range(preferred, MAX_WORKERS), *range(preferred)]:
        path = locks / f"{index}.lock"
        try:
            try:
                # without O_CREAT first: fs.protected_regular refuses O_CREAT on another user's file here
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)  # flock needs no write access
        except OSError:
            continue  # another user's lock file we may not open: theirs
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return index, fd
    raise RuntimeError(f"all {MAX_WORKERS} loopback /16s are held by other test sessions ({locks})")


ALLOCATOR = LoopbackAllocator(None)
