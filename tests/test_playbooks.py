"""Runbooks through the real CLI against the lab fleet: the shipped playbooks, failures, validation."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from orchestrator.errors import ConfigError, ShareError
from orchestrator.inventory.loader import load_inventory
from orchestrator.inventory.model import Role
from orchestrator.jobs.context import open_store
from orchestrator.jobs.playbook_schema import load_playbook, select_playbook_hosts
from orchestrator.lab.config import LabHostSettings
from orchestrator.lab.machine import Machine
from orchestrator.share import layout
from orchestrator.share.local import LocalShare
from orchestrator.share.runrecord import HostOutcome, RunMarker, RunRecord, new_run_id
from orchestrator.status import Status
from tests.conftest import REPO, make_lab_inventory
from tests.leaks import LeakSearch
from tests.test_run_markers import refusing_records

PLAYBOOKS = REPO / "playbooks"
FLEET = {
    "PB": {
        "p-ms01": {"role": "management_server"},
        "p-dw01": {"role": "dw_management_server", "scheme": "https", "transport": "basic", "ca_bundle": "lab"},
        "p-portal01": {"role": "self_service_portal"},
    }
}


def play(keyfleet, name: str, inventory: Path, *args: str, env: dict[str, str] | None = None):
    return keyfleet("run", str(PLAYBOOKS / name), "-i", str(inventory), *args, env=env)


def steps_of(run) -> dict[str, dict]:
    return {s["name"]: s for s in json.loads(run.stdout)["steps"]}


@pytest.mark.parametrize("name", ["post-deployment.yml", "backup-all.yml", "audit.yml", "dr-restore.yml"])
def test_shipped_playbooks_are_valid_and_documented(name):
    playbook = load_playbook(PLAYBOOKS / name)
    assert playbook.steps and playbook.description
    assert (PLAYBOOKS / name).read_text().startswith("# ")


def test_a_backup_step_writes_the_record_an_earlier_run_kept_and_says_so(tmp_path, keyfleet):
    """A run record the share refused is kept by the controller; a runbook's backup step writes it before
    its own marker, and the step's warnings name it."""
    lab = make_lab_inventory(tmp_path / "lab", fleet=FLEET)
    lab.share.mkdir()
    store = open_store(load_inventory(lab.inventory), LocalShare(lab.share), sign=True)
    earlier = new_run_id()
    now = datetime.now(UTC)
    store.mark_running(RunMarker(earlier, "collect", now, now + timedelta(hours=1)))
    entry = store.add(
        host="p-ms01", group="PB", role="management_server", data=b"k" * 64, password_id="lab", run_id=earlier
    )
    store.share.write_new = refusing_records(store.share.write_new)  # type: ignore[method-assign]
    outcome = HostOutcome("p-ms01", "PB", "management_server", Status.OK, entry_id=entry.id)
    with pytest.raises(ShareError):
        store.write_run_record(RunRecord(earlier, "collect", now, now, "inv.yml", store.share.url, False, (outcome,)))
    playbook = tmp_path / "backup.yml"
    playbook.write_text("name: nightly\nsteps:\n  - backup\n")
    run = keyfleet("run", str(playbook), "-i", str(lab.inventory), "--json")
    assert run.returncode == 0, run.stderr
    (step,) = json.loads(run.stdout)["steps"]
    assert any(f"which run {earlier} could not write to the share" in w for w in step["warnings"]), step
    assert (lab.share / layout.run_record_path(earlier)).is_file()
    assert list((lab.share / "runs").glob("*.running")) == []


@pytest.mark.e2e
def test_post_deployment_covers_every_selected_server(tmp_path, keyfleet):
    lab = make_lab_inventory(tmp_path / "lab", fleet=FLEET)
    run = play(keyfleet, "post-deployment.yml", lab.inventory, "--json")
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    assert [s["name"] for s in document["steps"]] == ["doctor", "backup", "verify", "audit"]
    assert {s["status"] for s in document["steps"]} == {"ok"}
    coverage = steps_of(run)["audit"]["coverage"]
    assert (coverage["percent"], coverage["servers"], coverage["required"]) == (100.0, 3, 100.0)
    assert coverage["max_age_seconds"] == 3600
    for step in document["steps"]:
        assert {h["host"]: h["status"] for h in step["hosts"]} == dict.fromkeys(FLEET["PB"], "ok")
    assert "coverage 100% of 3 selected server(s)" in run.stderr
    record = json.loads((lab.share / document["run_records"][0]).read_text())
    assert record["command"] == "run" and {o["status"] for o in record["outcomes"]} == {"ok"}


