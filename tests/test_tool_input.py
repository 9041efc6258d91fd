"""How the password reaches SecureStorageBackup.exe, end to end through the command line: stdin, a
pseudo console, or the wizard and ``keyfleet collect``; doctor --tool-smoke finds out which."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator.inventory.loader import load_inventory
from orchestrator.lab.fleet import lab_machine
from orchestrator.lab.keyfile import unseal
from tests.conftest import LAB_SIGNING
from tests.leaks import LeakSearch
from tests.share_history import read_share

pytestmark = pytest.mark.e2e

FLEET: dict[str, dict[str, Any]] = {
    "TOOLS": {
        "s-ms01": {"role": "management_server"},
        "k-ms01": {"role": "management_server", "lab": {"faults": ["tool-readkey"]}},
        "w-dw01": {"role": "dw_management_server", "lab": {"faults": ["tool-wizard-only"]}},
        "o-ms01": {"role": "management_server", "lab": {"faults": ["tool-readkey"], "windows": "2016"}},
        "p-portal01": {
            "role": "self_service_portal",
            "scheme": "https",
            "transport": "basic",
            "ca_bundle": "lab",
            "lab": {"extra_roles": ["management_server"]},
        },
    }
}
PASSWORD = "Tool-Input-Pw-5c1e"
ENV = {"KEYFLEET_BACKUP_PASSWORD": PASSWORD}


def _outcomes(stdout: str) -> dict[str, dict[str, Any]]:
    return {o["host"]: o for o in json.loads(stdout)["outcomes"]}


def test_backup_uses_whatever_input_the_tool_takes(lab_inventory, keyfleet):
    lab = lab_inventory(fleet=FLEET)
    run = keyfleet("backup", "-i", str(lab.inventory), "--json", env=ENV)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    outcomes = _outcomes(run.stdout)
    assert outcomes["s-ms01"]["status"] == "ok" and outcomes["s-ms01"]["method"] == "stdin"
    assert outcomes["k-ms01"]["status"] == "ok" and outcomes["k-ms01"]["method"] == "console"
    assert outcomes["p-portal01"]["status"] == "ok"  # a portal beside a management server
    wizard, old = outcomes["w-dw01"], outcomes["o-ms01"]
    assert wizard["kind"] == "tool-interactive" and "keyfleet collect" in wizard["message"]
    assert old["kind"] == "console-unavailable" and "Windows Server 2016" in old["message"]
    assert "hint: this SecureStorageBackup.exe takes no typed password" in run.stderr
    manifest = read_share(lab.share, LAB_SIGNING["public_key"])
    methods = {e["host"]: e.get("method") for e in manifest["entries"]}
    assert methods == {"s-ms01": "stdin", "k-ms01": "console", "p-portal01": "stdin"}
    record = json.loads((lab.share / json.loads(run.stdout)["run_record"]).read_text())
    assert {o["host"]: o["method"] for o in record["outcomes"] if o["status"] == "ok"} == methods
    inv = load_inventory(lab.inventory)
    for host in methods:
        sealed = next((lab.share / e["path"]).read_bytes() for e in manifest["entries"] if e["host"] == host)
        assert unseal(sealed, PASSWORD) == lab_machine(inv, host).current_key()
    audit = keyfleet("audit", "-i", str(lab.inventory), "--format", "json")
    servers = {s["host"]: s for s in json.loads(audit.stdout)["servers"]}
    assert servers["k-ms01"]["method"] == "console" and servers["s-ms01"]["method"] == "stdin"


def test_restore_on_a_readkey_tool_goes_through_the_console(lab_inventory, keyfleet):
    lab = lab_inventory(fleet=FLEET)
    assert keyfleet("backup", "-i", str(lab.inventory), "--limit", "k-ms01", env=ENV).returncode == 0
    machine = lab_machine(load_inventory(lab.inventory), "k-ms01")
    original = machine.current_key()
    assert keyfleet("lab", "rebuild", "-i", str(lab.inventory), "--host", "k-ms01").returncode == 0
    restored = keyfleet("restore", "-i", str(lab.inventory), "--host", "k-ms01", "--yes", "--json", env=ENV)
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["server"]["method"] == "console"
    assert machine.current_key() == original


def test_doctor_tool_smoke_reports_the_method_that_works(lab_inventory, keyfleet):
    lab = lab_inventory(fleet=FLEET)
    plain = keyfleet("doctor", "-i", str(lab.inventory), "--json")
    assert all(h["server"]["tool_smoke"] is None for h in json.loads(plain.stdout)["hosts"])
    run = keyfleet("doctor", "-i", str(lab.inventory), "--tool-smoke", "--json")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    hosts = {h["host"]: h for h in json.loads(run.stdout)["hosts"]}
    works = {name: h["server"]["tool_smoke"]["works"] for name, h in hosts.items()}
    assert works == {"s-ms01": "stdin", "k-ms01": "console", "w-dw01": None, "o-ms01": None, "p-portal01": "stdin"}
    assert hosts["w-dw01"]["kind"] == "tool-interactive" and hosts["o-ms01"]["kind"] == "console-unavailable"
    readkey = hosts["k-ms01"]["server"]["tool_smoke"]["attempts"]
    assert readkey[0]["method"] == "stdin" and "Cannot read keys" in readkey[0]["output"]
    assert hosts["p-portal01"]["server"]["roles"] == ["management_server", "self_service_portal"]
    assert "input" in run.stderr  # the table's tool-input column


def test_wizard_then_collect_round_trips_a_key_through_a_dr_drill(lab_inventory, keyfleet, tmp_path):
    lab = lab_inventory(fleet=FLEET)
    inv = load_inventory(lab.inventory)
    machine = lab_machine(inv, "s-ms01")
    original = machine.current_key()
    nothing = keyfleet("collect", "-i", str(lab.inventory), "--limit", "s-ms01", "--json")
    assert nothing.returncode == 1 and _outcomes(nothing.stdout)["s-ms01"]["kind"] == "no-key-file"
    wizard = keyfleet("lab", "wizard", "-i", str(lab.inventory), "--host", "s-ms01", env=ENV)
    assert wizard.returncode == 0, wizard.stderr
    assert "C:\\ProgramData\\keyfleet\\outbox\\SMBackupkey-" in wizard.stderr
    run = keyfleet("collect", "-i", str(lab.inventory), "--limit", "s-ms01", "--remove", "--json", env=ENV)
    assert run.returncode == 0, run.stderr
    outcome = _outcomes(run.stdout)["s-ms01"]
    assert outcome["status"] == "ok" and outcome["method"] == "wizard" and not outcome["warning"]
    assert list(machine.registry.outbox_dir.iterdir()) == []  # removed only once the share held it
    manifest = read_share(lab.share, LAB_SIGNING["public_key"])
    (entry,) = manifest["entries"]
    assert entry["method"] == "wizard" and entry["id"] == outcome["entry_id"]
    audit = keyfleet("audit", "-i", str(lab.inventory), "--format", "json")
    assert {s["host"]: s["status"] for s in json.loads(audit.stdout)["servers"]}["s-ms01"] == "covered"
    assert json.loads(audit.stdout)["findings"] == []
    assert list((lab.share / "runs").glob("*.running")) == []  # each collect's marker went with its record

    assert keyfleet("lab", "rebuild", "-i", str(lab.inventory), "--host", "s-ms01").returncode == 0
    assert machine.current_key() != original
    restored = keyfleet("restore", "-i", str(lab.inventory), "--host", "s-ms01", "--yes", env=ENV)
    assert restored.returncode == 0, restored.stderr
    assert machine.current_key() == original


def test_collect_twice_stores_once_and_checks_the_role(lab_inventory, keyfleet):
    lab = lab_inventory(fleet=FLEET)
    assert keyfleet("lab", "wizard", "-i", str(lab.inventory), "--host", "w-dw01", env=ENV).returncode == 0
    first = keyfleet("collect", "-i", str(lab.inventory), "--limit", "w-dw01", "--json")
    assert first.returncode == 0, first.stderr
    again = keyfleet("collect", "-i", str(lab.inventory), "--limit", "w-dw01", "--json")
    outcome = _outcomes(again.stdout)["w-dw01"]
    assert outcome["status"] == "ok" and "already on the share" in outcome["warning"]
    assert len(read_share(lab.share, LAB_SIGNING["public_key"])["entries"]) == 1


@pytest.mark.slow
def test_no_password_leaks_in_any_input_mode_or_collect(lab_inventory, keyfleet, tmp_path):
    lab = lab_inventory(fleet=FLEET)
    runs = [
        keyfleet("backup", "-i", str(lab.inventory), "--json", "-v", env=ENV),
        keyfleet("doctor", "-i", str(lab.inventory), "--tool-smoke", "--json", "-v", env=ENV),
        keyfleet("lab", "wizard", "-i", str(lab.inventory), "--host", "w-dw01", "-v", env=ENV),
        keyfleet("collect", "-i", str(lab.inventory), "--remove", "--json", "-v", env=ENV),
        keyfleet("lab", "rebuild", "-i", str(lab.inventory), "--host", "k-ms01"),
        keyfleet("restore", "-i", str(lab.inventory), "--host", "k-ms01", "--yes", "--json", "-v", env=ENV),
    ]
    search = LeakSearch({"backup password": PASSWORD})
    for index, run in enumerate(runs):
        search.add(f"stdout {index}", run.stdout)
        search.add(f"stderr {index}", run.stderr)
        search.add(f"argv {index}", " ".join(run.args))
    search.add_folder(tmp_path)
    assert search.assert_clean() > 10
    journal = lab.journal.read_text()
    requests = [r for r in (json.loads(line).get("request") for line in journal.splitlines()) if r]
    helpers = {json.loads(r)["helper"] for r in requests}
    assert {"export", "smoke", "collect", "restore", "probe"} <= helpers  # every JSON document sent was searched


def test_a_password_outside_printable_ascii_is_refused_before_any_host(lab_inventory, keyfleet):
    lab = lab_inventory(fleet=FLEET)
    run = keyfleet("backup", "-i", str(lab.inventory), "--json", env={"KEYFLEET_BACKUP_PASSWORD": "Pässwort-2026"})
    assert run.returncode == 2 and "outside printable ASCII" in run.stderr and "Traceback" not in run.stderr
    assert not lab.journal.exists() or "Create" not in lab.journal.read_text()


FIELD_FAULTS = [
    ("constrained-language", "failed", "constrained-language", "Constrained Language Mode"),
    ("remote-shell-disabled", "failed", "remote-shell-disabled", "Allow Remote Shell Access"),
    ("tool-exits-early", "failed", "tool-failed", "SecureStorageBackup.exe failed"),
    ("tool-wizard-only", "failed", "tool-interactive", "keyfleet collect"),
    ("cleanup-locked", "ok", None, None),
    ("tool-readkey", "ok", None, None),
]


def test_each_field_fault_fails_only_its_host_with_its_kind_and_hint(lab_inventory, keyfleet):
    names = {fault: f"f{index}-ms" for index, (fault, *_) in enumerate(FIELD_FAULTS)}  # NetBIOS-length names
    fleet = {"F": {name: {"role": "management_server"} for name in [*names.values(), "healthy"]}}
    lab = lab_inventory(fleet=fleet, faults={names[fault]: [fault] for fault in names})
    run = keyfleet("backup", "-i", str(lab.inventory), "--json", env=ENV)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    outcomes = _outcomes(run.stdout)
    assert outcomes["healthy"]["status"] == "ok"
    for fault, status, kind, hint in FIELD_FAULTS:
        outcome = outcomes[names[fault]]
        assert (outcome["status"], outcome["kind"]) == (status, kind), (fault, outcome)
        assert outcome["attempts"] == 1  # none of them is retried as transient
        if hint:
            assert hint in run.stderr, hint
    assert "could not remove the temporary folder" in outcomes[names["cleanup-locked"]]["warning"]
