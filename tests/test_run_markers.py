"""A run under way marks itself on the share (``runs/<run-id>.running``, signed) before it contacts any
server, and removes the marker once its run record is written: an audit beside the run reports the
generations it committed so far as ``run-in-progress`` (a warning), not as a lost run record (integrity,
exit 3); once the marker has run out, or if it does not prove itself, the record is missing as before."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator.errors import IntegrityError, ShareError
from orchestrator.inventory.loader import load_inventory
from orchestrator.inventory.model import Inventory
from orchestrator.jobs import context
from orchestrator.jobs.audit import AuditReport, Severity, run_audit
from orchestrator.jobs.playbook import PlaybookContext, PlaybookRun
from orchestrator.jobs.playbook_schema import load_playbook
from orchestrator.jobs.prune import plan_leftovers, remove_leftovers
from orchestrator.runner.pool import RunnerEvents
from orchestrator.secret import Secret
from orchestrator.share import layout
from orchestrator.share.local import LocalShare
from orchestrator.share.runrecord import HostOutcome, RunMarker, RunRecord, new_run_id
from orchestrator.share.store import BackupStore
from orchestrator.status import Status
from tests.conftest import CliRun, LabFiles, cli_env, make_lab_inventory
from tests.test_audit import MAX_AGE, make_inventory
from tests.test_history import public

NOW = datetime.now(UTC).replace(microsecond=0)
HOSTS = {"ms01": ("PROD", "management_server"), "ms02": ("PROD", "management_server")}


class Share:
    """A share where run ``run_id`` marked itself and committed ms01's key file, with no record yet."""

    def __init__(self, root: Path, *, until: datetime = NOW + timedelta(hours=1)) -> None:
        self.root = root
        self.key = Ed25519PrivateKey.generate()
        self.inventory: Inventory = make_inventory(root, public(self.key), HOSTS)  # type: ignore[arg-type]
        self.store = BackupStore(LocalShare(root / "share"), self.key)
        self.run_id = new_run_id(NOW)
        self.marker_path = self.store.mark_running(RunMarker(self.run_id, "backup", NOW, until))
        self.entry = self.store.add(
            host="ms01", group="PROD", role="management_server", data=b"k" * 64, password_id="pw-2026",
            run_id=self.run_id, created=NOW,
        )  # fmt: skip

    @property
    def marker(self) -> Path:
        return self.root / "share" / self.marker_path

    def record(self) -> None:
        outcome = HostOutcome("ms01", "PROD", "management_server", Status.OK, entry_id=self.entry.id)
        record = RunRecord(self.run_id, "backup", NOW, NOW, "inv.yml", self.store.share.url, False, (outcome,))
        self.store.write_run_record(record)

    def audit(self, now: datetime | None = None) -> AuditReport:
        store = BackupStore(LocalShare(self.root / "share"), verifier=self.key.public_key())
        return run_audit(self.inventory, store, max_age=MAX_AGE, now=now)


def kinds(report: AuditReport) -> dict[str, Severity]:
    return {finding.kind: finding.severity for finding in report.findings}


def test_an_audit_beside_a_run_takes_its_commits_for_a_run_under_way(tmp_path: Path) -> None:
    share = Share(tmp_path)
    assert share.marker.is_file() and share.marker_path == f"runs/{share.run_id}.running"
    report = share.audit()
    assert kinds(report) == {"run-in-progress": Severity.WARNING}, report.findings
    finding = report.findings[0]
    assert finding.path == share.marker_path and "may be under way until" in finding.message
    assert report.exit_code != 3  # ms02 has no backup yet: a gap, not an integrity problem
    share.record()
    assert not share.marker.exists()  # the record written, the marker is gone
    assert kinds(share.audit()) == {}


def test_a_marker_past_its_time_is_a_missing_record(tmp_path: Path) -> None:
    share = Share(tmp_path, until=NOW + timedelta(minutes=5))
    report = share.audit(now=NOW + timedelta(minutes=5, seconds=1))
    assert kinds(report) == {"run-record-missing": Severity.INTEGRITY}, report.findings
    assert "had to end by" in report.findings[0].message and report.exit_code == 3


@pytest.mark.parametrize("change", ["until moved", "another key", "unsigned", "another run's", "not JSON"])
def test_a_marker_that_does_not_prove_itself_changes_nothing(tmp_path: Path, change: str) -> None:
    share = Share(tmp_path)
    document = json.loads(share.marker.read_bytes())
    if change == "until moved":
        document["until"] = "2999-01-01T00:00:00.000Z"
    elif change == "another key":
        other = RunMarker(share.run_id, "backup", NOW, NOW + timedelta(hours=1))
        document = json.loads(other.to_bytes(Ed25519PrivateKey.generate()))
    elif change == "unsigned":
        document = json.loads(RunMarker(share.run_id, "backup", NOW, NOW + timedelta(hours=1)).to_bytes(None))
    elif change == "another run's":
        other = RunMarker(new_run_id(NOW), "backup", NOW, NOW + timedelta(hours=1))
        document = json.loads(other.to_bytes(share.key))
    share.marker.write_text("{" if change == "not JSON" else json.dumps(document))
    report = share.audit()
    assert kinds(report) == {
        "run-marker-invalid": Severity.INTEGRITY,
        "run-record-missing": Severity.INTEGRITY,
    }, report.findings
    assert report.exit_code == 3
    with pytest.raises(IntegrityError):
        share.store.run_markers()