@pytest.mark.e2e
def test_post_deployment_with_a_faulty_server_names_it(tmp_path, keyfleet):
    lab = make_lab_inventory(tmp_path / "lab", fleet=FLEET, faults={"p-dw01": ["not-admin"]})
    run = play(keyfleet, "post-deployment.yml", lab.inventory, "--json")
    assert run.returncode == 1, run.stderr
    document = json.loads(run.stdout)
    assert [(f["host"], f["name"], f["kind"]) for f in document["failed_hosts"]] == [("p-dw01", "doctor", "not-admin")]
    steps = steps_of(run)
    backed_up = {h["host"]: h["status"] for h in steps["backup"]["hosts"]}
    assert backed_up == {"p-ms01": "ok", "p-dw01": "skipped", "p-portal01": "ok"}
    assert steps["audit"]["status"] == "failed"
    assert steps["audit"]["coverage"]["percent"] == pytest.approx(66.7)
    assert "failed (exit 1); failed: p-dw01" in run.stderr
    # the server left out of the backup step did not succeed: the run record says why, and the next
    # `--limit @last-failed` takes it
    record = json.loads((lab.share / steps["backup"]["run_record"]).read_text())
    (left_out,) = [o for o in record["outcomes"] if o["host"] == "p-dw01"]
    assert (left_out["status"], left_out["kind"]) == ("skipped", "not-admin")
    again = keyfleet("backup", "-i", str(lab.inventory), "--limit", "@last-failed", "--check", "--json")
    assert again.returncode == 0, again.stderr
    assert [h["host"] for h in json.loads(again.stdout)["plan"]["hosts"]] == ["p-dw01"]


@pytest.mark.e2e
def test_limit_narrows_the_playbook_and_check_touches_nothing(tmp_path, keyfleet):
    lab = make_lab_inventory(tmp_path / "lab", fleet=FLEET)
    run = play(keyfleet, "post-deployment.yml", lab.inventory, "--limit", "role:management_server", "--check", "--json")
    assert run.returncode == 0, run.stderr
    plan = json.loads(run.stdout)["plan"]
    assert [(s["name"], s["hosts"]) for s in plan][:2] == [("doctor", ["p-ms01"]), ("backup", ["p-ms01"])]
    assert "step 4 audit (max_age: 1h, require_coverage: 100)" in run.stderr
    assert not lab.journal.exists()
    assert not (lab.share / "manifest.json").exists()


@pytest.mark.e2e
def test_nightly_backup_skips_fresh_servers_then_audits(tmp_path, keyfleet):
    lab = make_lab_inventory(tmp_path / "lab", fleet=FLEET)
    first = play(keyfleet, "backup-all.yml", lab.inventory, "--json")
    assert first.returncode == 0, first.stderr
    second = play(keyfleet, "backup-all.yml", lab.inventory, "--json")
    assert second.returncode == 0, second.stderr
    assert {h["status"] for h in steps_of(second)["backup"]["hosts"]} == {"skipped"}
    assert steps_of(second)["audit"]["coverage"]["percent"] == 100.0
    audit = play(keyfleet, "audit.yml", lab.inventory)
    assert audit.returncode == 0, audit.stderr
    assert list((lab.share / "runs").glob("*.running")) == []  # each backup step's marker went with its record


@pytest.mark.e2e
def test_dr_restore_playbook_drill(tmp_path, keyfleet):
    lab = make_lab_inventory(tmp_path / "lab", fleet=FLEET)
    assert keyfleet("backup", "-i", str(lab.inventory)).returncode == 0
    machine = Machine("p-ms01", Role.MANAGEMENT_SERVER, LabHostSettings(), lab.state, 1)
    original = machine.current_key()
    machine.rebuild()
    several = play(keyfleet, "dr-restore.yml", lab.inventory)
    assert several.returncode == 2
    assert "dr-restore.yml:" in several.stderr and "--limit HOST" in several.stderr
    unattended = play(keyfleet, "dr-restore.yml", lab.inventory, "--limit", "p-ms01")
    assert unattended.returncode == 2
    assert "confirm: false" in unattended.stderr
    rehearsal = tmp_path / "dr-rehearsal.yml"
    rehearsal.write_text((PLAYBOOKS / "dr-restore.yml").read_text().replace("confirm: true", "confirm: false"))
    run = keyfleet("run", str(rehearsal), "-i", str(lab.inventory), "--limit", "p-ms01", "--json")
    assert run.returncode == 0, run.stderr
    assert [(s["name"], s["status"]) for s in json.loads(run.stdout)["steps"]] == [
        ("doctor", "ok"),
        ("restore", "ok"),
        ("verify", "ok"),
    ]
    assert machine.current_key() == original


def test_a_backup_step_shows_what_a_host_that_succeeded_left_behind(tmp_path, keyfleet):
    """Antivirus holds a file in the helper's temporary folder (which held the key file): the backup
    succeeds, and the runbook says so as keyfleet backup does, on the terminal and in --json."""
    lab = make_lab_inventory(tmp_path / "lab", fleet=FLEET, faults={"p-ms01": ["cleanup-locked"]})
    run = play(keyfleet, "backup-all.yml", lab.inventory, "--json")
    assert run.returncode == 0, run.stderr
    (warning,) = [w for w in steps_of(run)["backup"]["warnings"] if w.startswith("p-ms01: warning:")]
    assert "temporary folder" in warning and warning in run.stderr


