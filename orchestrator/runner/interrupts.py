"""Ctrl-C and SIGTERM: counted always, raised as KeyboardInterrupt only outside a deferred section.

A run's bookkeeping (workers, manifest, run record, --json) runs deferred, so no interrupt lands in
its middle. Outside, an interrupt raises as usual, and is also counted: CPython drops an exception
raised inside some callbacks (e.g. importlib's module-lock weakref callback), and the next deferred
section still sees that interrupt.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class Interrupts:
    """How many interrupts arrived; ``changed`` is set at each one."""

    count: int = 0
    changed: threading.Event = field(default_factory=threading.Event)
    depth: int = 0  # deferred sections open
    raise_at: int = 0  # inside a deferred section, the count from which an interrupt raises all the same

    def __bool__(self) -> bool:
        return self.count > 0

    def _signal(self, signum: int, frame: object) -> None:
        self.count += 1
        self.changed.set()
        if self.depth == 0 or (self.raise_at and self.count >= self.raise_at):
            raise KeyboardInterrupt


_installed: Interrupts | None = None


def install() -> Interrupts:
    """Handle SIGINT and SIGTERM for the rest of the process (the command line's main thread)."""
    global _installed
    if _installed is None:
        _installed = Interrupts()
        for sig in _SIGNALS:
            signal.signal(sig, _installed._signal)
        sys.unraisablehook = _quiet_interrupts(sys.unraisablehook)
    return _installed


def _quiet_interrupts(default: Callable[[Any], object]) -> Callable[[Any], object]:
    """An unraisable-exception hook that stays silent for the interrupts CPython drops: a Ctrl-C raised
    inside a callback it cannot propagate from (importlib's module-lock weakref callback, during an
    import) would print "Exception ignored in ..." and a traceback. That interrupt was counted, and the
    next deferred section acts on it; everything else goes to the default hook as before."""

    def hook(unraisable: Any) -> object:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            return None
        return default(unraisable)

    return hook


@contextmanager
def deferred() -> Iterator[Interrupts]:
    """While active, an interrupt only increments the yielded counter; whoever runs the work polls it
    (the runner: the first stops starting hosts, the second cancels running ones). Nested sections
    share the counter.

    Without ``install`` (keyfleet used in-process), the outermost section installs the handlers and
    restores the previous ones at its end. Outside the main thread signals cannot be handled: the
    counter stays at zero and interrupts reach the main thread as usual.
    """
    global _installed
    previous = None
    if _installed is None:
        if threading.current_thread() is not threading.main_thread():
            yield Interrupts(depth=1)
            return
        _installed = Interrupts()
        previous = {sig: signal.signal(sig, _installed._signal) for sig in _SIGNALS}
    interrupts = _installed
    interrupts.depth += 1
    try:
        yield interrupts
    finally:
        interrupts.depth -= 1
        if previous is not None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            _installed = None


@contextmanager
def interruptible() -> Iterator[None]:
    """Inside a deferred section, a stretch where an interrupt raises again: a prompt waiting for the
    operator, who must be able to leave it with Ctrl-C (one pressed before it raises at once). Outside a
    deferred section, nothing changes."""
    installed = _installed
    if installed is None or installed.depth == 0:
        yield
        return
    if installed:
        raise KeyboardInterrupt
    saved, installed.depth = installed.depth, 0
    try:
        yield
    finally:
        installed.depth = saved
