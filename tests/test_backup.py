"""End-to-end backups through the real CLI against the lab fleet (real WinRM, real share)."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import yaml

from tests.conftest import LAB_SIGNING, SMALL_FLEET, cli_env, make_lab_inventory
from tests.leaks import EVERY_FAULT, run_with_unique_secrets
from tests.share_history import read_share

pytestmark = pytest.mark.e2e

ALL_HOSTS = [name for hosts in SMALL_FLEET.values() for name in hosts]


def manifest_of(share: Path) -> dict:
    """The share's entries, read and verified by an auditor's reader (tests/share_history.py)."""
    return read_share(share, LAB_SIGNING["public_key"])


def verify_signature_with_cryptography_alone(manifest: dict, inventory: Path) -> None:
    """``manifest`` came from ``read_share``, which checked every signature with the lab key pair:
    make sure the inventory names that very public key."""
    assert yaml.safe_load(inventory.read_text())["signing"]["public_key"] == LAB_SIGNING["public_key"]
    assert manifest["generation"] >= 1


def has_entries(share: Path) -> bool:
    """Whether the manifest lists a key file yet (a new share starts with an empty signed one)."""
    try:
        return bool(manifest_of(share)["entries"])
    except (OSError, ValueError):
        return False


def journal(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def temp_files(share: Path) -> list[Path]:
    return [p for p in share.rglob("*") if ".tmp-" in p.name]


def test_clean_backup_of_every_server(lab_inventory, keyfleet):
    lab = lab_inventory()
    run = keyfleet("backup", "-i", str(lab.inventory), "--json")
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    assert document["summary"] == {"ok": len(ALL_HOSTS), "failed": 0, "skipped": 0}
    assert {o["host"] for o in document["outcomes"]} == set(ALL_HOSTS)

    manifest = manifest_of(lab.share)
    assert sorted(e["host"] for e in manifest["entries"]) == sorted(ALL_HOSTS)
    for entry in manifest["entries"]:
        data = (lab.share / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert entry["path"].startswith(f"{entry['group']}/{entry['role']}/{entry['host']}/")
        assert entry["password_id"] == "test-1"
        assert oct((lab.share / entry["path"]).stat().st_mode & 0o777) == "0o600"
    verify_signature_with_cryptography_alone(manifest, lab.inventory)
    record = json.loads((lab.share / "runs" / f"{document['run_id']}.json").read_text())
    assert {o["host"]: o["status"] for o in record["outcomes"]} == dict.fromkeys(ALL_HOSTS, "ok")
    assert not temp_files(lab.share)


def test_backup_costs_five_requests_and_one_connection_per_host(lab_inventory, keyfleet):
    lab = lab_inventory()
    assert keyfleet("backup", "-i", str(lab.inventory)).returncode == 0
    operations: dict[str, Counter] = defaultdict(Counter)
    connections: dict[str, set] = defaultdict(set)
    for request in journal(lab.journal):
        operations[request["host"]][request["operation"]] += 1
        connections[request["host"]].add(request["connection"])
    assert set(operations) == set(ALL_HOSTS)
    for host, counts in operations.items():
        wsman = sum(n for op, n in counts.items() if op not in ("auth-handshake", "encryption-init"))
        assert wsman <= 5, (host, counts)
        assert counts["Receive"] >= 1 and counts["Delete"] == 1
        assert len(connections[host]) == 1, (host, connections[host])


FAULTS = {
    "t-ms01": (["down"], "unreachable"),
    "t-dw01": (["auth-failure"], "auth"),
    "t-portal01": (["tool-failing"], "tool-failed"),
    "d-ms01": (["tool-hanging"], "tool-timeout"),
    "d-dw01": (["corrupt-output"], "protocol"),
    "d-portal01": (["wrong-role"], "role-mismatch"),
}


def test_faulty_hosts_fail_with_their_own_kind_and_others_succeed(tmp_path, keyfleet):
    fleet = {**SMALL_FLEET, "TEST-OK": {"ok-ms01": {"role": "management_server"}}}
    lab = make_lab_inventory(tmp_path / "lab", fleet=fleet, faults={h: f for h, (f, _) in FAULTS.items()})
    run = keyfleet("backup", "-i", str(lab.inventory), "--json")
    assert run.returncode == 1, run.stderr
    outcomes = {o["host"]: o for o in json.loads(run.stdout)["outcomes"]}
    assert set(outcomes) == set(FAULTS) | {"ok-ms01"}
    for host, (_faults, kind) in FAULTS.items():
        assert outcomes[host]["status"] == "failed", outcomes[host]
        assert outcomes[host]["kind"] == kind, outcomes[host]
    assert outcomes["ok-ms01"]["status"] == "ok"
    record = json.loads((lab.share / "runs" / f"{json.loads(run.stdout)['run_id']}.json").read_text())
    assert {o["host"]: o["kind"] for o in record["outcomes"]} == {
        **{h: k for h, (_, k) in FAULTS.items()},
        "ok-ms01": None,
    }
    manifest = manifest_of(lab.share)
    assert [e["host"] for e in manifest["entries"]] == ["ok-ms01"]
    verify_signature_with_cryptography_alone(manifest, lab.inventory)
    # the summary groups failures by kind, each with a hint
    assert "role-mismatch (1): d-portal01" in run.stderr
    assert "hint:" in run.stderr


def test_the_json_document_names_the_generation_its_run_record_names(lab_inventory, keyfleet):
    """--json prints the run record as written to the share: chained to the history's generation."""
    lab = lab_inventory()
    for _ in range(2):
        run = keyfleet("backup", "-i", str(lab.inventory), "--limit", "t-ms01", "--json")
        assert run.returncode == 0, run.stderr
        document = json.loads(run.stdout)
        record = json.loads((lab.share / document["run_record"]).read_text())
        assert isinstance(document["generation"], int) and isinstance(document["head"], str)
        assert (document["generation"], document["head"]) == (record["generation"], record["head"])


