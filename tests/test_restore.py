"""Restores through the real CLI against the lab fleet: the DR drill, refusals, integrity, no leaks."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from orchestrator.inventory.model import Role
from orchestrator.lab.config import LabHostSettings
from orchestrator.lab.machine import Machine
from tests.conftest import LAB_SIGNING, LabFiles, make_lab_inventory
from tests.leaks import LeakSearch
from tests.share_history import compact, read_share

pytestmark = pytest.mark.e2e

FLEET = {
    "DR": {
        "r-ms01": {"role": "management_server"},
        "r-dw01": {"role": "dw_management_server", "scheme": "https", "transport": "basic", "ca_bundle": "lab"},
    }
}


def server(lab: LabFiles, name: str = "r-ms01") -> Machine:
    """The lab server's simulated registry, as the next CLI run will see it (seed 1, as written)."""
    role = Role(FLEET["DR"][name]["role"])
    return Machine(name, role, LabHostSettings(), lab.state, 1)


def backed_up(tmp_path: Path, keyfleet, env: dict[str, str] | None = None) -> LabFiles:
    lab = make_lab_inventory(tmp_path / "lab", fleet=FLEET)
    run = keyfleet("backup", "-i", str(lab.inventory), env=env)
    assert run.returncode == 0, run.stderr
    return lab


def entry_of(lab: LabFiles, host: str) -> dict:
    manifest = read_share(lab.share, LAB_SIGNING["public_key"])
    return next(e for e in manifest["entries"] if e["host"] == host)


def journal_lines(lab: LabFiles) -> int:
    return len(lab.journal.read_text().splitlines()) if lab.journal.exists() else 0


def edit_host(files: LabFiles, host: str, **settings: object) -> None:
    document = yaml.safe_load(files.inventory.read_text())
    document["management_groups"]["DR"]["hosts"][host].update(settings)
    files.inventory.write_text(yaml.safe_dump(document, sort_keys=False))


def restore(keyfleet, lab: LabFiles, *args: str, env: dict[str, str] | None = None):
    return keyfleet("restore", "-i", str(lab.inventory), "--host", "r-ms01", *args, env=env)


def test_dr_drill_backup_rebuild_restore(tmp_path, keyfleet):
    lab = backed_up(tmp_path, keyfleet)
    original = server(lab).current_key()
    server(lab).rebuild()  # a fresh installation: Setup made a new key
    assert server(lab).current_key() != original
    run = restore(keyfleet, lab, "--yes", "--json")
    assert run.returncode == 0, run.stderr
    assert server(lab).current_key() == original
    document = json.loads(run.stdout)
    entry = entry_of(lab, "r-ms01")
    assert document["entry"]["id"] == entry["id"]
    assert document["server"]["sha256"] == entry["sha256"]
    assert document["exit_code"] == 0
    record = json.loads((lab.share / document["run_record"]).read_text())
    assert record["command"] == "restore"
    assert [(o["host"], o["status"], o["entry_id"]) for o in record["outcomes"]] == [("r-ms01", "ok", entry["id"])]
    assert f"restored {entry['id']} onto r-ms01" in run.stderr


def test_wrong_password_is_refused_by_the_verifier_and_leaves_the_key(tmp_path, keyfleet):
    lab = backed_up(tmp_path, keyfleet)
    server(lab).rebuild()
    rebuilt = server(lab).current_key()
    before = journal_lines(lab)
    run = restore(keyfleet, lab, "--yes", "--json", env={"KEYFLEET_BACKUP_PASSWORD": "Not-The-Backup-Password"})
    assert run.returncode == 2, run.stderr
    assert json.loads(run.stdout)["error"]["kind"] == "config"
    assert "password does not match password_id" in run.stderr and "Traceback" not in run.stderr
    assert journal_lines(lab) == before  # refused before the server was contacted
    assert server(lab).current_key() == rebuilt


def test_restore_onto_another_role_is_refused_before_any_connection(tmp_path, keyfleet):
    lab = backed_up(tmp_path, keyfleet)
    before = journal_lines(lab)
    edit_host(lab, "r-ms01", role="dw_management_server")
    run = restore(keyfleet, lab, "--yes")
    assert run.returncode == 2, run.stderr
    assert "the key of a management_server" in run.stderr
    assert "same computer name and role" in run.stderr
    assert journal_lines(lab) == before


def helpers_sent(lab: LabFiles, host: str) -> list[str]:
    """The helpers the lab's server ``host`` was sent, in order (from the Send requests in its journal)."""
    sent = []
    for line in lab.journal.read_text().splitlines():
        entry = json.loads(line)
        if entry["host"] == host and entry["operation"] == "Send" and entry.get("request"):
            sent.append(json.loads(entry["request"])["helper"])
    return sent


def test_server_reporting_another_role_is_refused_before_the_key_is_sent(tmp_path, keyfleet):
    """The probe (no key file, no password) names the server's roles first: a server of another role
    never receives the key file or the backup password."""
    lab = backed_up(tmp_path, keyfleet)
    key = server(lab).current_key()
    edit_host(lab, "r-ms01", lab={"faults": ["wrong-role"]})
    before = len(helpers_sent(lab, "r-ms01"))
    run = restore(keyfleet, lab, "--yes", "--json")
    assert run.returncode == 1, run.stderr
    outcome = json.loads(run.stdout)["outcomes"][0]
    assert outcome["kind"] == "role-mismatch" and "nothing was sent" in outcome["message"]
    assert helpers_sent(lab, "r-ms01")[before:] == ["probe"]
    assert server(lab).current_key() == key