def test_a_restore_step_checks_the_password_of_the_backup_s_own_password_id(tmp_path, keyfleet):
    """The inventory moved on to a new password_id (and password); the backup to restore was taken under the
    old one. The restore step checks the password given against the backup's id, as keyfleet restore does:
    the step fails (kind config), the server gets nothing, and the runbook still reports its steps."""
    lab = make_lab_inventory(tmp_path / "lab", fleet=FLEET)
    assert keyfleet("backup", "-i", str(lab.inventory), "--limit", "p-ms01").returncode == 0
    document = yaml.safe_load(lab.inventory.read_text())
    old_id = document["backup"]["password_id"]
    document["backup"].update(password_id="next-year", password="Another-Backup-Pw-2")
    lab.inventory.write_text(yaml.safe_dump(document, sort_keys=False))
    sends = sum(1 for line in lab.journal.read_text().splitlines() if '"Send"' in line)
    rehearsal = tmp_path / "restore-only.yml"
    rehearsal.write_text("name: restore only\nsteps:\n  - restore: {confirm: false}\n")
    run = keyfleet("run", str(rehearsal), "-i", str(lab.inventory), "--limit", "p-ms01", "--json")
    assert run.returncode == 1, run.stderr
    (step,) = json.loads(run.stdout)["steps"]
    (cell,) = step["hosts"]
    assert step["status"] == "failed" and cell["kind"] == "config", step
    assert f"password does not match password_id {old_id!r}" in cell["message"]
    assert sum(1 for line in lab.journal.read_text().splitlines() if '"Send"' in line) == sends


BAD_PLAYBOOKS = {  # text, line, key, part of the message
    "unknown step": ("name: x\nsteps:\n  - doctor\n  - bakup\n", 4, "steps[2]", "did you mean 'backup'"),
    "unknown key": ("name: x\nhost: all\nsteps: [doctor]\n", 2, "host", "did you mean 'hosts'"),
    "unknown option": (
        "name: x\nsteps:\n  - audit:\n      max_age: 1h\n      coverage: 90\n",
        5,
        "steps[1].audit.coverage",
        "unknown option of audit",
    ),
    "unknown check": (
        "name: x\nsteps:\n  - doctor: {require: [reachable, admin]}\n",
        3,
        "steps[1].doctor.require[2]",
        "unknown check 'admin'",
    ),
    "bad duration": ("name: x\nsteps:\n  - backup: {only_stale: soon}\n", 3, "steps[1].backup.only_stale", "duration"),
    "bad hosts": ("name: x\nhosts: nosuch*\nsteps: [doctor]\n", 2, "hosts", "matches no host"),
    "yaml error": ("name: x\nsteps: [doctor\n", 3, None, "YAML syntax error"),
}


@pytest.mark.parametrize("case", list(BAD_PLAYBOOKS))
def test_bad_playbooks_name_file_line_and_key(tmp_path, case):
    text, line, key, message = BAD_PLAYBOOKS[case]
    path = tmp_path / "bad.yml"
    path.write_text(text)
    lab = make_lab_inventory(tmp_path / "lab", fleet=FLEET)
    with pytest.raises(ConfigError) as caught:
        select_playbook_hosts(load_playbook(path), load_inventory(lab.inventory), None)
    error = caught.value
    assert (error.file, error.line, error.key) == (str(path), line, key)
    assert message in str(error)


@pytest.mark.e2e
def test_bad_playbook_through_the_cli_exits_2(tmp_path, keyfleet):
    path = tmp_path / "bad.yml"
    path.write_text("name: x\nsteps:\n  - doctor\n  - bakup: {}\n")
    lab = make_lab_inventory(tmp_path / "lab", fleet=FLEET)
    run = keyfleet("run", str(path), "-i", str(lab.inventory))
    assert run.returncode == 2
    assert run.stderr.strip() == (
        f"keyfleet: {path}:4: steps[2]: unknown step 'bakup'; did you mean 'backup'? "
        "(steps: doctor, backup, verify, audit, restore)"
    )
    assert not lab.journal.exists()


@pytest.mark.e2e
def test_no_secret_leaks_in_a_playbook_run(tmp_path, keyfleet):
    password = f"Unique-Backup-{os.urandom(6).hex()}"
    winrm_password = f"Unique-WinRM-{os.urandom(6).hex()}"
    lab = make_lab_inventory(
        tmp_path / "lab", fleet=FLEET, faults={"p-portal01": ["tool-failing"]}, winrm_password="env:KF_TEST_WINRM"
    )
    env = {"KEYFLEET_BACKUP_PASSWORD": password, "KF_TEST_WINRM": winrm_password}
    run = play(keyfleet, "post-deployment.yml", lab.inventory, "--json", "-v", env=env)
    assert run.returncode == 1, run.stderr
    assert json.loads(run.stdout)["failed_hosts"][0]["kind"] == "tool-failed"
    search = LeakSearch({"backup password": password, "winrm password": winrm_password})
    search.add("stdout", run.stdout)
    search.add("stderr", run.stderr)
    search.add("argv", " ".join(run.args))
    search.add_folder(tmp_path)
    assert search.assert_clean() >= 5
