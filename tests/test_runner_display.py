"""The runner never loses a host or hangs because reporting its outcome failed."""

from __future__ import annotations

import threading

from orchestrator.inventory.model import Role
from orchestrator.runner.pool import Runner, RunnerEvents
from orchestrator.status import Status
from tests.test_audit import host_config


def test_a_failing_display_loses_no_host_and_the_run_ends() -> None:
    hosts = [host_config(f"h{i}", "G", Role.MANAGEMENT_SERVER) for i in range(5)]

    def broken_display(_result: object) -> None:
        raise BrokenPipeError("stderr closed")  # as when the terminal or the pipe reading it went away

    done = threading.Event()
    summary = None

    def run() -> None:
        nonlocal summary
        summary = Runner(lambda ctx: ctx.host.name, forks=2, events=RunnerEvents(on_done=broken_display)).run(hosts)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(10), "the run hung after its display failed"
    assert summary is not None and [r.status for r in summary.results] == [Status.OK] * 5
    assert [r.value for r in summary.results] == [h.name for h in hosts]


def test_a_second_run_in_one_process_waits_instead_of_spinning() -> None:
    """The interrupts event is the process's: the first run leaves it set, the second must not spin on it."""
    import time

    from orchestrator.runner.interrupts import deferred

    hosts = [host_config("slow01", "G", Role.MANAGEMENT_SERVER)]
    with deferred():  # one section around both runs, as a playbook's steps share one
        Runner(lambda ctx: ctx.host.name, forks=1).run(hosts)
        started = time.thread_time()
        summary = Runner(lambda ctx: time.sleep(0.5), forks=1).run(hosts)
        spent = time.thread_time() - started
    assert [r.status for r in summary.results] == [Status.OK]
    assert spent < 0.2, f"the main thread spent {spent:.2f} s of CPU waiting 0.5 s for one host"