def test_a_marker_left_beside_its_record_is_harmless(tmp_path: Path) -> None:
    share = Share(tmp_path)
    kept = share.marker.read_bytes()
    share.record()
    share.marker.write_bytes(kept)  # as if the share had refused its removal
    assert kinds(share.audit()) == {}
    assert kinds(share.audit(now=NOW + timedelta(days=30))) == {}


def test_the_next_backup_gives_notice_of_a_lost_record_only(tmp_path: Path) -> None:
    share = Share(tmp_path, until=datetime.now(UTC) + timedelta(minutes=1))
    store = BackupStore(LocalShare(tmp_path / "share"), share.key)
    assert store.unrecorded_runs() == [] and store.notices == []  # a run under way
    expired = Share(tmp_path / "other", until=datetime.now(UTC) - timedelta(seconds=1))
    store = BackupStore(LocalShare(tmp_path / "other" / "share"), expired.key)
    assert store.unrecorded_runs() == [expired.run_id] and "is missing" in store.notices[0]


def test_a_run_record_written_later_removes_the_marker(tmp_path: Path) -> None:
    """A record the share refused is kept by the controller; the next backup writes it and removes the marker."""
    share = Share(tmp_path)
    real = share.store.share.write_new
    share.store.share.write_new = refusing_records(real)  # type: ignore[method-assign]
    with pytest.raises(ShareError):
        share.record()
    assert share.marker.exists()
    share.store.share.write_new = real  # type: ignore[method-assign]
    later = BackupStore(LocalShare(tmp_path / "share"), share.key)
    assert later.write_pending_records() == [layout.run_record_path(share.run_id)]
    assert not share.marker.exists() and kinds(share.audit()) == {}


@pytest.mark.parametrize("hosts", [2, 0])
def test_a_storing_run_writes_kept_records_before_its_own_marker(tmp_path: Path, hosts: int) -> None:
    """Every storing command (backup, collect, password rotate, a runbook's backup step; prune --keep with no
    host) marks its run through mark_run_started, which first writes the records earlier runs of this
    controller kept; its marker's time starts after them. A kept record is no lost record meanwhile."""
    share = Share(tmp_path, until=datetime.now(UTC) - timedelta(seconds=1))  # its marker has run out
    real = share.store.share.write_new
    share.store.share.write_new = refusing_records(real)  # type: ignore[method-assign]
    with pytest.raises(ShareError):
        share.record()
    later = BackupStore(LocalShare(tmp_path / "share"), share.key)
    assert later.unrecorded_runs() == [] and later.notices == []  # kept by this controller: not lost
    written: list[tuple[str, datetime]] = []
    write = later.share.write_new

    def noting(path: str, data: bytes) -> None:
        written.append((path, datetime.now(UTC)))
        write(path, data)

    later.share.write_new = noting  # type: ignore[method-assign]
    run_id = new_run_id()
    context.mark_run_started(later, run_id, "collect", list(share.inventory.hosts.values())[:hosts], forks=2)
    assert [path for path, _ in written] == [layout.run_record_path(share.run_id), layout.run_marker_path(run_id)]
    assert later.run_markers()[run_id].started >= written[0][1] - timedelta(milliseconds=1)
    assert set(later.run_markers()) == {run_id}  # the kept record replaced its run's marker
    assert any(f"which run {share.run_id} could not write to the share" in notice for notice in later.notices)
    assert later.write_pending_records() == []  # written once


def refusing_records(real: Callable[[str, bytes], None]) -> Callable[[str, bytes], None]:
    def refuse_records(path: str, data: bytes) -> None:
        if layout.is_run_record_path(path):
            raise ShareError("disk full")
        real(path, data)

    return refuse_records


