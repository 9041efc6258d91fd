"""Attacks on the share's history, through the real CLI, on a local share and on a real Samba share:
a rolled-back manifest and log, a replaced or deleted run record, a symlinked group folder, and the
whole share put back from an older copy. Each ends in exit 3 with a named finding."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CliRun, LabFiles, make_lab_inventory
from tests.smbd import smbd_server  # noqa: F401 - pytest finds the session fixture here

pytestmark = pytest.mark.e2e

Keyfleet = Callable[..., CliRun]
PAIR: dict[str, dict[str, Any]] = {
    "PAIR": {
        "p-ms01": {"role": "management_server"},
        "p-dw01": {"role": "dw_management_server", "scheme": "https", "transport": "basic", "ca_bundle": "lab"},
    }
}


@dataclass
class Target:
    """Where the share lives on disk (``root``), and how the CLI reaches it."""

    lab: LabFiles
    root: Path
    args: list[str]
    env: dict[str, str]
    owner: str | None  # the SMB user owning files smbd serves

    def run(self, keyfleet: Keyfleet, command: str, *extra: str, state: Path | None = None) -> CliRun:
        env = dict(self.env)
        if state is not None:
            env["XDG_STATE_HOME"] = str(state)  # another controller: it never saw this share
        run = keyfleet(command, "-i", str(self.lab.inventory), *self.args, *extra, env=env)
        assert "Traceback" not in run.stderr, run.stderr
        return run

    def audit(self, keyfleet: Keyfleet, state: Path | None = None) -> tuple[int, set[str]]:
        run = self.run(keyfleet, "audit", "--format", "json", state=state)
        assert run.stdout, run.stderr
        document = json.loads(run.stdout)
        return run.returncode, {f["kind"] for f in document["findings"] if f["severity"] == "integrity"}

    def copy_back(self, source: Path, target: Path) -> None:
        """Put files back as an attacker with access to the server's disk would (smbd's user owns them)."""
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target)
        if self.owner:
            for path in [target, *(target.rglob("*") if target.is_dir() else [])]:
                shutil.chown(path, user=self.owner)


@pytest.fixture(params=["local", pytest.param("smb", marks=pytest.mark.smb)])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    lab = make_lab_inventory(tmp_path / "lab", fleet=PAIR)
    if request.param == "local":
        return Target(lab, lab.share, [], {}, None)
    server = request.getfixturevalue("smbd_server")
    server.start()
    folder = f"attack-{secrets.token_hex(4)}"  # one level: a backup creates a share folder whose parent exists
    return Target(lab, server.root / folder, ["--share", server.url(folder)], server.share_env(), server.user)


def backup(target: Target, keyfleet: Keyfleet) -> dict[str, Any]:
    run = target.run(keyfleet, "backup", "--json")
    assert run.returncode == 0, run.stderr
    return dict(json.loads(run.stdout))


def test_manifest_and_log_rolled_back_is_found_by_any_controller(
    target: Target, keyfleet: Keyfleet, tmp_path: Path
) -> None:
    backup(target, keyfleet)
    aside = tmp_path / "aside"
    shutil.copytree(target.root / "log", aside / "log")
    shutil.copy2(target.root / "manifest.json", aside / "manifest.json")
    backup(target, keyfleet)
    # put the older manifest and log back: the newer generations are gone, their key files orphans
    for segment in (target.root / "log").iterdir():
        if not (aside / "log" / segment.name).exists():
            segment.unlink()
    target.copy_back(aside / "manifest.json", target.root / "manifest.json")
    code, kinds = target.audit(keyfleet, state=tmp_path / "never-saw-it")
    assert code == 3 and "rollback" in kinds  # the newer signed run record names a newer generation
    code, kinds = target.audit(keyfleet)
    assert code == 3 and "rollback" in kinds
    run = target.run(keyfleet, "backup")
    assert run.returncode == 3 and "rollback" in run.stderr  # nothing is built on a rolled-back history


def test_run_record_replaced_or_deleted(target: Target, keyfleet: Keyfleet, tmp_path: Path) -> None:
    document = backup(target, keyfleet)
    record = target.root / "runs" / f"{document['run_id']}.json"
    original = record.read_bytes()
    edited = json.loads(original)
    edited["outcomes"][0]["status"] = "failed"
    record.write_text(json.dumps(edited))
    code, kinds = target.audit(keyfleet, state=tmp_path / "fresh-1")
    assert code == 3 and "run-record-invalid" in kinds
    record.unlink()
    code, kinds = target.audit(keyfleet, state=tmp_path / "fresh-2")
    assert code == 3 and "run-record-missing" in kinds
    record.write_bytes(original)
    if target.owner:
        shutil.chown(record, user=target.owner)
    assert target.audit(keyfleet)[0] == 0


def test_symlinked_group_folder(target: Target, keyfleet: Keyfleet, tmp_path: Path) -> None:
    backup(target, keyfleet)
    backup(target, keyfleet)
    outside = tmp_path / "elsewhere"
    shutil.move(target.root / "PAIR", outside)
    os.symlink(outside, target.root / "PAIR")
    before = sorted(p.relative_to(outside).as_posix() for p in outside.rglob("*"))
    code, kinds = target.audit(keyfleet)
    assert code == 3
    # locally the link itself is the finding; Samba (wide links = no) never follows a link leading out
    # of the share and answers "access denied" for every path through it
    assert ("symlink" if target.owner is None else "unreadable") in kinds
    run = target.run(keyfleet, "backup", "--json")
    assert run.returncode in (1, 3)
    assert {o["status"] for o in json.loads(run.stdout)["outcomes"]} == {"failed"}
    prune = target.run(keyfleet, "prune", "--keep", "1")
    if target.owner is None:
        assert prune.returncode == 3 and "symbolic link" in prune.stderr
    after = sorted(p.relative_to(outside).as_posix() for p in outside.rglob("*"))
    assert after == before  # nothing written or deleted through the link


def test_symlinked_group_folder_whose_target_the_share_can_read(target: Target, keyfleet: Keyfleet) -> None:
    """The link leads to a folder the share's user can read: locally still the `symlink` finding; Samba
    (wide links = no) leaves it out of listings and answers "not found", so its key files are `lost`."""
    backup(target, keyfleet)
    backup(target, keyfleet)
    outside = target.root.parent.parent / f"elsewhere-{secrets.token_hex(4)}"  # beside smbd's share folder
    shutil.move(target.root / "PAIR", outside)
    if target.owner:
        for path in [outside, *outside.rglob("*")]:
            shutil.chown(path, user=target.owner)
    os.symlink(outside, target.root / "PAIR")
    before = sorted((p.relative_to(outside).as_posix(), p.stat().st_mtime_ns) for p in outside.rglob("*"))
    code, kinds = target.audit(keyfleet)
    assert code == 3 and ("symlink" if target.owner is None else "lost") in kinds
    run = target.run(keyfleet, "backup", "--json")
    assert run.returncode in (1, 3)
    assert {o["status"] for o in json.loads(run.stdout)["outcomes"]} == {"failed"}
    prune = target.run(keyfleet, "prune", "--keep", "1")
    assert prune.returncode == 3 if target.owner is None else prune.returncode in (0, 3)
    after = sorted((p.relative_to(outside).as_posix(), p.stat().st_mtime_ns) for p in outside.rglob("*"))
    assert after == before  # nothing written or deleted through the link
    shutil.rmtree(outside)


def test_whole_share_put_back_from_an_older_copy(target: Target, keyfleet: Keyfleet, tmp_path: Path) -> None:
    backup(target, keyfleet)
    aside = tmp_path / "snapshot"
    shutil.copytree(target.root, aside)
    backup(target, keyfleet)
    shutil.rmtree(target.root)
    target.copy_back(aside, target.root)
    # a controller that never saw the newer generations cannot tell; this one can
    assert target.audit(keyfleet, state=tmp_path / "never-saw-it")[0] == 0
    code, kinds = target.audit(keyfleet)
    assert code == 3 and kinds == {"rollback"}
    for command, extra in (("backup", ()), ("restore", ("--host", "p-ms01", "--yes")), ("prune", ("--keep", "1"))):
        run = target.run(keyfleet, command, *extra)
        assert run.returncode == 3 and "rollback" in run.stderr, (command, run.stderr)


@pytest.mark.parametrize("where", ["runs/20991231T000000Z-ffffff.json", "runs/20991231T000000Z-ffffff.running"])
def test_json_nested_too_deep_is_an_integrity_finding(target: Target, keyfleet: Keyfleet, where: str) -> None:
    """200,000 nested brackets (RecursionError in json.loads) in a run record or marker: an invalid file
    like any other, exit 3, never an internal error; backup goes on beside it."""
    backup(target, keyfleet)
    target.root.joinpath(where).write_text("[" * 200_000 + "]" * 200_000)
    code, kinds = target.audit(keyfleet)
    assert code == 3 and kinds & {"run-record-invalid", "run-marker-invalid"}, kinds
    assert target.run(keyfleet, "backup").returncode == 0


def test_a_prune_that_meets_a_link_changes_nothing_and_leaves_no_marker(tmp_path: Path, keyfleet: Keyfleet) -> None:
    """The oldest key file is a link to a copy outside the share: prune never deletes through one, and
    finds it before its commit, so it refuses (exit 3) with the history unchanged, no run record and no
    run marker left behind (an audit would otherwise report a run that never ended)."""
    target = Target(make_lab_inventory(tmp_path / "lab", fleet=PAIR), tmp_path / "lab" / "share", [], {}, None)
    first = backup(target, keyfleet)
    backup(target, keyfleet)
    oldest = next(o for o in first["outcomes"] if o["host"] == "p-ms01")
    key_path = next(p for p in target.root.rglob("*.bin") if oldest["entry_id"].rsplit("-", 1)[-1] in p.name)
    outside = tmp_path / "outside.bin"
    shutil.copy2(key_path, outside)
    key_path.unlink()
    os.symlink(outside, key_path)
    generation = json.loads(target.run(keyfleet, "audit", "--format", "json").stdout)["manifest"]["generation"]
    run = target.run(keyfleet, "prune", "--keep", "1")
    assert run.returncode == 3 and "symbolic link" in run.stderr, run.stderr
    assert json.loads(target.run(keyfleet, "audit", "--format", "json").stdout)["manifest"]["generation"] == generation
    assert not [p for p in (target.root / "runs").glob("*.json") if json.loads(p.read_text())["command"] == "prune"]
    assert not list((target.root / "runs").glob("*.running"))
    assert outside.read_bytes() and key_path.is_symlink()


def test_a_huge_key_file_or_a_pipe_for_a_marker_is_a_finding_not_the_end_of_the_audit(
    target: Target, keyfleet: Keyfleet
) -> None:
    """A key file swapped for a 200 MB file, and a named pipe where a run marker would be: the audit still
    reports every server (the key file as altered, the marker as invalid) instead of stopping at the
    first unreadable file."""
    result = backup(target, keyfleet)
    entry_id = next(o["entry_id"] for o in result["outcomes"] if o["host"] == "p-ms01")
    key_path = next(p for p in target.root.rglob("*.bin") if entry_id.rsplit("-", 1)[-1] in p.name)
    with open(key_path, "r+b") as swapped:
        swapped.truncate(200 * 1024 * 1024)
    os.mkfifo(target.root / "runs" / "20991231T000000Z-ffffff.running")
    if target.owner:
        shutil.chown(target.root / "runs" / "20991231T000000Z-ffffff.running", user=target.owner)
    code, kinds = target.audit(keyfleet)
    assert code == 3 and "altered" in kinds and "run-marker-invalid" in kinds, kinds
