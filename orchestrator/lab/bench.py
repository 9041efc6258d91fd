"""``keyfleet lab bench``: time whole ``keyfleet backup`` processes against a lab fleet, honestly.

The fleet runs in its own process (``keyfleet lab up``), each request delayed by ``--latency`` as a
network would. Three whole processes are timed from start to exit, share pre-check, run record and
output included: a ``--forks 1`` backup of a sample (its median per-host time is the per-host chain),
the ``--forks N`` backup of every host, and a hand-written pywinrm thread pool running ``hostname``
on the same hosts (``orchestrator.lab.baseline``), the baseline any scripter would write. Reported
against the ideal, ``ceil(hosts / forks) x chain``, and the CPU floor, (controller + lab CPU) / cores;
the baseline gets the same ratio against its own floor, which shows what the stack itself reaches.
"""

from __future__ import annotations

import compileall
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import orchestrator
from orchestrator.errors import KeyfleetError
from orchestrator.inventory.loader import load_inventory
from orchestrator.jobs.context import winrm_passwords
from orchestrator.lab.plan import plan_hosts

REQUEST_BUDGET = 5  # WS-Man requests per host for one backup, auth handshake not counted
SAMPLE_HOSTS = 8  # hosts of the --forks 1 run that measures the per-host chain
_HANDSHAKE = ("auth-handshake", "encryption-init")
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcessRun:
    """One timed process: wall seconds, CPU seconds (user + system), peak RSS, exit code, stdout."""

    wall: float
    cpu: float
    peak_rss_mib: float
    returncode: int
    stdout: str


@dataclass(frozen=True)
class BenchResult:
    hosts: int
    forks: int
    latency: float
    kdf: str  # how the lab seals key files: "default" (scrypt 2^14) or "cheap" (scrypt 2^4)
    cores: int
    wall_seconds: float  # the whole `keyfleet backup --forks N` process
    chain_seconds: float  # median per-host time at --forks 1
    ideal_seconds: float  # ceil(hosts / forks) x chain
    floor_seconds: float  # (controller CPU + lab CPU) / cores
    ratio: float  # wall / max(ideal, floor): 1.0 is as fast as this machine and the latency allow
    controller_cpu_ms_per_host: float  # the whole process, start-up included
    controller_peak_rss_mib: float
    requests_per_host: float
    connections_per_host: float
    lab_cpu_ms_per_host: float  # during the --forks N run only, not the lab's start-up
    lab_rss_mib: float  # after the run
    lab_rss_growth_mib: float  # during the run
    baseline_wall_seconds: float  # the pywinrm pool running `hostname`
    baseline_cpu_ms_per_host: float
    baseline_peak_rss_mib: float
    baseline_floor_seconds: float  # (baseline CPU + lab CPU during the baseline) / cores
    baseline_ratio: float  # baseline wall / max(ideal, baseline floor): the same measure, for plain pywinrm
    versus_baseline: float  # wall / baseline wall
    failures: int  # hosts not backed up, plus hosts the baseline could not reach


_PROCESS_LIMIT = 1800.0  # seconds: far above a 1,000-host backup's 15 s


def _run_process(argv: list[str], workdir: Path, name: str) -> ProcessRun:
    """Run ``argv`` to its end; wait4 gives exactly its own CPU and peak RSS."""
    out_path = workdir / f"{name}.out"
    with open(out_path, "wb") as out, open(workdir / f"{name}.err", "wb") as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        stopper = threading.Timer(_PROCESS_LIMIT, proc.kill)  # a hung run ends the bench, not the machine's day
        stopper.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            stopper.cancel()
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
    return ProcessRun(
        wall=wall,
        cpu=usage.ru_utime + usage.ru_stime,
        peak_rss_mib=usage.ru_maxrss / 1024,
        returncode=proc.returncode,
        stdout=out_path.read_text(errors="replace"),
    )