def test_short_password_is_refused_before_any_host_is_touched(lab_inventory, keyfleet):
    lab = lab_inventory()
    run = keyfleet("backup", "-i", str(lab.inventory), env={"KEYFLEET_BACKUP_PASSWORD": "short"})
    assert run.returncode == 2
    assert "at least 8 characters" in run.stderr
    assert "Traceback" not in run.stderr
    assert not lab.journal.exists() or not journal(lab.journal)


def test_check_prints_the_plan_and_touches_nothing(lab_inventory, keyfleet):
    lab = lab_inventory()
    run = keyfleet("backup", "-i", str(lab.inventory), "--check", "--limit", "role:management_server")
    assert run.returncode == 0, run.stderr
    assert "t-ms01" in run.stderr and "d-ms01" in run.stderr and "t-dw01" not in run.stderr
    assert not lab.journal.exists()
    assert not (lab.share / "manifest.json").exists()


def test_last_failed_and_only_stale(tmp_path, keyfleet):
    lab = make_lab_inventory(tmp_path / "lab", faults={"t-dw01": ["tool-failing"]})
    assert keyfleet("backup", "-i", str(lab.inventory)).returncode == 1
    rerun = keyfleet("backup", "-i", str(lab.inventory), "--limit", "@last-failed", "--json")
    assert [o["host"] for o in json.loads(rerun.stdout)["outcomes"]] == ["t-dw01"]
    stale = keyfleet("backup", "-i", str(lab.inventory), "--only-stale", "1h", "--json")
    outcomes = {o["host"]: o["status"] for o in json.loads(stale.stdout)["outcomes"]}
    assert outcomes.pop("t-dw01") == "failed"
    assert set(outcomes.values()) == {"skipped"}


@pytest.mark.parametrize("fault", EVERY_FAULT)
def test_no_secret_leaks_under_any_fault(tmp_path, keyfleet, fault):
    run, lab, search = run_with_unique_secrets(tmp_path, keyfleet, fault, "backup")
    # a locked temporary folder is a warning; a tool that reads masked keys works through the console
    succeeds = fault in ("none", "latency:0.2", "cleanup-locked", "tool-readkey")
    assert run.returncode == (0 if succeeds else 1), run.stderr
    assert search.assert_clean() >= 5
    # the sealing faults touch only the host whose messages are sealed (NTLM over http), not the https one
    sealed_only = fault in ("unsealed-reply", "garbled-seal")
    assert len(list(lab.share.rglob("*.bin"))) == (2 if succeeds else 1 if sealed_only else 0)