def test_the_marker_runs_out_after_every_round_of_hosts_has_met_its_deadline(tmp_path: Path) -> None:
    share = Share(tmp_path)
    inventory = make_inventory(tmp_path, public(share.key), HOSTS)  # type: ignore[arg-type]
    first, second = inventory.hosts.values()
    short, long = replace(first, host_timeout=30.0), replace(second, host_timeout=300.0)
    hosts = [short] * 9 + [long]
    run_id = new_run_id()
    before = datetime.now(UTC)
    context.mark_run_started(share.store, run_id, "backup", hosts, forks=4)
    after = datetime.now(UTC)
    marker = share.store.run_markers()[run_id]
    # the marker's own wait for the lock, then 10 hosts 4 at once: 3 rounds, each as long as the slowest host
    # may take and its commit may wait for the lock twice (a group commit under way, then its own), then 10 min
    lock = share.store.lock_timeout
    lease = timedelta(seconds=lock + 3 * (300 + 5 + 2 * lock), minutes=10)
    ms = timedelta(milliseconds=1)  # the marker keeps milliseconds
    assert before + lease - ms <= marker.until <= after + lease
    assert marker.command == "backup" and before - ms <= marker.started <= after


def test_a_marker_removed_while_it_is_read_is_no_error(tmp_path: Path) -> None:
    """A run that writes its record removes its marker: a reader that listed it finds it gone, and skips it."""
    share = Share(tmp_path)
    store = BackupStore(LocalShare(tmp_path / "share"), verifier=share.key.public_key())
    real = store.share.read_bytes

    def record_first(path: str) -> bytes:
        if layout.marker_run_id(path):
            share.record()  # the run ends between the listing and this read
        return real(path)

    store.share.read_bytes = record_first  # type: ignore[method-assign]
    assert store.run_markers() == {}


