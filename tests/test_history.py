"""The hash-chained history of a share: what a commit writes, compaction, two controllers, a damaged log,
run records the share refused, leftovers reported with their age and removed by ``prune --orphans``."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator.errors import IntegrityError, ShareError
from orchestrator.jobs.audit import run_audit
from orchestrator.jobs.prune import Leftover, plan_leftovers, remove_leftovers
from orchestrator.share import history, layout
from orchestrator.share.history import COMPACT_MIN, segment_path
from orchestrator.share.local import LocalShare
from orchestrator.share.manifest import ManifestEntry
from orchestrator.share.runrecord import HostOutcome, RunRecord, new_run_id
from orchestrator.share.store import BackupStore
from orchestrator.status import Status
from tests.share_history import read_share
from tests.test_audit import MAX_AGE, make_inventory

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def backup(store: BackupStore, hosts: list[str], when: datetime = NOW) -> list[ManifestEntry]:
    """One run: an entry per host, then its signed run record."""
    run_id = new_run_id(when)
    entries = [
        store.add(
            host=h, group="PROD", role="management_server", data=f"{h}{when}".encode() * 9, password_id="p",
            run_id=run_id, created=when,
        )
        for h in hosts
    ]  # fmt: skip
    outcomes = tuple(
        HostOutcome(e.host, e.group, e.role, Status.OK, entry_id=e.id, sha256=e.sha256, size=e.size) for e in entries
    )
    store.write_run_record(RunRecord(run_id, "backup", when, when, "inv.yml", store.share.url, False, outcomes))
    return entries


def recording(log: list[str], method: Callable[..., Any]) -> Callable[..., Any]:
    """``method``, noting the share path of every call in ``log``."""

    def wrapper(path: str, *args: Any) -> Any:
        log.append(path)
        return method(path, *args)

    return wrapper


def test_a_commit_writes_one_key_file_and_one_segment(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    store = BackupStore(LocalShare(tmp_path), key)
    backup(store, [f"ms{i:02}" for i in range(40)])
    store = BackupStore(LocalShare(tmp_path), key)  # the next command reads the history once
    generation = store.load_history().generation
    written: list[str] = []
    read: list[str] = []
    share = store.share
    share.write_new = recording(written, share.write_new)  # type: ignore[method-assign]
    share.replace = recording(written, share.replace)  # type: ignore[method-assign]
    share.read_bytes = recording(read, share.read_bytes)  # type: ignore[method-assign]
    entry = store.add(host="new01", group="PROD", role="management_server", data=b"k" * 50, password_id="p")
    assert written == [entry.path, segment_path(generation + 1)] and read == []
    assert read_share(tmp_path, public(key))["generation"] == generation + 1


def test_many_small_commits_are_compacted_by_segment_count(
    tmp_path: Path, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One-host runs add one entry per segment: the number of segments (a signature each to check on
    every read) is bounded too, not only the number of changes."""
    monkeypatch.setattr(history, "COMPACT_SEGMENTS", 8)
    store = BackupStore(LocalShare(tmp_path), key)
    for i in range(COMPACT_MIN + 8):  # a compaction by changes at COMPACT_MIN, then 8 single-entry segments
        store.add(host=f"ms{i:03}", group="PROD", role="management_server", data=b"x%d" % i, password_id="p")
    checkpoint = json.loads((tmp_path / "manifest.json").read_text())
    assert checkpoint["generation"] == COMPACT_MIN + 8  # 8 changes: far below COMPACT_MIN, compacted by count
    assert len(BackupStore(LocalShare(tmp_path), key).load_manifest().entries) == COMPACT_MIN + 8


