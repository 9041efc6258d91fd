"""``keyfleet lab bench --history N``: what a backup's commits cost on a share that already holds N entries.

The history is synthesised through the real code paths (BackupStore adds from worker threads, group
commits, signed log segments and checkpoints, signed run records) on a local share. Then one-host
backups and one ``--hosts`` backup commit on that share and on a fresh one, and the CPU of the
committing threads (``BackupStore.stats``) and of reading the history are compared with the targets.
No server is contacted: the WinRM side of a backup does not depend on the history.
"""

from __future__ import annotations

import secrets
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator.share.local import LocalShare
from orchestrator.share.manifest import ManifestEntry
from orchestrator.share.runrecord import HostOutcome, RunRecord, new_run_id
from orchestrator.share.store import BackupStore
from orchestrator.status import Status

ONE_HOST_TARGET = 1.5  # one-host backup on N entries, against a fresh share
FLEET_TARGET = 1.2  # a --hosts backup on N entries, against a fresh share
HOSTS_PER_RUN = 100  # size of each synthesised backup run
_ROLE = "management_server"


@dataclass(frozen=True)
class CommitCost:
    """Costs on one share, in milliseconds of CPU."""

    entries_before: int
    load_ms: float  # reading and verifying the history: once per command
    one_host_commit_ms: float  # cheapest commit of the one-host backups (user + system CPU): other load
    # on the machine only ever adds to a CPU time, so the minimum is the steadiest estimate of the cost
    one_host_commit_median_ms: float
    fleet_commit_ms_per_host: float  # the --hosts backup's commits, per host
    fleet_store_ms_per_host: float  # its history read plus its commits, per host
    fleet_commits: int  # group commits the --hosts backup needed
    compactions: int


@dataclass(frozen=True)
class HistoryBenchResult:
    history: int
    hosts: int
    workers: int
    synthesis_seconds: float
    fresh: CommitCost
    grown: CommitCost
    one_host_ratio: float
    fleet_ratio: float


def _add(store: BackupStore, host: str, run_id: str, created: datetime) -> ManifestEntry:
    return store.add(
        host=host,
        group="BENCH",
        role=_ROLE,
        data=secrets.token_bytes(96),
        password_id="bench",
        scsm_version="10.22.1068.0",
        helper_version="bench",
        run_id=run_id,
        created=created,
    )


def _backup(store: BackupStore, hosts: list[str], workers: int, started: datetime) -> None:
    """Store one entry per host from ``workers`` threads (group commits), then the signed run record."""
    run_id = new_run_id(started)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        entries = list(pool.map(lambda host: _add(store, host, run_id, started), hosts))
    outcomes = tuple(
        HostOutcome(e.host, e.group, e.role, Status.OK, entry_id=e.id, sha256=e.sha256, size=e.size) for e in entries
    )
    record = RunRecord(run_id, "backup", started, datetime.now(UTC), "bench", store.share.url, False, outcomes)
    store.write_run_record(record)


def synthesise_history(store: BackupStore, entries: int, *, workers: int = 32) -> None:
    """Give the share ``entries`` more entries: backups of ``HOSTS_PER_RUN`` hosts, an hour apart in 2020."""
    start = datetime(2020, 1, 1, tzinfo=UTC)
    done = run = 0
    while done < entries:
        count = min(HOSTS_PER_RUN, entries - done)
        _backup(store, [f"bench-{i:04d}" for i in range(count)], workers, start + timedelta(hours=run))
        done, run = done + count, run + 1


def _one_host(root: Path, key: Ed25519PrivateKey, state: Path) -> float:
    """A one-host backup as a command does it (read the history, commit, run record): its commit CPU."""
    store = BackupStore(LocalShare(root), key, state_root=state)
    store.load_history()
    _backup(store, ["one-host"], 1, datetime.now(UTC))
    return store.stats.cpu_seconds


def _fleet(root: Path, key: Ed25519PrivateKey, state: Path, hosts: int, workers: int) -> tuple[float, BackupStore]:
    store = BackupStore(LocalShare(root), key, state_root=state)
    started = time.thread_time()
    store.load_history()
    load = time.thread_time() - started
    _backup(store, [f"fleet-{i:04d}" for i in range(hosts)], workers, datetime.now(UTC))
    return load, store


