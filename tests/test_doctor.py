"""Preflight through the real CLI against the lab fleet: every check, every fault kind, no leaks."""

from __future__ import annotations

import json

import pytest

from orchestrator.jobs.doctor import CHECKS
from tests.conftest import SMALL_FLEET, make_lab_inventory
from tests.leaks import EVERY_FAULT, run_with_unique_secrets

pytestmark = pytest.mark.e2e

ALL_HOSTS = {name: settings["role"] for hosts in SMALL_FLEET.values() for name, settings in hosts.items()}
ONE = {"role": "management_server"}


def hosts_of(run) -> dict[str, dict]:
    return {h["host"]: h for h in json.loads(run.stdout)["hosts"]}


def test_clean_lab_reports_every_role_and_version(lab_inventory, keyfleet):
    lab = lab_inventory()
    run = keyfleet("doctor", "-i", str(lab.inventory), "--json")
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    assert document["summary"] == {"ok": len(ALL_HOSTS), "failed": 0, "skipped": 0}
    hosts = hosts_of(run)
    assert set(hosts) == set(ALL_HOSTS)
    for name, role in ALL_HOSTS.items():
        host = hosts[name]
        assert host["status"] == "ok" and host["kind"] is None
        assert host["server"]["roles"] == [role]
        assert host["server"]["version"] == "10.22.1068.0"
        assert host["server"]["computer_name"] == name.upper()
        assert host["server"]["tool_path"].endswith("SecureStorageBackup.exe")
        assert [c["name"] for c in host["checks"]] == list(CHECKS)
        assert {c["status"] for c in host["checks"]} == {"ok"}
    for name, role in ALL_HOSTS.items():  # the human table on stderr shows role and version too
        line = next(line for line in run.stderr.splitlines() if line.startswith(f"{name} "))
        assert role in line and "10.22.1068.0" in line and "✗" not in line


FAULTS = {
    "f-down": (["down"], "unreachable", "reachable"),
    "f-auth": (["auth-failure"], "auth", "authenticated"),
    "f-admin": (["not-admin"], "not-admin", "administrator"),
    "f-tool": (["tool-missing"], "tool-missing", "tool"),
    "f-role": (["wrong-role"], "role-mismatch", "role"),
    "f-disk": (["disk-full"], "disk-full", "temp-space"),
    "f-corrupt": (["corrupt-output"], "protocol", "helper"),
    "f-http": (["http500:Command"], "http", "helper"),
}


def test_each_fault_is_reported_with_its_kind(tmp_path, keyfleet):
    fleet = {"FAULTS": {name: dict(ONE) for name in FAULTS} | {"f-ok": dict(ONE)}}
    lab = make_lab_inventory(tmp_path / "lab", fleet=fleet, faults={h: f for h, (f, _, _) in FAULTS.items()})
    run = keyfleet("doctor", "-i", str(lab.inventory), "--json")
    assert run.returncode == 1, run.stderr
    hosts = hosts_of(run)
    assert hosts["f-ok"]["status"] == "ok"
    for name, (_faults, kind, check) in FAULTS.items():
        host = hosts[name]
        assert (host["status"], host["kind"]) == ("failed", kind), host
        assert host["message"].startswith(f"{check}: ")
        assert host["hint"]
        checks = {c["name"]: c for c in host["checks"]}
        assert checks[check]["status"] == "failed" and checks[check]["kind"] == kind
        assert f"  {name}: {check}: {kind}: " in run.stderr
    # a server that answered still reports what it is
    assert hosts["f-role"]["server"]["roles"] == ["dw_management_server"]
    assert hosts["f-disk"]["server"]["temp_free_bytes"] < 100 * 1024 * 1024
    # connection-level failures leave the later checks not run
    assert {c["status"] for c in hosts["f-down"]["checks"][1:]} == {"not-run"}
    assert "unreachable (1): f-down" in run.stderr and "hint:" in run.stderr
    # the table: failures first, grouped by kind (alphabetically), the passing host last
    table = run.stderr[run.stderr.index("doctor\n") :].splitlines()[2:]
    shown = [line.split()[0] for line in table if line.split() and line.split()[0] in hosts]
    by_kind = sorted(FAULTS, key=lambda name: FAULTS[name][1])
    assert shown == [*by_kind, "f-ok"]


def test_a_failed_tool_smoke_test_keeps_the_probe_s_checks(tmp_path, keyfleet):
    """The probe answered, then the smoke test failed (the temporary folder is full): every check the
    probe allows is still judged and the server still reported; tool-input carries the smoke's failure."""
    fleet = {"SMOKE": {"f-disk": dict(ONE)}}
    lab = make_lab_inventory(tmp_path / "lab", fleet=fleet, faults={"f-disk": ["disk-full"]})
    run = keyfleet("doctor", "-i", str(lab.inventory), "--tool-smoke", "--json")
    assert run.returncode == 1, run.stderr
    host = hosts_of(run)["f-disk"]
    checks = {c["name"]: c for c in host["checks"]}
    assert checks["temp-space"]["status"] == "failed" and checks["temp-space"]["kind"] == "disk-full"
    assert {checks[name]["status"] for name in ("helper", "administrator", "role", "version", "tool")} == {"ok"}
    assert checks["tool-input"]["status"] == "failed" and checks["tool-input"]["kind"] == "disk-full"
    assert host["server"]["roles"] == ["management_server"] and host["kind"] == "disk-full"


def test_limit_and_security_warnings(tmp_path, keyfleet):
    fleet = {
        "G": {
            "w-ms01": {"role": "management_server"},
            "w-dw01": {
                "role": "dw_management_server",
                "scheme": "https",
                "transport": "basic",
                "cert_validation": False,
            },
        }
    }
    lab = make_lab_inventory(tmp_path / "lab", fleet=fleet)
    run = keyfleet("doctor", "-i", str(lab.inventory), "--limit", "role:dw_management_server", "--json")
    assert run.returncode == 0, run.stderr
    assert list(hosts_of(run)) == ["w-dw01"]
    warning = "w-dw01: TLS certificate validation is off"
    assert warning in run.stderr
    assert any(warning in w for w in json.loads(run.stdout)["warnings"])


# the probe never runs the tool (only --tool-smoke does)
PASSING = {
    "none",
    "latency:0.2",
    "tool-failing",
    "tool-hanging",
    "cleanup-locked",
    "tool-exits-early",
    "tool-readkey",
    "tool-wizard-only",
}


@pytest.mark.parametrize("fault", EVERY_FAULT)
def test_no_secret_leaks_under_any_fault(tmp_path, keyfleet, fault):
    run, _lab, search = run_with_unique_secrets(tmp_path, keyfleet, fault, "doctor")
    assert run.returncode == (0 if fault in PASSING else 1), run.stderr
    assert set(hosts_of(run)) == {"l-ms01", "l-dw01"}
    assert search.assert_clean() >= 3
