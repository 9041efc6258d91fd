"""The fleet runner: a bounded pool of workers, a deadline per host, retries, and Ctrl-C handling.

It knows nothing about keys: it runs a task per host and returns one ``HostResult`` per host.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from orchestrator.errors import ErrorKind, HostFailure
from orchestrator.inventory.model import HostConfig
from orchestrator.runner.interrupts import deferred
from orchestrator.secret import mask
from orchestrator.status import Status

log = logging.getLogger("keyfleet.runner")

T = TypeVar("T")


@dataclass
class HostContext:
    """What a task gets besides its host: the deadline and the cancel flag it must honour."""

    host: HostConfig
    deadline: float  # time.monotonic()
    cancel: threading.Event
    attempt: int = 1
    report: Callable[[str], None] = field(default=lambda _state: None)
    warning: str | None = None  # something the operator should know about a host that succeeded


@dataclass
class HostResult(Generic[T]):
    host: HostConfig
    status: Status
    value: T | None = None
    kind: ErrorKind | None = None
    message: str = ""
    attempts: int = 0
    duration: float = 0.0
    scsm_version: str | None = None  # reported by a server before it failed
    warning: str | None = None  # set by the task on success (e.g. a temporary folder left behind)


@dataclass
class RunnerEvents:
    """Callbacks for the console; every one is optional and called from worker threads."""

    on_state: Callable[[str, str], None] = field(default=lambda _host, _state: None)
    on_done: Callable[[HostResult[Any]], None] = field(default=lambda _result: None)


@dataclass
class RunSummary(Generic[T]):
    results: list[HostResult[T]]
    interrupted: bool = False


class Runner(Generic[T]):
    """Run ``task(ctx)`` for every host, at most ``forks`` at once.

    ``task`` raises HostFailure for a failure; transient kinds are retried with backoff while the
    host's deadline allows. The first Ctrl-C stops starting hosts and lets running ones finish;
    the second cancels running ones at once. Every host ends with a result.
    """

    def __init__(
        self,
        task: Callable[[HostContext], T],
        *,
        forks: int = 32,
        events: RunnerEvents | None = None,
        backoff: float = 0.5,
    ) -> None:
        if forks < 1:
            raise ValueError("forks must be at least 1")
        self._task = task
        self._forks = forks
        self._events = events or RunnerEvents()
        self._backoff = backoff
        self._stop_starting = threading.Event()
        self._cancel = threading.Event()

    def run(self, hosts: list[HostConfig]) -> RunSummary[T]:
        results: dict[str, HostResult[T]] = {}
        lock = threading.Lock()
        pending: queue.SimpleQueue[HostConfig] = queue.SimpleQueue()
        for host in hosts:
            pending.put(host)
        finished = threading.Event()
        wake = finished  # until the deferred section below: then its interrupts event
        remaining = [len(hosts)]

        def record(result: HostResult[T]) -> None:
            with lock:
                results[result.host.name] = result
            try:
                self._events.on_done(result)  # before ``finished``: the last host is shown before run() returns
            except Exception:  # a display that fails (a closed stderr) must not lose the host or hang the run
                log.debug("%s: reporting the outcome failed\n%s", result.host.name, traceback.format_exc())
            finally:
                with lock:
                    remaining[0] -= 1
                    if remaining[0] == 0:
                        finished.set()
                        wake.set()  # the main loop waits on interrupts and completion alike

        def worker() -> None:
            while True:
                try:
                    host = pending.get_nowait()
                except queue.Empty:
                    return
                if self._stop_starting.is_set():
                    record(HostResult(host, Status.SKIPPED, kind=ErrorKind.INTERRUPTED, message="not started"))
                    continue
                record(self._run_host(host))

        if not hosts:
            return RunSummary([], False)
        threads = [
            threading.Thread(target=worker, name=f"keyfleet-worker-{i}", daemon=True)
            for i in range(min(self._forks, len(hosts)))
        ]
        with deferred() as interrupts:
            wake = interrupts.changed
            if interrupts:  # pressed before the run began (a share lock, the lab starting): no host starts
                self._stop_starting.set()
            seen = 0
            started = 0
            while not finished.is_set():
                if started < len(threads):  # started between polls: an interrupt meanwhile is seen at once
                    threads[started].start()
                    started += 1
                else:
                    # woken by an interrupt or by the last host; the timeout is only a safety net
                    interrupts.changed.wait(0.1)
                if interrupts.count == seen:
                    # set by a finishing host, or left set by an earlier run of this process: without
                    # clearing it the wait above would return at once and the loop would spin
                    interrupts.changed.clear()
                    continue
                seen = interrupts.count
                interrupts.changed.clear()
                if seen >= 2:
                    log.warning("second interrupt: cancelling running hosts")
                    self._cancel.set()
                    break
                log.warning("interrupt: no new hosts will start; running hosts finish (Ctrl-C again: abort)")
                self._stop_starting.set()
            interrupted = bool(interrupts)
            if self._cancel.is_set():
                self._stop_starting.set()
                while True:  # hosts no worker took (some workers may never have started)
                    try:
                        host = pending.get_nowait()
                    except queue.Empty:
                        break
                    record(HostResult(host, Status.SKIPPED, kind=ErrorKind.INTERRUPTED, message="not started"))
                # give cancel-aware tasks a moment to record their own outcome
                finished.wait(2.0)
        with lock:
            ordered = [
                results.get(h.name)
                or HostResult(h, Status.FAILED, kind=ErrorKind.INTERRUPTED, message="aborted while running")
                for h in hosts
            ]
        return RunSummary(ordered, interrupted)

    def _run_host(self, host: HostConfig) -> HostResult[T]:
        started = time.monotonic()
        deadline = started + host.host_timeout
        attempt = 0
        while True:
            attempt += 1
            ctx = HostContext(
                host,
                deadline,
                self._cancel,
                attempt,
                report=lambda state: self._events.on_state(host.name, state),
            )
            self._events.on_state(host.name, "running" if attempt == 1 else f"retry {attempt - 1}")
            try:
                value = self._task(ctx)
                return HostResult(
                    host,
                    Status.OK,
                    value,
                    attempts=attempt,
                    duration=time.monotonic() - started,
                    warning=mask(ctx.warning) if ctx.warning else None,
                )
            except HostFailure as failure:
                retry_in = self._backoff * (2 ** (attempt - 1)) * (0.75 + random.random() / 2)
                can_retry = (
                    failure.kind.transient
                    and attempt <= host.retries
                    and not self._stop_starting.is_set()
                    and time.monotonic() + retry_in < deadline - 1
                )
                if not can_retry:
                    return HostResult(
                        host,
                        Status.FAILED,
                        kind=failure.kind,
                        message=failure.reason,  # masked, one line (HostFailure)
                        attempts=attempt,
                        duration=time.monotonic() - started,
                        scsm_version=failure.scsm_version,
                    )
                log.info("%s: %s: %s; retrying in %.1fs", host.name, failure.kind, failure.reason, retry_in)
                if self._cancel.wait(retry_in):
                    return HostResult(
                        host,
                        Status.FAILED,
                        kind=ErrorKind.INTERRUPTED,
                        message="cancelled during retry backoff",
                        attempts=attempt,
                        duration=time.monotonic() - started,
                    )
            except Exception as exc:  # a bug must not stop other hosts: record it, log the traceback
                log.debug("%s: unexpected error\n%s", host.name, traceback.format_exc())
                return HostResult(
                    host,
                    Status.FAILED,
                    kind=ErrorKind.INTERNAL,
                    message=mask(f"{type(exc).__name__}: {exc}")[:300],
                    attempts=attempt,
                    duration=time.monotonic() - started,
                )
