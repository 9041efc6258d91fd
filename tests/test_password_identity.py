"""Password identity: one password per password_id, checked against the share's scrypt verifier before any host."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from orchestrator.share.local import LocalShare
from orchestrator.share.store import BackupStore
from tests.conftest import LAB_SIGNING, LabFiles, make_lab_inventory
from tests.leaks import run_with_unique_secrets
from tests.share_history import read_share

pytestmark = pytest.mark.e2e

PASSWORD = "Lab-Backup-Test-1"  # the lab inventory's backup.password
FLEET = {"PW": {"p-ms01": {"role": "management_server"}, "p-dw01": {"role": "dw_management_server"}}}


def journal_lines(lab: LabFiles) -> int:
    return len(lab.journal.read_text().splitlines()) if lab.journal.exists() else 0


def verifiers(lab: LabFiles) -> dict[str, dict]:
    return read_share(lab.share, LAB_SIGNING["public_key"])["verifiers"]


def scrypt_verifies(verifier: dict, password: str) -> bool:
    """The verifier checked with cryptography's scrypt alone, from its recorded salt and parameters."""
    kdf = Scrypt(
        salt=base64.b64decode(verifier["salt"]),
        length=len(base64.b64decode(verifier["hash"])),
        n=verifier["n"],
        r=verifier["r"],
        p=verifier["p"],
    )
    try:
        kdf.verify(password.encode(), base64.b64decode(verifier["hash"]))
    except InvalidKey:
        return False
    return True