def test_compaction_checkpoints_and_drops_older_segments(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    store = BackupStore(LocalShare(tmp_path), key)
    for i in range(COMPACT_MIN + 3):
        store.add(host=f"ms{i:03}", group="PROD", role="management_server", data=b"x%d" % i, password_id="p")
    checkpoint = json.loads((tmp_path / "manifest.json").read_text())
    assert checkpoint["generation"] == COMPACT_MIN and len(checkpoint["entries"]) == COMPACT_MIN
    segments = sorted(int(p.stem) for p in (tmp_path / "log").iterdir())
    assert segments == list(range(COMPACT_MIN, COMPACT_MIN + 4))  # segment G stays beside its checkpoint
    state = read_share(tmp_path, public(key))
    assert state["generation"] == COMPACT_MIN + 3 and len(state["entries"]) == COMPACT_MIN + 3
    assert len(BackupStore(LocalShare(tmp_path), key).load_manifest().entries) == COMPACT_MIN + 3


def test_two_controllers_never_fork_the_history(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    first = BackupStore(LocalShare(tmp_path), key)
    backup(first, ["ms01"])
    second = BackupStore(LocalShare(tmp_path), key)
    for i in range(COMPACT_MIN + 5):  # the other controller commits past a compaction meanwhile
        second.add(host=f"dw{i:03}", group="PROD", role="management_server", data=b"d%d" % i, password_id="p")
    late = first.add(host="ms02", group="PROD", role="management_server", data=b"late", password_id="p")
    again = second.add(host="ms03", group="PROD", role="management_server", data=b"again", password_id="p")
    state = read_share(tmp_path, public(key))  # raises on any broken link
    assert {late.id, again.id} <= {e["id"] for e in state["entries"]}
    assert len(state["entries"]) == COMPACT_MIN + 8 and state["generation"] == COMPACT_MIN + 8


@pytest.mark.parametrize(("damage", "kind"), [("edit", "segment-invalid"), ("delete", "chain-broken")])
def test_a_damaged_log_is_refused_and_named(tmp_path: Path, key: Ed25519PrivateKey, damage: str, kind: str) -> None:
    store = BackupStore(LocalShare(tmp_path), key)
    for when in (NOW - timedelta(hours=2), NOW - timedelta(hours=1), NOW):
        backup(store, ["ms01"], when)
    middle = tmp_path / segment_path(2)
    if damage == "edit":
        document = json.loads(middle.read_text())
        document["added"][0]["password_id"] = "other"
        middle.write_text(json.dumps(document))
    else:
        middle.unlink()
    with pytest.raises(IntegrityError, match=kind):
        BackupStore(LocalShare(tmp_path), key).load_manifest()
    inventory = make_inventory(tmp_path, public(key), {"ms01": ("PROD", "management_server")})  # type: ignore[dict-item]
    report = run_audit(inventory, BackupStore(LocalShare(tmp_path), verifier=key.public_key()), max_age=MAX_AGE)
    assert kind in {f.kind for f in report.findings} and report.exit_code == 3


def test_a_run_record_the_share_refused_is_written_by_the_next_run(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    store = BackupStore(LocalShare(tmp_path / "share"), key, state_root=tmp_path / "state")
    entry = store.add(host="ms01", group="PROD", role="management_server", data=b"k1", password_id="p", run_id="r")
    record = RunRecord(new_run_id(), "backup", NOW, NOW, "inv.yml", store.share.url, False, ())
    write_new = store.share.write_new

    def full(path: str, data: bytes) -> None:
        raise ShareError("share: no space left on the share")

    store.share.write_new = full  # type: ignore[method-assign]
    with pytest.raises(ShareError, match="no space"):
        store.write_run_record(record)
    store.share.write_new = write_new  # type: ignore[method-assign]
    assert not (tmp_path / "share" / layout.run_record_path(record.run_id)).exists()
    later = BackupStore(LocalShare(tmp_path / "share"), key, state_root=tmp_path / "state")
    assert later.write_pending_records() == [layout.run_record_path(record.run_id)]
    assert later.notices and record.run_id in later.notices[0]
    written = later.run_records()
    assert [(r.run_id, r.signed, r.generation) for r in written] == [(record.run_id, True, 1)]
    assert later.write_pending_records() == []  # written once
    assert entry.id in {e.id for e in later.load_manifest().entries}


def test_leftovers_are_reported_with_their_age_and_removed(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    root = tmp_path / "share"
    store = BackupStore(LocalShare(root), key)
    [kept] = backup(store, ["ms01"])
    orphan = root / layout.key_file_path("PROD", "management_server", "ms01", NOW, "ab" * 32)
    orphan.write_bytes(b"left by a run that died before its commit")
    temporary = root / "PROD" / ".x.bin.tmp-0a1b2c"
    temporary.write_bytes(b"half")
    fresh_temporary = root / "PROD" / ".y.bin.tmp-0d0e0f"  # a writer may still hold it: left alone
    fresh_temporary.write_bytes(b"half")
    day_ago = time.time() - 86400
    for path in (orphan, temporary):
        os.utime(path, (day_ago, day_ago))
    inventory = make_inventory(tmp_path, public(key), {"ms01": ("PROD", "management_server")})  # type: ignore[dict-item]
    report = run_audit(inventory, BackupStore(LocalShare(root), verifier=key.public_key()), max_age=MAX_AGE)
    ages = {f.kind: f.age for f in report.findings}
    assert set(ages) == {"orphan-file", "temporary-file"} and report.exit_code == 0
    assert all(age is not None and timedelta(hours=23) < age < timedelta(hours=25) for age in ages.values())
    assert any("1d" in f.message for f in report.findings)
    leftovers = plan_leftovers(store)
    assert sorted((item.kind, item.path) for item in leftovers) == [
        ("orphan", orphan.relative_to(root).as_posix()),
        ("temporary", temporary.relative_to(root).as_posix()),
    ]
    # an orphan the history lists by the time of removal (it was committed meanwhile) is kept
    sneaked = [*leftovers, Leftover(kept.path, "orphan", None)]
    assert {item.path for item in remove_leftovers(store, sneaked)} == {i.path for i in leftovers}
    assert not orphan.exists() and not temporary.exists() and fresh_temporary.exists()
    assert (root / kept.path).exists()


def test_a_file_outside_keyfleet_s_layout_is_reported_and_left_alone(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    """Someone else's files on the share: the audit names them (orphan-file, saying prune leaves them);
    prune --orphans removes only key files where keyfleet writes them."""
    root = tmp_path / "share"
    store = BackupStore(LocalShare(root), key)
    backup(store, ["ms01"])
    orphan = root / layout.key_file_path("PROD", "management_server", "ms01", NOW, "cd" * 32)
    orphan.write_bytes(b"left by a run that died before its commit")
    (root / "notes.txt").write_bytes(b"the admin's notes")
    (root / "PROD" / "stray.bin").write_bytes(b"not where keyfleet writes")
    inventory = make_inventory(tmp_path, public(key), {"ms01": ("PROD", "management_server")})  # type: ignore[dict-item]
    report = run_audit(inventory, BackupStore(LocalShare(root), verifier=key.public_key()), max_age=MAX_AGE)
    messages = {f.path: f.message for f in report.findings if f.kind == "orphan-file"}
    assert set(messages) == {orphan.relative_to(root).as_posix(), "notes.txt", "PROD/stray.bin"}
    assert messages["notes.txt"].endswith("(not a keyfleet file: prune leaves it)")
    assert messages["PROD/stray.bin"].endswith("(not a keyfleet file: prune leaves it)")
    assert messages[orphan.relative_to(root).as_posix()].endswith("(`keyfleet prune --orphans` removes it)")
    removed = remove_leftovers(store, plan_leftovers(store))
    assert [item.path for item in removed] == [orphan.relative_to(root).as_posix()]
    assert (root / "notes.txt").exists() and (root / "PROD" / "stray.bin").exists()


def test_links_inside_the_share_are_never_followed(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    root = tmp_path / "share"
    store = BackupStore(LocalShare(root), key)
    backup(store, ["ms01"])
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(b"not ours")
    os.symlink(outside, root / "PROD" / "management_server" / "ms02")
    os.symlink(outside / "secret.bin", root / "runs" / "link.json")
    with pytest.raises(IntegrityError, match="symbolic link"):
        store.add(host="ms02", group="PROD", role="management_server", data=b"k", password_id="p")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.bin"]
    with pytest.raises(IntegrityError, match="symbolic link"):
        store.share.read_bytes("runs/link.json")
    assert "runs/link.json" not in list(store.share.list_files())
    inventory = make_inventory(tmp_path, public(key), {"ms01": ("PROD", "management_server")})  # type: ignore[dict-item]
    report = run_audit(inventory, BackupStore(LocalShare(root), verifier=key.public_key()), max_age=MAX_AGE)
    links = sorted(f.path or "" for f in report.findings if f.kind == "symlink")
    assert links == ["PROD/management_server/ms02", "runs/link.json"] and report.exit_code == 3
    assert plan_leftovers(store) == []  # nothing behind a link is offered for removal


def test_history_bench_measures_both_shares_through_the_store() -> None:
    from orchestrator.lab.history_bench import as_rows, history_bench

    result = history_bench(150, hosts=20, workers=8, repeats=3)
    assert (result.fresh.entries_before, result.grown.entries_before) == (0, 150)
    assert result.fresh.fleet_commits >= 1 and result.grown.fleet_commits >= 1
    assert result.one_host_ratio > 0 and result.fleet_ratio > 0
    assert any("target <= 1.5x" in value for _, value in as_rows(result))


def test_an_orphan_another_controller_commits_meanwhile_is_kept(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    root = tmp_path / "share"
    pruner = BackupStore(LocalShare(root), key)
    pruner.add(host="ms01", group="PROD", role="management_server", data=b"first", password_id="p")
    pruner.load_history()  # the prune read the history before the other controller's commit
    other = BackupStore(LocalShare(root), key)
    theirs = other.add(host="ms02", group="PROD", role="management_server", data=b"theirs", password_id="p")
    assert pruner.remove_unlisted([theirs.path]) == set()
    assert (root / theirs.path).exists()


def another_run_after_the_first_read(
    monkeypatch: pytest.MonkeyPatch, module: Any, root: Path, key: Ed25519PrivateKey, state: Path | None, host: str
) -> list[str]:
    """Make ``module``'s first ``read_history`` be followed at once by another run's commit and record (its
    controller state in ``state``; None: this controller's). The list it returns is non-empty once it has."""
    real = module.read_history
    raced: list[str] = []

    def read_then_another_run(*args: Any, **kwargs: Any) -> Any:
        history = real(*args, **kwargs)
        if not raced:
            raced.append("done")
            backup(BackupStore(LocalShare(root), key, state_root=state), [host], NOW + timedelta(minutes=1))
        return history

    monkeypatch.setattr(module, "read_history", read_then_another_run)
    return raced


@pytest.mark.parametrize("other", ["another keyfleet process here", "another controller machine"])
def test_a_run_recorded_while_the_history_is_read_is_no_rollback(
    tmp_path: Path, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch, other: str
) -> None:
    """Another keyfleet commits and writes its run record just after this one read the history. The newest
    run record is read before the history, so it can never look newer than it; this controller's memory of
    the newest generation (which another process here updates) is checked against a history read after it."""
    from orchestrator.share import historystore

    root = tmp_path / "share"
    backup(BackupStore(LocalShare(root), key), ["ms01"])
    state = tmp_path / "elsewhere" if other == "another controller machine" else None
    raced = another_run_after_the_first_read(monkeypatch, historystore, root, key, state, "ms02")
    BackupStore(LocalShare(root), key).load_history()  # no HistoryError("rollback")
    assert raced


def test_an_audit_beside_a_backup_reports_no_rollback(
    tmp_path: Path, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backup commits and writes its run record just after the audit read the history: the audit reads
    again and reports the share as it is, not a rollback."""
    from orchestrator.jobs import audit_findings

    root = tmp_path / "share"
    backup(BackupStore(LocalShare(root), key), ["ms01"])
    raced = another_run_after_the_first_read(monkeypatch, audit_findings, root, key, tmp_path / "other", "ms01")
    inventory = make_inventory(tmp_path, public(key), {"ms01": ("PROD", "management_server")})  # type: ignore[dict-item]
    report = run_audit(inventory, BackupStore(LocalShare(root), verifier=key.public_key()), max_age=MAX_AGE)
    assert raced
    assert "rollback" not in {f.kind for f in report.findings}, report.findings
    assert report.exit_code == 0, report.findings