def _cost(before: int, one_host: list[float], load: float, fleet: BackupStore, hosts: int) -> CommitCost:
    return CommitCost(
        entries_before=before,
        load_ms=round(load * 1000, 2),
        one_host_commit_ms=round(min(one_host) * 1000, 2),
        one_host_commit_median_ms=round(statistics.median(one_host) * 1000, 2),
        fleet_commit_ms_per_host=round(fleet.stats.cpu_seconds * 1000 / hosts, 3),
        fleet_store_ms_per_host=round((load + fleet.stats.cpu_seconds) * 1000 / hosts, 3),
        fleet_commits=fleet.stats.commits,
        compactions=fleet.stats.compactions,
    )


def history_bench(history: int, *, hosts: int = 1000, workers: int = 128, repeats: int = 15) -> HistoryBenchResult:
    """Measure on a fresh share and on one with ``history`` prior entries (both in a private temp folder).
    The two shares are measured in turn, so that other load on the machine weighs on both alike."""
    key = Ed25519PrivateKey.generate()
    with tempfile.TemporaryDirectory(prefix="keyfleet-history-bench-") as tmp:
        work = Path(tmp)
        fresh_root, grown_root, state = work / "fresh", work / "grown", work / "state"
        started = time.monotonic()
        synthesise_history(BackupStore(LocalShare(grown_root), key, state_root=state), history)
        synthesis = time.monotonic() - started
        before = len(BackupStore(LocalShare(grown_root), key, state_root=state).load_manifest().entries)
        fresh_one: list[float] = []
        grown_one: list[float] = []
        for _ in range(repeats):
            fresh_one.append(_one_host(fresh_root, key, state))
            grown_one.append(_one_host(grown_root, key, state))
        fresh_load, fresh_fleet = _fleet(fresh_root, key, state, hosts, workers)
        grown_load, grown_fleet = _fleet(grown_root, key, state, hosts, workers)
    fresh = _cost(0, fresh_one, fresh_load, fresh_fleet, hosts)
    grown = _cost(before, grown_one, grown_load, grown_fleet, hosts)
    return HistoryBenchResult(
        history=history,
        hosts=hosts,
        workers=workers,
        synthesis_seconds=round(synthesis, 1),
        fresh=fresh,
        grown=grown,
        one_host_ratio=round(grown.one_host_commit_ms / fresh.one_host_commit_ms, 2),
        fleet_ratio=round(grown.fleet_store_ms_per_host / fresh.fleet_store_ms_per_host, 2),
    )


def as_rows(result: HistoryBenchResult) -> list[tuple[str, str]]:
    fresh, grown = result.fresh, result.grown
    n = grown.entries_before
    return [
        ("history", f"{n} prior entries, synthesised through BackupStore in {result.synthesis_seconds}s"),
        (
            "one-host backup: commit CPU (cheapest of the repeats)",
            f"{fresh.one_host_commit_ms} ms fresh, {grown.one_host_commit_ms} ms on {n} entries: "
            f"{result.one_host_ratio}x (target <= {ONE_HOST_TARGET}x); medians {fresh.one_host_commit_median_ms} "
            f"and {grown.one_host_commit_median_ms} ms",
        ),
        (
            f"{result.hosts}-host backup: commit CPU per host",
            f"{fresh.fleet_commit_ms_per_host} ms fresh, {grown.fleet_commit_ms_per_host} ms on {n} entries "
            f"({fresh.fleet_commits} and {grown.fleet_commits} group commits, {result.workers} workers)",
        ),
        (
            f"{result.hosts}-host backup: store CPU per host (reading the history + commits)",
            f"{fresh.fleet_store_ms_per_host} ms fresh, {grown.fleet_store_ms_per_host} ms on {n} entries: "
            f"{result.fleet_ratio}x (target <= {FLEET_TARGET}x)",
        ),
        ("reading and verifying the history (once per command)", f"{fresh.load_ms} ms fresh, {grown.load_ms} ms"),
        ("compactions during the measured backups", f"{fresh.compactions} fresh, {grown.compactions} on {n} entries"),
    ]


def as_json(result: HistoryBenchResult) -> dict[str, object]:
    return asdict(result)