def test_first_backup_stores_a_verifier_and_a_mismatch_is_refused_before_any_host(tmp_path, keyfleet):
    lab = make_lab_inventory(tmp_path / "lab", fleet=FLEET)
    first = keyfleet("backup", "-i", str(lab.inventory))
    assert first.returncode == 0, first.stderr
    recorded = verifiers(lab)
    assert list(recorded) == ["test-1"]
    verifier = recorded["test-1"]
    # memory-hard, not fast: one of the equivalent minimums of OWASP's Password Storage Cheat Sheet
    owasp = {(2**17, 8, 1), (2**16, 8, 2), (2**15, 8, 3), (2**14, 8, 5), (2**13, 8, 10)}
    assert verifier["kdf"] == "scrypt" and (verifier["n"], verifier["r"], verifier["p"]) in owasp
    assert len(base64.b64decode(verifier["salt"])) >= 16
    assert scrypt_verifies(verifier, PASSWORD)
    assert not scrypt_verifies(verifier, "Another-Password-1")

    before = journal_lines(lab)
    assert before > 0
    wrong = "Another-Password-1"
    env = {"KEYFLEET_BACKUP_PASSWORD": wrong}
    for args in (
        ["backup", "-i", str(lab.inventory)],
        ["backup", "-i", str(lab.inventory), "--json"],
        ["collect", "-i", str(lab.inventory)],
        ["restore", "-i", str(lab.inventory), "--host", "p-ms01", "--yes"],
    ):
        run = keyfleet(*args, env=env)
        assert run.returncode == 2, (args, run.stderr)
        lines = [line for line in run.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "password does not match password_id 'test-1'" in lines[0], run.stderr
        assert wrong not in run.stderr + run.stdout and "Traceback" not in run.stderr
        if "--json" in args:
            assert json.loads(run.stdout)["error"]["kind"] == "config"
        assert journal_lines(lab) == before, args  # no request reached any server
    assert verifiers(lab) == recorded  # a refused password never replaces the verifier

    again = keyfleet("backup", "-i", str(lab.inventory))  # the right password still works
    assert again.returncode == 0, again.stderr
    assert verifiers(lab) == recorded


def test_a_playbook_with_a_backup_step_checks_the_password_first(tmp_path, keyfleet):
    lab = make_lab_inventory(tmp_path / "lab", fleet=FLEET)
    assert keyfleet("backup", "-i", str(lab.inventory)).returncode == 0
    before = journal_lines(lab)
    playbook = tmp_path / "nightly.yml"
    playbook.write_text("name: nightly\nsteps:\n  - backup\n")
    run = keyfleet("run", str(playbook), "-i", str(lab.inventory), env={"KEYFLEET_BACKUP_PASSWORD": "Wrong-Password-9"})
    assert run.returncode == 2, run.stderr
    assert "password does not match password_id 'test-1'" in run.stderr and "Traceback" not in run.stderr
    assert journal_lines(lab) == before


def test_rotate_moves_every_server_to_the_new_id(tmp_path, keyfleet):
    lab = make_lab_inventory(tmp_path / "lab", fleet=FLEET)
    assert keyfleet("backup", "-i", str(lab.inventory)).returncode == 0
    new = {"KEYFLEET_BACKUP_PASSWORD": "New-Backup-Pw-2"}
    rotate = ["password", "rotate", "--from", "test-1", "--to", "test-2", "-i", str(lab.inventory)]

    same = keyfleet(*rotate, env={"KEYFLEET_BACKUP_PASSWORD": PASSWORD})
    assert same.returncode == 2 and "the new password is the one of password_id 'test-1'" in same.stderr

    partial = keyfleet(*rotate, "--limit", "p-ms01", env=new)
    assert partial.returncode == 0, partial.stderr
    assert "still on password_id 'test-1': p-dw01" in partial.stderr
    recorded = verifiers(lab)
    assert recorded["test-2"]["rotated_from"] == "test-1" and scrypt_verifies(recorded["test-2"], "New-Backup-Pw-2")
    audit = keyfleet("audit", "-i", str(lab.inventory), "--format", "json")
    old = [(f["host"], f["severity"]) for f in json.loads(audit.stdout)["findings"] if f["kind"] == "old-password-id"]
    assert old == [("p-dw01", "warning")]
    table = keyfleet("audit", "-i", str(lab.inventory)).stdout
    assert "[warning] old-password-id: p-dw01: its newest good backup is under password_id 'test-1'" in table

    wrong = keyfleet(*rotate, env={"KEYFLEET_BACKUP_PASSWORD": "Not-The-New-Pw-3"})  # resumed: checked too
    assert wrong.returncode == 2 and "password does not match password_id 'test-2'" in wrong.stderr

    rest = keyfleet(*rotate, env=new)
    assert rest.returncode == 0, rest.stderr
    assert "no server is on password_id 'test-1' any more" in rest.stderr
    document = json.loads(keyfleet("audit", "-i", str(lab.inventory), "--format", "json").stdout)
    assert [f for f in document["findings"] if f["kind"] == "old-password-id"] == []
    assert {s["host"]: s["password_id"] for s in document["servers"]} == {"p-ms01": "test-2", "p-dw01": "test-2"}
    entries = read_share(lab.share, LAB_SIGNING["public_key"])["entries"]
    assert sorted(e["password_id"] for e in entries) == ["test-1", "test-1", "test-2", "test-2", "test-2"]
    assert list((lab.share / "runs").glob("*.running")) == []  # each rotation's marker went with its record


def test_a_share_written_before_the_verifier_keeps_working(tmp_path, keyfleet):
    lab = make_lab_inventory(tmp_path / "lab", fleet=FLEET)
    signer = Ed25519PrivateKey.from_private_bytes(base64.b64decode(LAB_SIGNING["private_key"]))
    lab.share.mkdir(parents=True)
    store = BackupStore(LocalShare(lab.share), signer, state_root=tmp_path / "old-controller")
    created = datetime(2026, 1, 1, tzinfo=UTC)
    store.add(host="p-ms01", group="PW", role="management_server", data=b"old", password_id="test-1", created=created)
    assert verifiers(lab) == {}
    assert "verifiers" not in json.loads((lab.share / "manifest.json").read_text())

    run = keyfleet("backup", "-i", str(lab.inventory))
    assert run.returncode == 0, run.stderr
    assert scrypt_verifies(verifiers(lab)["test-1"], PASSWORD)
    assert len(read_share(lab.share, LAB_SIGNING["public_key"])["entries"]) == 3  # the old entry kept


def test_the_verifier_survives_compaction(tmp_path, keyfleet):
    lab = make_lab_inventory(tmp_path / "lab", fleet=FLEET)
    assert keyfleet("backup", "-i", str(lab.inventory)).returncode == 0
    signer = Ed25519PrivateKey.from_private_bytes(base64.b64decode(LAB_SIGNING["private_key"]))
    BackupStore(LocalShare(lab.share), signer, state_root=tmp_path / "controller").compact()
    checkpoint = json.loads((lab.share / "manifest.json").read_text())
    assert scrypt_verifies(checkpoint["verifiers"]["test-1"], PASSWORD)  # in the signed checkpoint itself
    run = keyfleet("backup", "-i", str(lab.inventory), env={"KEYFLEET_BACKUP_PASSWORD": "Another-Password-1"})
    assert run.returncode == 2 and "password does not match" in run.stderr


def test_no_password_in_any_form_anywhere(tmp_path: Path, keyfleet):
    run, lab, search = run_with_unique_secrets(tmp_path, keyfleet, "none", "backup")
    assert run.returncode == 0, run.stderr
    assert list(verifiers(lab)) == ["test-1"]  # the verifier is on the share, the password is not
    assert search.assert_clean() >= 5


def test_a_verifier_keeps_its_own_parameters_and_a_share_cannot_ask_for_unbounded_work() -> None:
    from orchestrator.errors import IntegrityError
    from orchestrator.jobs import identity
    from orchestrator.secret import Secret

    password, salt = "Correct-Horse-9", b"s" * 16
    # an earlier release's verifier: N=2^17, r=8, p=1
    derived = Scrypt(salt=salt, length=32, n=2**17, r=8, p=1).derive(password.encode())
    old = {"kdf": "scrypt", "n": 2**17, "r": 8, "p": 1}
    old |= {"salt": base64.b64encode(salt).decode(), "hash": base64.b64encode(derived).decode()}
    assert identity.matches(Secret(password), old, "old-id")
    assert not identity.matches(Secret(password + "x"), old, "old-id")
    new = identity.make_verifier(Secret(password))
    assert (new["n"], new["r"], new["p"]) == (2**14, 8, 5) and identity.matches(Secret(password), new, "new-id")
    with pytest.raises(IntegrityError, match="malformed"):  # 2^20 * 16 * 16: far past any work keyfleet writes
        identity.matches(Secret(password), old | {"n": 2**20, "r": 16, "p": 16}, "old-id")