class LabProcess:
    """``keyfleet lab up`` in a child process, stopped on exit; its CPU and RSS read from /proc."""

    def __init__(self, workdir: Path, hosts: int, latency: float, base_address: str, kdf: str) -> None:
        self.inventory = workdir / "bench.yml"
        self.state = workdir / "state"
        self._errors = workdir / "lab.err"
        self._args = [
            sys.executable, "-m", "orchestrator", "lab", "up", "--hosts", str(hosts),
            "--inventory-out", str(self.inventory), "--state-dir", str(self.state),
            "--base-address", base_address, "--kdf", kdf,
        ]  # fmt: skip
        if latency > 0:
            names = [spec.name for spec in plan_hosts(hosts, base_address, "unused", {})]
            self._args += ["--faults", ";".join(f"{name}=latency:{latency}" for name in names)]
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LabProcess:
        # a file, not a pipe nobody reads: `lab up` writes a line per host, which would fill a pipe and stall it
        with self._errors.open("wb") as errors:
            self._proc = subprocess.Popen(self._args, stdout=subprocess.DEVNULL, stderr=errors)
        deadline = time.monotonic() + 120
        while not self.inventory.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                err = self._errors.read_bytes()[-2000:].decode(errors="replace")
                raise KeyfleetError(f"the bench lab did not start: {err.strip()[-300:]}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # a large fleet stops host by host; its state is thrown away
                self._proc.kill()
                self._proc.wait(timeout=30)

    def cpu(self) -> float:
        assert self._proc is not None
        fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime

    def rss_mib(self) -> float:
        assert self._proc is not None
        for line in Path(f"/proc/{self._proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


def _journal_counts(path: Path, since: float, until: float) -> tuple[float, float]:
    requests: Counter[str] = Counter()
    connections: dict[str, set[int]] = defaultdict(set)
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if not since <= entry["time"] <= until:
            continue
        connections[entry["host"]].add(entry["connection"])
        if entry["operation"] not in _HANDSHAKE:
            requests[entry["host"]] += 1
    hosts = max(len(connections), 1)
    return sum(requests.values()) / hosts, sum(len(c) for c in connections.values()) / hosts


def _baseline_hosts(inventory: Path, path: Path) -> None:
    """The host list a scripter would have: endpoint, auth, credential, CA (a private file)."""
    inv = load_inventory(inventory)
    hosts = list(inv.hosts.values())
    passwords = winrm_passwords(hosts)
    document = [
        {
            "endpoint": h.endpoint,
            "transport": h.transport,
            "username": h.credential.username if h.credential else "",
            "password": secret.reveal() if (secret := passwords.get(h.name)) else "",
            "ca": h.ca_bundle,
        }
        for h in hosts
    ]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(document, file)


def _compile_keyfleet() -> None:
    """Byte-compile keyfleet's modules, as ``pip install`` does, so that each timed process loads them
    as an installed keyfleet would, not recompiling every module when PYTHONDONTWRITEBYTECODE is set."""
    compileall.compile_dir(Path(orchestrator.__file__).parent, quiet=1)


def _failures(run: ProcessRun, hosts: int) -> int:
    try:
        summary = json.loads(run.stdout)["summary"]
    except (ValueError, KeyError, TypeError):
        return hosts
    return hosts - int(summary["ok"])


def bench(
    hosts: int = 100,
    forks: int = 32,
    latency: float = 0.02,
    base_address: str = "127.1.0.1",
    kdf: str = "default",
) -> BenchResult:
    plan_hosts(hosts, base_address, "unused", {})  # a bad --base-address or --hosts: one line, before any work
    backup = [sys.executable, "-m", "orchestrator", "backup", "--json"]
    _compile_keyfleet()
    with tempfile.TemporaryDirectory(prefix="keyfleet-bench-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o700)
        with LabProcess(workdir, hosts, latency, base_address, kdf) as lab:
            inv = str(lab.inventory)
            names = list(load_inventory(lab.inventory).hosts)
            sample = names[: min(SAMPLE_HOSTS, hosts)]
            chain_run = _run_process(
                [
                    *backup,
                    "-i",
                    inv,
                    "--share",
                    str(workdir / "share-chain"),
                    "--forks",
                    "1",
                    "--limit",
                    ",".join(sample),
                ],
                workdir,
                "chain",
            )
            if chain_run.returncode != 0:  # a failed sample would make the ideal meaningless
                err = (workdir / "chain.err").read_text(errors="replace").strip()[-300:]
                raise KeyfleetError(f"the bench's forks-1 sample backup failed (exit {chain_run.returncode}): {err}")
            chain = statistics.median(o["duration"] for o in json.loads(chain_run.stdout)["outcomes"])
            lab_cpu, lab_rss, since = lab.cpu(), lab.rss_mib(), time.time()
            run = _run_process(
                [*backup, "-i", inv, "--share", str(workdir / "share"), "--forks", str(forks)], workdir, "backup"
            )
            until = time.time()
            lab_cpu, lab_rss_after = lab.cpu() - lab_cpu, lab.rss_mib()
            requests, connections = _journal_counts(lab.state / "journal.jsonl", since, until)
            _baseline_hosts(lab.inventory, workdir / "hosts.json")
            baseline_lab_cpu = lab.cpu()
            baseline = _run_process(
                [sys.executable, "-m", "orchestrator.lab.baseline", str(workdir / "hosts.json"), str(forks)],
                workdir,
                "baseline",
            )
            baseline_lab_cpu = lab.cpu() - baseline_lab_cpu
    cores = os.cpu_count() or 1
    ideal = math.ceil(hosts / forks) * chain
    floor = (run.cpu + lab_cpu) / cores
    baseline_floor = (baseline.cpu + baseline_lab_cpu) / cores
    baseline_failed = _failures(baseline, hosts)
    return BenchResult(
        hosts=hosts,
        forks=forks,
        latency=latency,
        kdf=kdf,
        cores=cores,
        wall_seconds=round(run.wall, 3),
        chain_seconds=round(chain, 3),
        ideal_seconds=round(ideal, 3),
        floor_seconds=round(floor, 3),
        ratio=round(run.wall / max(ideal, floor), 3),
        controller_cpu_ms_per_host=round(run.cpu * 1000 / hosts, 2),
        controller_peak_rss_mib=round(run.peak_rss_mib, 1),
        requests_per_host=round(requests, 2),
        connections_per_host=round(connections, 2),
        lab_cpu_ms_per_host=round(lab_cpu * 1000 / hosts, 2),
        lab_rss_mib=round(lab_rss_after, 1),
        lab_rss_growth_mib=round(lab_rss_after - lab_rss, 1),
        baseline_wall_seconds=round(baseline.wall, 3),
        baseline_cpu_ms_per_host=round(baseline.cpu * 1000 / hosts, 2),
        baseline_peak_rss_mib=round(baseline.peak_rss_mib, 1),
        baseline_floor_seconds=round(baseline_floor, 3),
        baseline_ratio=round(baseline.wall / max(ideal, baseline_floor), 3),
        versus_baseline=round(run.wall / baseline.wall, 3) if baseline.wall > 0 else 0.0,
        failures=_failures(run, hosts) + baseline_failed,
    )


def as_rows(result: BenchResult) -> list[tuple[str, str]]:
    return [
        (
            "fleet",
            f"{result.hosts} hosts, forks {result.forks}, {result.latency * 1000:.0f} ms per request, "
            f"lab KDF {result.kdf}, {result.cores} cores",
        ),
        ("keyfleet backup (whole process)", f"{result.wall_seconds}s"),
        ("ideal", f"{result.ideal_seconds}s = ceil(hosts/forks) x {result.chain_seconds}s chain at forks 1"),
        ("CPU floor", f"{result.floor_seconds}s = (controller + lab CPU) / {result.cores} cores"),
        ("wall / max(ideal, floor)", f"{result.ratio}"),
        ("controller CPU per host", f"{result.controller_cpu_ms_per_host} ms (start-up included)"),
        ("controller peak RSS", f"{result.controller_peak_rss_mib} MiB"),
        ("WS-Man requests per host", f"{result.requests_per_host} (budget {REQUEST_BUDGET})"),
        ("TCP connections per host", f"{result.connections_per_host}"),
        (
            "lab during the run",
            f"{result.lab_cpu_ms_per_host} ms CPU per host, RSS {result.lab_rss_mib} MiB "
            f"(+{result.lab_rss_growth_mib})",
        ),
        (
            "baseline: pywinrm pool, hostname",
            f"{result.baseline_wall_seconds}s, {result.baseline_cpu_ms_per_host} ms CPU per host, "
            f"peak RSS {result.baseline_peak_rss_mib} MiB",
        ),
        (
            "baseline wall / max(ideal, its floor)",
            f"{result.baseline_ratio} (floor {result.baseline_floor_seconds}s)",
        ),
        ("keyfleet / baseline wall", f"{result.versus_baseline}"),
        ("failures", str(result.failures)),
    ]


def as_json(result: BenchResult) -> dict[str, object]:
    return asdict(result)