def test_an_audit_reads_markers_before_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that ends while the audit reads the share (record written, then marker removed) is found by one
    reading or the other: markers are read first, so a marker gone by then means its record is listed."""
    share = Share(tmp_path)
    real = BackupStore.run_markers
    ended: list[bool] = []

    def the_run_ends_first(self: BackupStore, **kwargs: object) -> object:
        if not ended:
            ended.append(True)
            share.record()
        return real(self, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(BackupStore, "run_markers", the_run_ends_first)
    report = share.audit()
    assert ended and kinds(report) == {}, report.findings


def test_the_next_backup_reads_markers_before_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that ends while a backup starts (record written, then marker removed) gets no false notice."""
    share = Share(tmp_path)
    store = BackupStore(LocalShare(tmp_path / "share"), share.key)
    real = BackupStore.run_markers

    def the_run_ends_first(self: BackupStore, **kwargs: object) -> object:
        share.record()
        return real(self, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(BackupStore, "run_markers", the_run_ends_first)
    assert store.unrecorded_runs() == [] and store.notices == []


def test_a_run_killed_before_it_committed_is_reported_and_its_marker_pruned(tmp_path: Path) -> None:
    share = Share(tmp_path)
    share.record()
    killed = new_run_id(NOW)
    share.store.mark_running(RunMarker(killed, "collect", NOW, NOW + timedelta(minutes=5)))
    assert kinds(share.audit()) == {}  # under way, committed nothing yet: nothing to say
    later = NOW + timedelta(minutes=6)
    report = share.audit(now=later)
    assert kinds(report) == {"run-unfinished": Severity.WARNING}, report.findings
    assert "never wrote its run record" in report.findings[0].message and report.exit_code != 3
    store = BackupStore(LocalShare(tmp_path / "share"), share.key)
    left = plan_leftovers(store, now=later)
    assert [(item.path, item.kind) for item in left] == [(layout.run_marker_path(killed), "marker")]
    assert plan_leftovers(store, now=NOW) == []  # not while it may still be going
    assert remove_leftovers(store, left) == left
    assert kinds(share.audit(now=later)) == {}


def test_a_run_whose_record_does_not_verify_is_not_called_unfinished(tmp_path: Path) -> None:
    share = Share(tmp_path)
    share.record()
    ended = new_run_id(NOW)
    share.store.mark_running(RunMarker(ended, "collect", NOW, NOW + timedelta(minutes=5)))
    (tmp_path / "share" / layout.run_record_path(ended)).write_text("{}")  # it wrote one, changed since
    report = share.audit(now=NOW + timedelta(minutes=6))
    assert kinds(report) == {"run-record-invalid": Severity.INTEGRITY}, report.findings


def test_prune_keeps_markers_the_audit_still_needs(tmp_path: Path) -> None:
    """Not removed: a marker that does not verify (the audit reports it), one of a run that may still be going
    beside a record that does not verify, and one of a run out of time that committed (run-record-missing
    names its times)."""
    share = Share(tmp_path, until=NOW + timedelta(minutes=5))  # ms01 committed, no record: a lost record
    later = NOW + timedelta(minutes=6)
    committed = share.audit(now=later).findings
    assert [f.kind for f in committed] == ["run-record-missing"] and "had to end by" in committed[0].message
    forged = new_run_id(NOW)
    other = RunMarker(forged, "backup", NOW, NOW)
    (tmp_path / "share" / layout.run_marker_path(forged)).write_bytes(other.to_bytes(Ed25519PrivateKey.generate()))
    going = new_run_id(NOW)
    share.store.mark_running(RunMarker(going, "backup", NOW, NOW + timedelta(days=1)))
    (tmp_path / "share" / layout.run_record_path(going)).write_text("{}")  # a record that does not verify
    store = BackupStore(LocalShare(tmp_path / "share"), share.key)
    assert plan_leftovers(store, now=later) == []
    kinds_later = kinds(share.audit(now=later))
    assert kinds_later == {
        "run-record-missing": Severity.INTEGRITY,
        "run-marker-invalid": Severity.INTEGRITY,
        "run-record-invalid": Severity.INTEGRITY,
    }, kinds_later


def test_a_marker_left_beside_its_record_is_pruned(tmp_path: Path) -> None:
    share = Share(tmp_path)
    kept = share.marker.read_bytes()
    share.record()
    share.marker.write_bytes(kept)
    store = BackupStore(LocalShare(tmp_path / "share"), share.key)
    left = plan_leftovers(store, now=NOW)
    assert [(item.path, item.kind) for item in left] == [(share.marker_path, "marker")]
    assert remove_leftovers(store, left) == left and not share.marker.exists()


def test_a_backup_step_whose_marker_the_share_refuses_contacts_no_server(tmp_path: Path) -> None:
    """A runbook probes the share first; a share that refuses the step's marker later fails the step for
    every host (kind share), and no server is contacted."""
    lab = make_lab_inventory(tmp_path / "lab", fleet={"PROD": {"p-ms01": {"role": "management_server"}}})
    inventory = load_inventory(lab.inventory)
    lab.share.mkdir()
    store = context.open_store(inventory, LocalShare(lab.share), sign=True)
    real = store.share.write_new

    def refuse_markers(path: str, data: bytes) -> None:
        if layout.marker_run_id(path):
            raise ShareError(f"share {store.share.url}: cannot write {path}: disk full")
        real(path, data)

    store.share.write_new = refuse_markers  # type: ignore[method-assign]
    playbook = tmp_path / "backup.yml"
    playbook.write_text("name: nightly\nsteps:\n  - backup\n")

    @contextmanager
    def progress(_title: str, _hosts: list[str]) -> Iterator[RunnerEvents]:
        yield RunnerEvents()

    ctx = PlaybookContext(
        inv=inventory, store=store, password=Secret("Lab-Backup-Test-1", "test"), winrm_passwords={},
        progress=progress, confirm=lambda _request: True,
    )  # fmt: skip
    result = PlaybookRun(load_playbook(playbook), list(inventory.hosts.values()), ctx).run()
    (step,) = result.steps
    assert step.status is Status.FAILED and "disk full" in step.summary and "write probe" in step.summary
    assert [(cell.host, cell.kind) for cell in step.hosts] == [("p-ms01", "share")]
    assert not lab.journal.exists()  # the lab answered no request


def test_a_backup_beside_an_audit_end_to_end(
    lab_inventory: Callable[..., LabFiles], keyfleet: Callable[..., CliRun], tmp_path: Path
) -> None:
    """A real backup (one slow server) and, while it runs, real audits: no integrity alarm, the run is under way."""
    fleet = {"PROD": {"p-ms01": {"role": "management_server"}, "p-ms02": {"role": "management_server"}}}
    lab = lab_inventory(fleet=fleet, faults={"p-ms02": ["latency:1.0"]})
    home = keyfleet.home  # type: ignore[attr-defined]
    argv = [sys.executable, "-m", "orchestrator", "backup", "--json", "-i", str(lab.inventory)]
    backup = subprocess.Popen(
        argv, env=cli_env(home), cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while not list((lab.share / "log").glob("*")) and backup.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # until p-ms01's key file is committed
        assert backup.poll() is None, "the slow server should keep the backup going"
        markers = list((lab.share / "runs").glob("*.running"))
        assert len(markers) == 1
        audit = keyfleet("audit", "--format", "json", "-i", str(lab.inventory))
        assert backup.poll() is None, "the audit must have run beside the backup"
        assert audit.stdout, audit.stderr
        document = json.loads(audit.stdout)
        found = {f["kind"]: f["severity"] for f in document["findings"]}
        assert found == {"run-in-progress": "warning"}, document["findings"]
        assert audit.returncode == 1, audit.stderr  # p-ms02 not backed up yet: a gap
        out, err = backup.communicate(timeout=120)
    finally:
        if backup.poll() is None:
            backup.kill()
            backup.wait()
    assert backup.returncode == 0, err
    assert json.loads(out)["summary"]["ok"] == 2
    assert list((lab.share / "runs").glob("*.running")) == []
    after = keyfleet("audit", "--format", "json", "-i", str(lab.inventory))
    assert after.returncode == 0 and json.loads(after.stdout)["findings"] == [], after.stdout
