"""A share written by the keyfleet-manifest/1 release (tests/data/legacy-share): audited as it is,
upgraded in place by the next backup with every entry and run record kept, and the upgrade never
undone silently."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LAB_SIGNING, CliRun, LabFiles, make_lab_inventory
from tests.share_history import read_share

pytestmark = pytest.mark.e2e

Keyfleet = Callable[..., CliRun]
FIXTURE = Path(__file__).parent / "data" / "legacy-share"
FLEET: dict[str, dict[str, Any]] = {  # the servers the fixture holds backups of
    "TEST-PROD": {"t-ms01": {"role": "management_server"}, "t-dw01": {"role": "dw_management_server"}},
    "TEST-DEV": {"d-portal01": {"role": "self_service_portal"}},
}
LEGACY_IDS = {e["id"] for e in json.loads((FIXTURE / "manifest.json").read_text())["entries"]}


@pytest.fixture
def lab(tmp_path: Path) -> LabFiles:
    lab = make_lab_inventory(tmp_path / "lab", fleet=FLEET)
    shutil.copytree(FIXTURE, lab.share)
    return lab


def audit(keyfleet: Keyfleet, lab: LabFiles) -> tuple[int, dict[str, Any]]:
    run = keyfleet("audit", "-i", str(lab.inventory), "--format", "json", "--max-age", "3650d")
    assert run.stdout, run.stderr
    return run.returncode, json.loads(run.stdout)


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_old_share_is_audited_without_being_changed(keyfleet: Keyfleet, lab: LabFiles) -> None:
    before = snapshot(lab.share)
    code, report = audit(keyfleet, lab)
    assert code == 1  # t-dw01's latest attempt failed
    assert report["manifest"]["signature"] == "valid" and report["manifest"]["generation"] == 0
    assert [(f["kind"], f["severity"]) for f in report["findings"]] == [("legacy-format", "warning")]
    statuses = {s["host"]: s["status"] for s in report["servers"]}
    assert statuses == {"t-ms01": "covered", "t-dw01": "failing", "d-portal01": "covered"}
    assert snapshot(lab.share) == before


def test_old_share_is_upgraded_by_the_next_backup_keeping_everything(keyfleet: Keyfleet, lab: LabFiles) -> None:
    old_records = {p.name: p.read_bytes() for p in (lab.share / "runs").iterdir()}
    run = keyfleet("backup", "-i", str(lab.inventory))
    assert run.returncode == 0, run.stderr
    notices = [line for line in run.stderr.splitlines() if "upgraded to the hash-chained history" in line]
    assert len(notices) == 1 and "5 entries and 2 run records kept" in notices[0]
    history = read_share(lab.share, LAB_SIGNING["public_key"])  # every signature and link checked
    ids = {e["id"] for e in history["entries"]}
    assert ids > LEGACY_IDS and len(ids) == len(LEGACY_IDS) + 3
    first = json.loads((lab.share / "log" / "000000000001.json").read_text())
    assert first["upgraded_from"] and sorted(first["legacy_records"]) == sorted(f"runs/{n}" for n in old_records)
    assert {p.name: p.read_bytes() for p in (lab.share / "runs").iterdir() if p.name in old_records} == old_records
    code, report = audit(keyfleet, lab)
    assert code == 0 and report["findings"] == [], report["findings"]
    assert {s["status"] for s in report["servers"]} == {"covered"}


def test_an_old_manifest_put_back_beside_the_log_loses_nothing(keyfleet: Keyfleet, lab: LabFiles) -> None:
    """The state of an upgrade interrupted before its checkpoint: the log's first segment names the file."""
    old_manifest = (lab.share / "manifest.json").read_bytes()
    assert keyfleet("backup", "-i", str(lab.inventory)).returncode == 0
    (lab.share / "manifest.json").write_bytes(old_manifest)
    code, report = audit(keyfleet, lab)
    assert code == 0 and report["manifest"]["entries"] == 8


def test_an_undone_upgrade_is_a_rollback(keyfleet: Keyfleet, lab: LabFiles, tmp_path: Path) -> None:
    old_manifest = (lab.share / "manifest.json").read_bytes()
    assert keyfleet("backup", "-i", str(lab.inventory)).returncode == 0
    (lab.share / "manifest.json").write_bytes(old_manifest)
    shutil.rmtree(lab.share / "log")
    code, report = audit(keyfleet, lab)
    assert code == 3 and "rollback" in {f["kind"] for f in report["findings"]}
    run = keyfleet("backup", "-i", str(lab.inventory))
    assert run.returncode == 3 and "rollback" in run.stderr


def test_prune_upgrades_an_old_share_first(keyfleet: Keyfleet, lab: LabFiles) -> None:
    run = keyfleet("prune", "-i", str(lab.inventory), "--keep", "1")
    assert run.returncode == 0, run.stderr
    assert "upgraded to the hash-chained history" in run.stderr and "removed 2 key files" in run.stdout
    history = read_share(lab.share, LAB_SIGNING["public_key"])
    assert len(history["entries"]) == 3 and history["generation"] == 2
    code, report = audit(keyfleet, lab)
    assert code == 1 and not [f for f in report["findings"] if f["severity"] == "integrity"], report["findings"]


def test_a_restore_from_an_old_share_leaves_it_old_and_sound(keyfleet: Keyfleet, lab: LabFiles) -> None:
    """A restore writes a signed run record at generation 0: no upgrade, and no false rollback."""
    # the fixture's key files are not lab key files, so the restore itself fails on the server: what
    # matters here is the run record it leaves on the share
    run = keyfleet("restore", "-i", str(lab.inventory), "--host", "t-ms01", "--yes")
    assert run.returncode in (0, 1) and "Traceback" not in run.stderr, run.stderr
    assert json.loads((lab.share / "manifest.json").read_text())["format"] == "keyfleet-manifest/1"
    _code, report = audit(keyfleet, lab)
    assert not [f for f in report["findings"] if f["severity"] == "integrity"], report["findings"]
    assert keyfleet("backup", "-i", str(lab.inventory)).returncode == 0
