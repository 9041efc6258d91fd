"""A wrong share says so first: a missing folder is exit 2 for audit, restore and prune; backup makes it
only when its parent exists; an unwritable share is found by a write probe before any server is contacted."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CliRun, LabFiles

Keyfleet = Callable[..., CliRun]


@pytest.mark.parametrize(
    "command",
    [("audit",), ("prune", "--keep", "1"), ("restore", "--host", "t-ms01", "--yes")],
    ids=["audit", "prune", "restore"],
)
def test_a_missing_share_folder_is_named(
    command: tuple[str, ...], lab_inventory: Callable[..., LabFiles], keyfleet: Keyfleet, tmp_path: Path
) -> None:
    lab = lab_inventory()
    missing = tmp_path / "no" / "such" / "share"
    run = keyfleet(command[0], "-i", str(lab.inventory), "--share", str(missing), *command[1:])
    assert run.returncode == 2, run.stderr
    expected = f"keyfleet: share {missing} does not exist (check the path, or back up first)"
    assert run.stderr.strip().splitlines() == [expected]
    assert not missing.exists() and not lab.journal.exists()


def test_backup_does_not_invent_a_share_whose_parent_is_missing(
    lab_inventory: Callable[..., LabFiles], keyfleet: Keyfleet, tmp_path: Path
) -> None:
    lab = lab_inventory()
    missing = tmp_path / "typo" / "share"
    run = keyfleet("backup", "-i", str(lab.inventory), "--share", str(missing))
    assert run.returncode == 2
    assert f"share {missing} does not exist, nor does its parent folder" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert not missing.parent.exists() and not lab.journal.exists()


def test_backup_creates_a_new_share_folder_under_an_existing_parent(
    lab_inventory: Callable[..., LabFiles], keyfleet: Keyfleet, tmp_path: Path
) -> None:
    lab = lab_inventory(fleet={"TEST-PROD": {"t-ms01": {"role": "management_server"}}})
    fresh = tmp_path / "fresh-share"
    check = keyfleet("backup", "-i", str(lab.inventory), "--share", str(fresh), "--check")
    assert check.returncode == 0, check.stderr
    assert not fresh.exists()  # --check touches nothing
    run = keyfleet("backup", "-i", str(lab.inventory), "--share", str(fresh))
    assert run.returncode == 0, run.stderr
    assert (fresh / "manifest.json").is_file() and fresh.stat().st_mode & 0o777 == 0o700
    # the probe (the run's marker) is gone once the run record is written
    assert [p.name for p in (fresh / "runs").iterdir() if not p.name.endswith(".json")] == []


def test_an_unwritable_share_fails_before_any_server_is_contacted(
    lab_inventory: Callable[..., LabFiles], keyfleet: Keyfleet, tmp_path: Path
) -> None:
    lab = lab_inventory()
    share = tmp_path / "readonly-share"
    share.mkdir()
    # a file where the runs folder must be: no write can succeed, even as root (where modes do not bind)
    (share / "runs").write_text("not a folder")
    run = keyfleet("backup", "-i", str(lab.inventory), "--share", str(share))
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"keyfleet: share {share}: cannot "), run.stderr
    assert "before contacting any server" in lines[0]
    assert not lab.journal.exists()  # the lab answered no request at all


def test_a_share_failure_names_the_share_once() -> None:
    from orchestrator.console import failure_text
    from orchestrator.errors import ErrorKind

    message = "share /srv/keys: cannot write runs/x.json: permission denied"
    assert failure_text(ErrorKind.SHARE, message) == message  # not "share: share /srv/keys: ..."
    assert failure_text(ErrorKind.AUTH, "credentials rejected") == "auth: credentials rejected"
    assert failure_text(None, "not started") == "not started" and failure_text(ErrorKind.TIMEOUT, "") == "timeout"