def test_two_backups_of_the_same_share_at_once_both_land(lab_inventory, tmp_path):
    lab = lab_inventory()
    # one lab serves both controllers (as `keyfleet lab up` does): their inventory says serve: false
    doc = yaml.safe_load(lab.inventory.read_text())
    from orchestrator.inventory.loader import load_inventory
    from orchestrator.lab.fleet import serving

    with serving(load_inventory(lab.inventory)):
        doc["lab"]["serve"] = False
        shared = lab.inventory.with_name("shared.yml")
        shared.write_text(yaml.safe_dump(doc, sort_keys=False))
        env = cli_env(tmp_path)
        argv = [sys.executable, "-m", "orchestrator", "backup", "-i", str(shared)]
        procs = [
            subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
        ]
        results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    manifest = manifest_of(lab.share)
    assert len(manifest["entries"]) == 2 * len(ALL_HOSTS)
    assert len({e["run_id"] for e in manifest["entries"]}) == 2
    verify_signature_with_cryptography_alone(manifest, lab.inventory)


def test_sigint_leaves_a_valid_manifest_and_a_run_record(tmp_path):
    fleet = {"SLOW": {f"s-ms{i:02d}": {"role": "management_server"} for i in range(1, 9)}}
    faults = {name: ["latency:0.4"] for name in fleet["SLOW"]}
    lab = make_lab_inventory(tmp_path / "lab", fleet=fleet, faults=faults)
    argv = [sys.executable, "-m", "orchestrator", "backup", "-i", str(lab.inventory), "--forks", "2", "--json"]
    proc = subprocess.Popen(argv, env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not has_entries(lab.share):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    document = json.loads(stdout)
    assert document["interrupted"] is True
    statuses = Counter(o["status"] for o in document["outcomes"])
    assert statuses["skipped"] >= 1 and statuses["ok"] >= 1
    assert len(document["outcomes"]) == len(fleet["SLOW"])
    manifest = manifest_of(lab.share)
    verify_signature_with_cryptography_alone(manifest, lab.inventory)
    assert len(manifest["entries"]) == statuses["ok"]
    assert (lab.share / "runs" / f"{document['run_id']}.json").exists()
    assert not temp_files(lab.share)


def test_second_sigint_aborts_at_once_and_leaves_the_share_consistent(tmp_path):
    fleet = {"SLOW": {f"s-ms{i:02d}": {"role": "management_server"} for i in range(1, 7)}}
    faults = {name: ["latency:1.0"] for name in fleet["SLOW"]}
    lab = make_lab_inventory(tmp_path / "lab", fleet=fleet, faults=faults)
    argv = [sys.executable, "-m", "orchestrator", "backup", "-i", str(lab.inventory), "--forks", "3", "--json"]
    proc = subprocess.Popen(argv, env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (lab.journal.exists() and lab.journal.read_text().count("Create") >= 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    interrupted_at = time.monotonic()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert time.monotonic() - interrupted_at < 15  # not waiting for the slow hosts (about 1 s per request)
    document = json.loads(stdout)
    assert document["interrupted"] is True
    assert len(document["outcomes"]) == len(fleet["SLOW"])
    # every host was aborted, except one whose key was already being stored: then it is ok, and
    # the run record and the manifest agree on exactly which hosts were stored
    assert all(o["kind"] == "interrupted" or o["status"] == "ok" for o in document["outcomes"]), document
    stored = {o["host"] for o in document["outcomes"] if o["status"] == "ok"}
    if (lab.share / "manifest.json").exists():
        manifest = manifest_of(lab.share)
        verify_signature_with_cryptography_alone(manifest, lab.inventory)
        assert {e["host"] for e in manifest["entries"]} == stored
    else:
        assert not stored
    assert (lab.share / "runs" / f"{document['run_id']}.json").exists()