def test_a_server_of_another_name_never_receives_the_key(tmp_path, keyfleet):
    """The inventory's address for r-ms01 leads to another machine (a DNS or DHCP mistake in a recovery):
    the probe's computer name refuses it before the key file and the password are sent."""
    from orchestrator.inventory.loader import load_inventory
    from orchestrator.lab.fleet import serving

    lab = backed_up(tmp_path, keyfleet)
    document = yaml.safe_load(lab.inventory.read_text())
    document["lab"]["serve"] = False  # the fleet is served below, each machine at its own address
    hosts = document["management_groups"]["DR"]["hosts"]
    # r-ms01's entry now leads to the machine r-dw01 (its address, and the https listener it serves)
    hosts["r-ms01"].update({k: v for k, v in hosts["r-dw01"].items() if k != "role"})
    mistaken = lab.inventory.with_name("mistaken.yml")
    mistaken.write_text(yaml.safe_dump(document, sort_keys=False))
    before = len(helpers_sent(lab, "r-dw01"))
    with serving(load_inventory(lab.inventory)):
        run = keyfleet("restore", "-i", str(mistaken), "--host", "r-ms01", "--yes", "--json")
    assert run.returncode == 1, run.stderr
    outcome = json.loads(run.stdout)["outcomes"][0]
    assert outcome["kind"] == "name-mismatch" and "nothing was sent" in outcome["message"], outcome
    assert helpers_sent(lab, "r-dw01")[before:] == ["probe"]  # the machine at that address got no key


def test_entry_of_another_server_is_refused(tmp_path, keyfleet):
    lab = backed_up(tmp_path, keyfleet)
    run = restore(keyfleet, lab, "--yes", "--entry", entry_of(lab, "r-dw01")["id"])
    assert run.returncode == 2, run.stderr
    assert "is a backup of r-dw01, not of r-ms01" in run.stderr


def test_altered_key_file_or_manifest_is_an_integrity_failure(tmp_path, keyfleet):
    lab = backed_up(tmp_path, keyfleet)
    before = journal_lines(lab)
    key_file = lab.share / entry_of(lab, "r-ms01")["path"]
    data = bytearray(key_file.read_bytes())
    data[-1] ^= 0x01
    key_file.write_bytes(bytes(data))
    run = restore(keyfleet, lab, "--yes")
    assert run.returncode == 3, run.stderr
    assert "does not match its SHA-256" in run.stderr
    key_file.write_bytes(bytes(data[:-1]) + bytes([data[-1] ^ 0x01]))  # repaired
    compact(lab.share, LAB_SIGNING["private_key"])
    manifest = lab.share / "manifest.json"
    text = manifest.read_text()
    altered = re.sub(r'"password_id": ?"test-1"', '"password_id":"test-2"', text, count=1)  # any JSON layout
    assert altered != text
    manifest.write_text(altered)
    run = restore(keyfleet, lab, "--yes")
    assert run.returncode == 3, run.stderr
    assert "signature does not verify" in run.stderr
    assert journal_lines(lab) == before


def test_without_a_terminal_a_restore_needs_yes(tmp_path, keyfleet):
    lab = backed_up(tmp_path, keyfleet)
    before = journal_lines(lab)
    run = restore(keyfleet, lab)
    assert run.returncode == 2
    assert "no terminal to ask on; pass --yes" in run.stderr
    assert journal_lines(lab) == before


def test_no_secret_leaks_in_restores(tmp_path, keyfleet):
    password = f"Unique-Backup-{os.urandom(6).hex()}"
    wrong = f"Unique-Wrong-{os.urandom(6).hex()}"
    winrm_password = f"Unique-WinRM-{os.urandom(6).hex()}"
    lab = make_lab_inventory(tmp_path / "lab", fleet=FLEET, winrm_password="env:KF_TEST_WINRM_PASSWORD")
    env = {"KEYFLEET_BACKUP_PASSWORD": password, "KF_TEST_WINRM_PASSWORD": winrm_password}
    runs = [keyfleet("backup", "-i", str(lab.inventory), env=env)]
    server(lab).rebuild()
    runs.append(restore(keyfleet, lab, "--yes", "--json", "-v", env={**env, "KEYFLEET_BACKUP_PASSWORD": wrong}))
    runs.append(restore(keyfleet, lab, "--yes", "--json", "-v", env=env))
    assert [r.returncode for r in runs] == [0, 2, 0], runs[-1].stderr
    search = LeakSearch({"backup password": password, "wrong password": wrong, "winrm password": winrm_password})
    for index, run in enumerate(runs):
        search.add(f"stdout {index}", run.stdout)
        search.add(f"stderr {index}", run.stderr)
        search.add(f"argv {index}", " ".join(run.args))
    search.add_folder(tmp_path)  # share, run records, lab journal, lab state, debug log (HOME)
    assert search.assert_clean() >= 5
