"""``keyfleet lab bench``: measure the controller's capacity against a lab fleet, as ratios.

The fleet runs in a separate process (``keyfleet lab up``) so the measurement is the controller's
own; each host adds a fixed per-request latency, as a real network does. Reported: the speed-up of
``--forks`` workers over one, WS-Man requests and TCP connections per host against their budget,
and the controller's memory growth per host.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrator.commands.lab import plan_hosts
from orchestrator.errors import KeyfleetError
from orchestrator.inventory.loader import load_inventory
from orchestrator.inventory.model import HostConfig
from orchestrator.jobs.backup import BackupPlan, BackupTask, run_backup
from orchestrator.jobs.context import open_store, winrm_passwords
from orchestrator.runner import Status
from orchestrator.secret import Secret
from orchestrator.share.local import LocalShare

REQUEST_BUDGET = 5  # WS-Man requests per host for one backup, auth handshake not counted
_HANDSHAKE = ("auth-handshake", "encryption-init")


@dataclass(frozen=True)
class BenchResult:
    hosts: int
    forks: int
    latency: float
    serial_seconds: float  # forks=1 over the serial sample, scaled to all hosts
    parallel_seconds: float
    speedup: float  # serial / parallel
    efficiency: float  # speedup / min(forks, hosts)
    hosts_per_second: float
    requests_per_host: float
    request_budget_ratio: float  # requests_per_host / REQUEST_BUDGET (<= 1 meets the budget)
    connections_per_host: float
    rss_before_mib: float
    rss_peak_mib: float
    rss_growth_ratio: float  # peak / before
    rss_per_host_kib: float
    controller_cpu_ms_per_host: float  # user+system CPU of this process during the parallel run
    lab_cpu_ms_per_host: float  # CPU of the lab process over both runs, per host backed up
    host_seconds_median: float
    host_seconds_p95: float
    failures: int


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _journal_counts(path: Path, since: float) -> tuple[float, float]:
    requests: Counter[str] = Counter()
    connections: dict[str, set[int]] = defaultdict(set)
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if entry["time"] < since:
            continue
        connections[entry["host"]].add(entry["connection"])
        if entry["operation"] not in _HANDSHAKE:
            requests[entry["host"]] += 1
    hosts = max(len(connections), 1)
    return sum(requests.values()) / hosts, sum(len(c) for c in connections.values()) / hosts


class _LabProcess:
    """``keyfleet lab up`` in a child process, stopped on exit."""

    def __init__(self, workdir: Path, hosts: int, latency: float) -> None:
        self.inventory = workdir / "bench.yml"
        self.state = workdir / "state"
        self._args = [
            sys.executable, "-m", "orchestrator", "lab", "up", "--hosts", str(hosts),
            "--inventory-out", str(self.inventory), "--state-dir", str(self.state),
            "--base-address", "127.0.90.1",
        ]  # fmt: skip
        if latency > 0:
            names = [spec.name for spec in plan_hosts(hosts, "127.0.90.1", "unused", {})]
            self._args += ["--faults", ";".join(f"{name}=latency:{latency}" for name in names)]
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> _LabProcess:
        self._proc = subprocess.Popen(self._args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not self.inventory.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise KeyfleetError(f"the bench lab did not start: {err.strip()[-300:]}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=30)


def _backup(
    hosts: list[HostConfig], workdir: Path, tag: str, forks: int, inv_path: Path
) -> tuple[float, list[float], int]:
    inv = load_inventory(inv_path)
    share = LocalShare(workdir / f"share-{tag}")
    store = open_store(inv, share, sign=True)
    task = BackupTask(
        store=store,
        password=Secret("Bench-Password-1"),
        password_id="bench",
        winrm_passwords=winrm_passwords(hosts),
        run_id=f"bench-{tag}",
    )
    started = time.monotonic()
    summary = run_backup(BackupPlan(hosts), task, forks=forks)
    elapsed = time.monotonic() - started
    failures = sum(1 for r in summary.results if r.status is not Status.OK)
    return elapsed, [r.duration for r in summary.results], failures


def bench(hosts: int = 64, forks: int = 32, latency: float = 0.02, serial_sample: int = 8) -> BenchResult:
    with tempfile.TemporaryDirectory(prefix="keyfleet-bench-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o700)
        with _LabProcess(workdir, hosts, latency) as lab:
            inv = load_inventory(lab.inventory)
            selected = list(inv.hosts.values())
            sample = selected[: min(serial_sample, hosts)]
            serial, _, serial_failures = _backup(sample, workdir, "serial", 1, lab.inventory)
            rss_before = _rss_mib()
            since = time.time()
            cpu_before = _cpu_seconds(resource.RUSAGE_SELF)
            parallel, durations, failures = _backup(selected, workdir, "parallel", forks, lab.inventory)
            controller_cpu = _cpu_seconds(resource.RUSAGE_SELF) - cpu_before
            rss_peak = _rss_mib()
            requests, connections = _journal_counts(lab.state / "journal.jsonl", since)
            children_before = _cpu_seconds(resource.RUSAGE_CHILDREN)
        lab_cpu = _cpu_seconds(resource.RUSAGE_CHILDREN) - children_before
    serial_all = serial / len(sample) * hosts
    speedup = serial_all / parallel if parallel > 0 else 0.0
    ordered = sorted(durations)
    return BenchResult(
        hosts=hosts,
        forks=forks,
        latency=latency,
        serial_seconds=round(serial_all, 3),
        parallel_seconds=round(parallel, 3),
        speedup=round(speedup, 2),
        efficiency=round(speedup / min(forks, hosts), 3),
        hosts_per_second=round(hosts / parallel, 2) if parallel > 0 else 0.0,
        requests_per_host=round(requests, 2),
        request_budget_ratio=round(requests / REQUEST_BUDGET, 2),
        connections_per_host=round(connections, 2),
        rss_before_mib=round(rss_before, 1),
        rss_peak_mib=round(rss_peak, 1),
        rss_growth_ratio=round(rss_peak / rss_before, 3) if rss_before else 0.0,
        rss_per_host_kib=round(max(rss_peak - rss_before, 0) * 1024 / hosts, 1),
        controller_cpu_ms_per_host=round(controller_cpu * 1000 / hosts, 1),
        lab_cpu_ms_per_host=round(lab_cpu * 1000 / (hosts + len(sample)), 1),
        host_seconds_median=round(statistics.median(ordered), 3) if ordered else 0.0,
        host_seconds_p95=round(ordered[int(0.95 * (len(ordered) - 1))], 3) if ordered else 0.0,
        failures=failures + serial_failures,
    )


def as_rows(result: BenchResult) -> list[tuple[str, str]]:
    return [
        ("fleet", f"{result.hosts} hosts, forks {result.forks}, {result.latency * 1000:.0f} ms per request"),
        ("speed-up over forks=1", f"{result.speedup}x (efficiency {result.efficiency:.0%} of min(forks, hosts))"),
        ("throughput", f"{result.hosts_per_second} hosts/s ({result.parallel_seconds}s for the fleet)"),
        ("WS-Man requests per host", f"{result.requests_per_host} = {result.request_budget_ratio} x budget of 5"),
        ("TCP connections per host", f"{result.connections_per_host}"),
        ("controller memory", f"peak/before {result.rss_growth_ratio} ({result.rss_per_host_kib} KiB per host)"),
        (
            "CPU per host",
            f"controller {result.controller_cpu_ms_per_host} ms, lab {result.lab_cpu_ms_per_host} ms "
            f"({os.cpu_count()} cores shared by both)",
        ),
        ("per-host time", f"median {result.host_seconds_median}s, p95 {result.host_seconds_p95}s"),
        ("failures", str(result.failures)),
    ]


def as_json(result: BenchResult) -> dict[str, object]:
    return asdict(result)
