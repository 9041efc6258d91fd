"""Ctrl-C and SIGTERM counted instead of raised, so no interrupt lands in the middle of a run's bookkeeping."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

log = logging.getLogger("keyfleet.interrupts")


@dataclass
class Interrupts:
    """How many interrupts arrived while deferred; ``changed`` is set at each one."""

    count: int = 0
    changed: threading.Event = field(default_factory=threading.Event)

    def __bool__(self) -> bool:
        return self.count > 0

    def _signal(self, signum: int, frame: object) -> None:
        self.count += 1
        self.changed.set()


_active: Interrupts | None = None


@contextmanager
def deferred() -> Iterator[Interrupts]:
    """While active, SIGINT and SIGTERM only increment the yielded counter; whoever runs the work
    polls it (the runner: the first stops starting hosts, the second cancels running ones).

    Nested use shares the outer counter. Outside the main thread, signals cannot be handled: the
    counter stays at zero and interrupts reach the main thread as usual.
    """
    global _active
    if _active is not None:
        yield _active
        return
    interrupts = Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield interrupts
        return
    previous = {sig: signal.signal(sig, interrupts._signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    _active = interrupts
    try:
        yield interrupts
    finally:
        _active = None
        for sig, handler in previous.items():
            signal.signal(sig, handler)
