"""``keyfleet lab bench --history N``: what a backup's commits cost on a share that already holds N entries.

The history is synthesised through the real code paths (BackupStore adds from worker threads, group
commits, signed log segments and checkpoints, signed run records) on a local share. Then one-host
backups and one ``--hosts`` backup commit on that share and on a fresh one, each in the order the
backup command keeps (read the history, check the password against its scrypt verifier, commit, write
the run record), and the CPU of the committing threads (``BackupStore.stats``) and of reading the
history are compared with the targets, as medians of the repeats. No server is contacted: the WinRM
side of a backup does not depend on the history.
"""

from __future__ import annotations

import os
import secrets
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator.jobs import identity
from orchestrator.secret import Secret
from orchestrator.share.local import LocalShare
from orchestrator.share.manifest import ManifestEntry
from orchestrator.share.runrecord import HostOutcome, RunRecord, new_run_id
from orchestrator.share.store import BackupStore
from orchestrator.status import Status

ONE_HOST_TARGET = 1.5  # one-host backup on N entries, against a fresh share
FLEET_TARGET = 1.2  # a --hosts backup on N entries, against a fresh share
HOSTS_PER_RUN = 100  # size of each synthesised backup run
_ROLE = "management_server"
_PASSWORD_ID = "bench"


@dataclass(frozen=True)
class CommitCost:
    """Costs on one share, in milliseconds of CPU."""

    entries_before: int
    load_ms: float  # reading and verifying the history: once per command
    one_host_commit_ms: float  # median commit CPU (user + system) of the one-host backups
    one_host_commit_quartiles_ms: tuple[float, float]  # the middle half of the repeats lies between these
    fleet_commit_ms_per_host: float  # the --hosts backup's commits, per host
    fleet_store_ms_per_host: float  # its history read plus its commits, per host
    fleet_commits: int  # group commits the --hosts backup needed
    compactions: int


@dataclass(frozen=True)
class HistoryBenchResult:
    history: int
    hosts: int
    workers: int
    repeats: int
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
        password_id=_PASSWORD_ID,
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


def _open(root: Path, key: Ed25519PrivateKey, state: Path, password: Secret) -> tuple[float, BackupStore]:
    """A store prepared as ``keyfleet backup`` prepares it before any host: the history read and
    verified (its CPU returned), then the password checked against its scrypt verifier (made and
    recorded by the first commit on a share that has none), which commands/backup.py always does."""
    store = BackupStore(LocalShare(root), key, state_root=state)
    started = time.thread_time()
    store.load_history()
    load = time.thread_time() - started
    identity.claim_identity(store, _PASSWORD_ID, password)
    return load, store


def _one_host(root: Path, key: Ed25519PrivateKey, state: Path, password: Secret) -> float:
    """A one-host backup in the backup command's order: its commit CPU."""
    store = _open(root, key, state, password)[1]
    _backup(store, ["one-host"], 1, datetime.now(UTC))
    return store.stats.cpu_seconds


def _fleet(
    root: Path, key: Ed25519PrivateKey, state: Path, password: Secret, hosts: int, workers: int
) -> tuple[float, BackupStore]:
    load, store = _open(root, key, state, password)
    _backup(store, [f"fleet-{i:04d}" for i in range(hosts)], workers, datetime.now(UTC))
    return load, store


def _cost(before: int, one_host: list[float], load: float, fleet: BackupStore, hosts: int) -> CommitCost:
    quartiles = statistics.quantiles(one_host, n=4) if len(one_host) > 1 else one_host * 3
    return CommitCost(
        entries_before=before,
        load_ms=round(load * 1000, 2),
        one_host_commit_ms=round(statistics.median(one_host) * 1000, 2),
        one_host_commit_quartiles_ms=(round(quartiles[0] * 1000, 2), round(quartiles[2] * 1000, 2)),
        fleet_commit_ms_per_host=round(fleet.stats.cpu_seconds * 1000 / hosts, 3),
        fleet_store_ms_per_host=round((load + fleet.stats.cpu_seconds) * 1000 / hosts, 3),
        fleet_commits=fleet.stats.commits,
        compactions=fleet.stats.compactions,
    )


def history_bench(history: int, *, hosts: int = 1000, workers: int = 128, repeats: int = 15) -> HistoryBenchResult:
    """Measure on a fresh share and on one with ``history`` prior entries (both in a private temp folder).
    The two shares are measured in turn, so that other load on the machine weighs on both alike. One
    unmeasured one-host backup on each share first records the password's verifier (a one-off cost)."""
    key = Ed25519PrivateKey.generate()
    password = Secret(secrets.token_urlsafe(18), "bench")
    with tempfile.TemporaryDirectory(prefix="keyfleet-history-bench-") as tmp:
        work = Path(tmp)
        fresh_root, grown_root, state = work / "fresh", work / "grown", work / "state"
        started = time.monotonic()
        synthesise_history(BackupStore(LocalShare(grown_root), key, state_root=state), history)
        synthesis = time.monotonic() - started
        # A real share of N entries was written over years and lies on disk; the synthesised one was
        # written seconds ago. Without this, ext4's journal (ordered mode) makes the first fsyncs in
        # the new share's folders pay for writing back its 10,000 files: 1.5-1.8x one-host commits
        # that come from the synthesis, not from the history (1.1-1.2x once written back).
        os.sync()
        before = len(BackupStore(LocalShare(grown_root), key, state_root=state).load_manifest().entries)
        fresh_one: list[float] = []
        grown_one: list[float] = []
        for root in (fresh_root, grown_root):
            _one_host(root, key, state, password)
        for _ in range(repeats):
            fresh_one.append(_one_host(fresh_root, key, state, password))
            grown_one.append(_one_host(grown_root, key, state, password))
        fresh_load, fresh_fleet = _fleet(fresh_root, key, state, password, hosts, workers)
        grown_load, grown_fleet = _fleet(grown_root, key, state, password, hosts, workers)
    fresh = _cost(0, fresh_one, fresh_load, fresh_fleet, hosts)
    grown = _cost(before, grown_one, grown_load, grown_fleet, hosts)
    return HistoryBenchResult(
        history=history,
        hosts=hosts,
        workers=workers,
        repeats=repeats,
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
            f"one-host backup: commit CPU (median of {result.repeats}; middle half)",
            f"{fresh.one_host_commit_ms} ms fresh ({_span(fresh)}), {grown.one_host_commit_ms} ms on {n} entries "
            f"({_span(grown)}): {result.one_host_ratio}x (target <= {ONE_HOST_TARGET}x)",
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


def _span(cost: CommitCost) -> str:
    low, high = cost.one_host_commit_quartiles_ms
    return f"{low}-{high} ms"


def as_json(result: HistoryBenchResult) -> dict[str, object]:
    return asdict(result)
