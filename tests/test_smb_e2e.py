"""End to end on a real Samba share: the real CLI, the real lab fleet and a private smbd (tests/smbd.py).

Backup, audit, prune and restore through ``--share smb://...`` (credentials in KEYFLEET_SHARE_USER /
KEYFLEET_SHARE_PASSWORD) or through the inventory's ``share:`` section; two controllers writing at
once; smbd killed in the middle of a run; a wrong SMB password.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.errors import ShareError
from orchestrator.inventory.loader import load_inventory
from orchestrator.jobs.context import open_store
from orchestrator.lab.config import host_settings, lab_config
from orchestrator.lab.fleet import serving
from orchestrator.lab.keyfile import unseal
from orchestrator.lab.machine import Machine
from orchestrator.share.smb import SMBShare
from tests.conftest import LAB_SIGNING, SMALL_FLEET, CliRun, LabFiles, cli_env, make_lab_inventory
from tests.leaks import LeakSearch
from tests.share_history import read_share
from tests.smbd import SmbServer, smbd_server  # noqa: F401 - pytest finds the session fixture here

pytestmark = pytest.mark.smb

Keyfleet = Callable[..., CliRun]
ALL_HOSTS = sorted(name for hosts in SMALL_FLEET.values() for name in hosts)
BACKUP_PASSWORD = "Lab-Backup-Test-1"  # the lab inventory's plaintext backup password (conftest)
# Two hosts, both auth modes: enough where the fleet's size does not matter.
PAIR: dict[str, dict[str, Any]] = {
    "PAIR": {
        "p-ms01": {"role": "management_server"},
        "p-dw01": {"role": "dw_management_server", "scheme": "https", "transport": "basic", "ca_bundle": "lab"},
    }
}


@pytest.fixture
def server(smbd_server: SmbServer) -> SmbServer:  # noqa: F811 - the imported fixture, by name
    smbd_server.start()  # a no-op unless an earlier test killed it
    return smbd_server


@pytest.fixture
def folder() -> str:
    """A fresh folder on the share per test: tests never see each other's manifests. Right under the share's
    root: a backup creates the share's folder only when its parent exists."""
    return f"e2e-{secrets.token_hex(4)}"


# -- reading what landed, without keyfleet's code -----------------------------------------------------


def manifest_at(root: Path) -> dict[str, Any]:
    """The share's entries, every signature and link of its history checked (tests/share_history.py)."""
    return read_share(root, LAB_SIGNING["public_key"])


def verify_signature(manifest: dict[str, Any], inventory: Path) -> None:
    """``manifest`` came from ``read_share`` (signatures checked with the lab key): the inventory names it."""
    assert yaml.safe_load(inventory.read_text())["signing"]["public_key"] == LAB_SIGNING["public_key"]
    assert manifest["generation"] >= 1


def assert_files_match(root: Path, manifest: dict[str, Any]) -> None:
    for entry in manifest["entries"]:
        assert entry["path"].startswith(f"{entry['group']}/{entry['role']}/{entry['host']}/"), entry
        data = (root / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["path"]
        assert len(data) == entry["size"], entry["path"]


def shape(manifest: dict[str, Any]) -> list[tuple[Any, ...]]:
    """What must be equal between two backups of the same fleet (hashes differ: every seal is salted)."""
    fields = ("host", "group", "role", "size", "password_id", "scsm_version", "helper_version")
    return sorted(tuple(entry[f] for f in fields) for entry in manifest["entries"])


def temporaries(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if ".tmp-" in path.name]


def machine(lab: LabFiles, name: str) -> Machine:
    """The lab server ``name`` as its state folder holds it (the key a backup or restore sees)."""
    inv = load_inventory(lab.inventory)
    host = inv.hosts[name]
    return Machine(host.name, host.role, host_settings(host), lab.state, lab_config(inv).seed)


def audit(keyfleet: Keyfleet, lab: LabFiles, *extra: str, env: dict[str, str] | None = None) -> tuple[int, Any]:
    run = keyfleet("audit", "-i", str(lab.inventory), "--format", "json", *extra, env=env)
    assert "Traceback" not in run.stderr
    return run.returncode, json.loads(run.stdout)


def coverage(document: dict[str, Any]) -> list[tuple[Any, ...]]:
    return sorted(
        (s["host"], s["group"], s["role"], s["status"], s["sha256_verified"], s["backups"]) for s in document["servers"]
    )


def with_inventory_share(lab: LabFiles, share: dict[str, Any]) -> None:
    document = yaml.safe_load(lab.inventory.read_text())
    document["share"] = share
    lab.inventory.write_text(yaml.safe_dump(document, sort_keys=False))


# -- 1. the same result as on a local share ---------------------------------------------------------------


def test_backup_and_audit_on_samba_match_a_local_share(
    tmp_path: Path, keyfleet: Keyfleet, server: SmbServer, folder: str
) -> None:
    lab = make_lab_inventory(tmp_path / "lab")
    url, env = server.url(folder), server.share_env()
    local = keyfleet("backup", "-i", str(lab.inventory), "--json")
    smb = keyfleet("backup", "-i", str(lab.inventory), "--share", url, "--json", env=env)
    documents = []
    for run in (local, smb):
        assert run.returncode == 0, run.stderr
        document = json.loads(run.stdout)
        assert document["summary"] == {"ok": len(ALL_HOSTS), "failed": 0, "skipped": 0}
        documents.append(document)
    root = server.root / folder
    on_smb, on_local = manifest_at(root), manifest_at(lab.share)
    assert sorted(e["host"] for e in on_smb["entries"]) == ALL_HOSTS
    assert shape(on_smb) == shape(on_local)
    for share_root, manifest in ((root, on_smb), (lab.share, on_local)):
        assert_files_match(share_root, manifest)
        verify_signature(manifest, lab.inventory)
    # each file on the SMB share opens with the backup password and holds the server's key
    for entry in on_smb["entries"]:
        sealed = (root / entry["path"]).read_bytes()
        assert unseal(sealed, BACKUP_PASSWORD) == machine(lab, entry["host"]).current_key()
    record = json.loads((root / documents[1]["run_record"]).read_text())
    assert record["share"] == f"smb://{server.host}:{server.port}/{server.share}/{folder}"
    assert {o["host"]: o["status"] for o in record["outcomes"]} == dict.fromkeys(ALL_HOSTS, "ok")
    assert not temporaries(root)

    local_code, local_audit = audit(keyfleet, lab)
    smb_code, smb_audit = audit(keyfleet, lab, "--share", url, env=env)
    assert (local_code, smb_code) == (0, 0)
    for document in (local_audit, smb_audit):
        assert document["summary"]["coverage_percent"] == 100
        assert document["manifest"]["signature"] == "valid"
        assert document["findings"] == []
    assert coverage(smb_audit) == coverage(local_audit)
    assert {s["status"] for s in smb_audit["servers"]} == {"covered"}


def test_share_from_the_inventory_with_a_credential_reference(
    tmp_path: Path, keyfleet: Keyfleet, server: SmbServer, folder: str
) -> None:
    lab = make_lab_inventory(tmp_path / "lab", fleet=PAIR)
    url = f"smb://{server.host}:{server.port}/{server.share}/{folder}"  # no user in the URL
    with_inventory_share(lab, {"url": url, "credential": {"username": server.user, "password": "env:KF_TEST_SMB_PW"}})
    env = {"KF_TEST_SMB_PW": server.password.reveal()}
    backup = keyfleet("backup", "-i", str(lab.inventory), "--json", env=env)
    assert backup.returncode == 0, backup.stderr
    root = server.root / folder
    manifest = manifest_at(root)
    assert sorted(e["host"] for e in manifest["entries"]) == sorted(PAIR["PAIR"])
    assert_files_match(root, manifest)
    verify_signature(manifest, lab.inventory)
    assert not lab.share.exists()  # nothing went to the lab's default local share
    code, report = audit(keyfleet, lab, env=env)
    assert code == 0 and report["summary"]["coverage_percent"] == 100 and report["share"] == url
    search = LeakSearch({"smb password": server.password.reveal()})
    search.add("backup stdout", backup.stdout)
    search.add("backup stderr", backup.stderr)
    search.add_folder(tmp_path)  # inventory, lab state, debug log (HOME)
    search.add_folder(root)  # manifest, run records
    search.assert_clean()


# -- 2. two controllers at once ---------------------------------------------------------------------------


@pytest.mark.e2e
def test_two_backups_to_one_samba_share_at_once_both_land(tmp_path: Path, server: SmbServer, folder: str) -> None:
    lab = make_lab_inventory(tmp_path / "lab")
    document = yaml.safe_load(lab.inventory.read_text())
    # one lab serves both controllers (as `keyfleet lab up` does): their inventory says serve: false
    with serving(load_inventory(lab.inventory)):
        document["lab"]["serve"] = False
        shared = lab.inventory.with_name("shared.yml")
        shared.write_text(yaml.safe_dump(document, sort_keys=False))
        argv = [sys.executable, "-m", "orchestrator", "backup", "-i", str(shared), "--share", server.url(folder)]
        env = cli_env(tmp_path, server.share_env())
        procs = [
            subprocess.Popen([*argv, "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        results = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], results
    run_ids = {json.loads(stdout)["run_id"] for stdout, _ in results}
    root = server.root / folder
    manifest = manifest_at(root)
    assert len(manifest["entries"]) == 2 * len(ALL_HOSTS)
    assert Counter(e["host"] for e in manifest["entries"]) == dict.fromkeys(ALL_HOSTS, 2)
    assert {e["run_id"] for e in manifest["entries"]} == run_ids and len(run_ids) == 2
    assert_files_match(root, manifest)
    verify_signature(manifest, lab.inventory)
    assert {path.stem for path in (root / "runs").glob("*.json")} == run_ids
    assert not temporaries(root)


# -- 3. the server dies in the middle ---------------------------------------------------------------------


def manifest_has_entries(root: Path) -> bool:
    """A new share gets an empty signed manifest first: wait for one with a key file in it."""
    try:
        return bool(manifest_at(root)["entries"])
    except (OSError, ValueError):
        return False  # not there yet, or being replaced right now


def _unexpected_errors(home: Path) -> str:
    """The tracebacks the CLI logged for hosts that failed as ``internal`` (its debug log, under HOME)."""
    log = home / ".cache" / "keyfleet" / "debug.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    return "\n".join(part for part in text.split("\n20") if "unexpected error" in part)


@pytest.mark.slow
def test_smbd_killed_during_a_backup_leaves_a_valid_manifest_and_exit_1(
    tmp_path: Path, keyfleet: Keyfleet, server: SmbServer, folder: str
) -> None:
    fleet = {"SLOW": {f"s-ms{i:02d}": {"role": "management_server"} for i in range(1, 9)}}
    lab = make_lab_inventory(tmp_path / "lab", fleet=fleet, faults={name: ["latency:0.3"] for name in fleet["SLOW"]})
    root = server.root / folder
    argv = [sys.executable, "-m", "orchestrator", "backup", "-i", str(lab.inventory), "--share", server.url(folder)]
    proc = subprocess.Popen(
        [*argv, "--forks", "2", "--json"],
        env=cli_env(tmp_path, server.share_env()),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not manifest_has_entries(root):
            if proc.poll() is not None:
                pytest.fail(f"the backup ended ({proc.returncode}) before its manifest appeared:\n{proc.communicate()}")
            assert time.monotonic() < deadline, "no manifest entry appeared on the share"
            time.sleep(0.01)
        server.kill()
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        server.start()  # later tests need it
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr and "internal error" not in stderr
    outcomes = {o["host"]: o for o in json.loads(stdout)["outcomes"]}
    assert sorted(outcomes) == sorted(fleet["SLOW"])
    ok = {host for host, o in outcomes.items() if o["status"] == "ok"}
    failed = [o for o in outcomes.values() if o["status"] == "failed"]
    assert len(failed) >= len(outcomes) - 2 and len(ok) + len(failed) == len(outcomes)
    for outcome in failed:
        assert outcome["kind"] == "share", (outcome, _unexpected_errors(tmp_path))
        assert "lost" in outcome["message"] or "unreachable" in outcome["message"], outcome
    assert "could not write the run record" in stderr
    # the manifest on the share is whole and signed; it holds every host reported ok
    manifest = manifest_at(root)
    verify_signature(manifest, lab.inventory)
    assert manifest["entries"] and ok <= {e["host"] for e in manifest["entries"]}
    assert_files_match(root, manifest)
    # the restarted server serves the same share again: the audit reads it and sees the gap, and that the
    # run's generations have no run record yet; its marker (the share refused its record) says it may still be
    # under way until the marker runs out (exit 1; then 3: tests/test_run_markers.py)
    code, report = audit(keyfleet, lab, "--share", server.url(folder), env=server.share_env())
    assert code == 1 and report["manifest"]["signature"] == "valid"
    assert {(f["kind"], f["severity"]) for f in report["findings"]} == {("run-in-progress", "warning")}
    assert report["summary"]["covered"] == len(manifest["entries"]) < len(outcomes)
    # the next backup of this controller writes the signed record it kept, and says so
    again = keyfleet("backup", "-i", str(lab.inventory), "--share", server.url(folder), env=server.share_env())
    assert again.returncode == 0, again.stderr
    assert "which run" in again.stderr and "could not write to the share" in again.stderr
    code, report = audit(keyfleet, lab, "--share", server.url(folder), env=server.share_env())
    assert code == 0 and report["findings"] == [], report["findings"]


def test_connection_lost_after_the_rename_does_not_fail_the_write(
    server: SmbServer, folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic form of a race test 3 hits about one run in thirty: smbd dies just after the rename."""
    rename = SMBShare._rename_open

    def rename_then_crash(self: SMBShare, raw: Any, name: str, **kwargs: Any) -> None:
        rename(self, raw, name, **kwargs)  # the server acknowledged: manifest.json is the new one
        server.kill()

    with SMBShare(server.host, server.port, server.share, folder, server.user, server.password, False) as share:
        share.replace("manifest.json", b"old")
        monkeypatch.setattr(SMBShare, "_rename_open", rename_then_crash)
        try:
            share.replace("manifest.json", b"new")
        finally:
            server.start()
    assert (server.root / folder / "manifest.json").read_bytes() == b"new"


@pytest.mark.parametrize("operation", ["write_new", "replace", "read_bytes", "exists", "remove", "list_files"])
def test_connection_lost_before_an_operation_is_a_share_error(server: SmbServer, folder: str, operation: str) -> None:
    """Deterministic form of a race test 3 hit about one full run in five under load: smbd dies between two
    operations, and the next one's first request (a check of the path's folders for reparse points) finds the
    connection closed. Every operation says the connection is lost (kind share), never an SMB exception."""
    with SMBShare(server.host, server.port, server.share, folder, server.user, server.password, False) as share:
        share.write_new("keys/a/b.bin", b"x")
        server.kill()
        try:
            with pytest.raises(ShareError, match=r"lost|unreachable"):
                call = getattr(share, operation)
                if operation in ("write_new", "replace"):
                    call("keys/a/c.bin", b"y")
                elif operation == "list_files":
                    list(call("keys"))
                else:
                    call("keys/a/b.bin")
        finally:
            server.start()


# -- 4. prune and restore -------------------------------------------------------------------------------


def test_prune_then_restore_onto_a_rebuilt_server_from_samba(
    tmp_path: Path, keyfleet: Keyfleet, server: SmbServer, folder: str
) -> None:
    lab = make_lab_inventory(tmp_path / "lab", fleet=PAIR)
    url, env = server.url(folder), server.share_env()
    run_ids = []
    for _ in range(2):
        run = keyfleet("backup", "-i", str(lab.inventory), "--share", url, "--json", env=env)
        assert run.returncode == 0, run.stderr
        run_ids.append(json.loads(run.stdout)["run_id"])
    root = server.root / folder
    before = manifest_at(root)
    assert len(before["entries"]) == 4

    prune = keyfleet("prune", "-i", str(lab.inventory), "--share", url, "--keep", "1", env=env)
    assert prune.returncode == 0, prune.stderr
    assert "removed 2 key files" in prune.stdout
    after = manifest_at(root)
    verify_signature(after, lab.inventory)
    assert sorted(e["host"] for e in after["entries"]) == sorted(PAIR["PAIR"])
    assert {e["run_id"] for e in after["entries"]} == {run_ids[1]}  # the newest kept
    assert_files_match(root, after)
    kept = {e["path"] for e in after["entries"]}
    assert not [e for e in before["entries"] if e["path"] not in kept and (root / e["path"]).exists()]

    dw = machine(lab, "p-dw01")
    original = dw.current_key()
    dw.rebuild()
    assert dw.current_key() != original
    restore = keyfleet(
        "restore", "-i", str(lab.inventory), "--host", "p-dw01", "--yes", "--share", url, "--json", env=env
    )
    assert restore.returncode == 0, restore.stderr
    document = json.loads(restore.stdout)
    assert document["entry"]["id"] == next(e["id"] for e in after["entries"] if e["host"] == "p-dw01")
    assert dw.current_key() == original
    assert (root / document["run_record"]).exists()


def test_prune_keeps_the_later_of_two_backups_stamped_in_the_same_second(
    tmp_path: Path, keyfleet: Keyfleet, server: SmbServer, folder: str
) -> None:
    """Entries are stamped in whole seconds; the lab backs up a fleet twice within one second easily."""
    lab = make_lab_inventory(tmp_path / "lab", fleet=PAIR)
    inv = load_inventory(lab.inventory)
    stamp = datetime.now(UTC).replace(microsecond=0)
    with SMBShare(server.host, server.port, server.share, folder, server.user, server.password, False) as share:
        store = open_store(inv, share, sign=True)
        for data in (b"taken first", b"taken last"):
            store.add(
                host="p-ms01", group="PAIR", role="management_server", data=data, password_id="test-1", created=stamp
            )
    prune = keyfleet(
        "prune", "-i", str(lab.inventory), "--share", server.url(folder), "--keep", "1", env=server.share_env()
    )
    assert prune.returncode == 0, prune.stderr
    [kept] = manifest_at(server.root / folder)["entries"]
    assert kept["sha256"] == hashlib.sha256(b"taken last").hexdigest()


# -- 5. a wrong password ----------------------------------------------------------------------------------


def wrong_password_env(server: SmbServer) -> tuple[str, dict[str, str]]:
    wrong = f"Wrong-Smb-{secrets.token_hex(8)}"
    return wrong, {"KEYFLEET_SHARE_USER": server.user, "KEYFLEET_SHARE_PASSWORD": wrong}


def assert_nothing_leaked(tmp_path: Path, run: CliRun, secrets_: dict[str, str]) -> None:
    search = LeakSearch(secrets_)
    search.add("stdout", run.stdout)
    search.add("stderr", run.stderr)
    search.add("argv", " ".join(run.args))
    search.add_folder(tmp_path)  # inventory, lab state and journal, debug log (HOME)
    search.assert_clean()


def commands_sent(lab: LabFiles) -> list[str]:
    """The hosts the lab ran a command on (the export or restore helper)."""
    if not lab.journal.exists():
        return []
    requests = [json.loads(line) for line in lab.journal.read_text().splitlines()]
    return [r["host"] for r in requests if r["operation"] == "Command"]


@pytest.mark.parametrize(
    "command",
    [
        ("audit",),
        ("prune", "--keep", "1"),
        ("restore", "--host", "p-ms01", "--yes"),
        ("backup", "--only-stale", "1h"),
        ("backup",),
    ],
    ids=" ".join,
)
def test_wrong_smb_password_is_one_clear_line_before_any_host_is_touched(
    tmp_path: Path, keyfleet: Keyfleet, server: SmbServer, folder: str, command: tuple[str, ...]
) -> None:
    lab = make_lab_inventory(tmp_path / "lab", fleet=PAIR)
    wrong, env = wrong_password_env(server)
    run = keyfleet(*command, "-i", str(lab.inventory), "--share", server.url(folder), env=env)
    assert run.returncode == 1, run.stderr
    where = f"{server.host}:{server.port}"
    assert run.stderr.splitlines() == [
        f"keyfleet: share smb://{where}/{server.share}/{folder}: cannot connect: "
        f"logon failure for user '{server.user}' on {where} (wrong user name or password?)"
    ]
    assert commands_sent(lab) == []
    assert_nothing_leaked(tmp_path, run, {"wrong smb password": wrong, "smb password": server.password.reveal()})


def test_wrong_smb_password_with_json_and_verbose_leaks_nothing(
    tmp_path: Path, keyfleet: Keyfleet, server: SmbServer, folder: str
) -> None:
    lab = make_lab_inventory(tmp_path / "lab", fleet=PAIR)
    wrong, env = wrong_password_env(server)
    run = keyfleet("backup", "-i", str(lab.inventory), "--share", server.url(folder), "--json", "-v", env=env)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr and "internal error" not in run.stderr
    assert json.loads(run.stdout)["error"]["kind"] == "share" and commands_sent(lab) == []
    assert_nothing_leaked(tmp_path, run, {"wrong smb password": wrong, "smb password": server.password.reveal()})


def test_a_verbose_backup_to_samba_logs_no_logon_token_and_no_message_dump(
    tmp_path: Path, keyfleet: Keyfleet, server: SmbServer, folder: str
) -> None:
    """-v writes the libraries' records to the debug log, but not pyspnego's tokens (the NTLM logon to
    Samba and to the lab's NTLM host: offline password guessing) nor smbprotocol's message dumps (the key
    files' bytes): no DEBUG record of either, and no NTLM message in any encoding."""
    lab = make_lab_inventory(tmp_path / "lab", fleet=PAIR)
    run = keyfleet("backup", "-i", str(lab.inventory), "--share", server.url(folder), "-v", env=server.share_env())
    assert run.returncode == 0, run.stderr
    text = (keyfleet.home / ".cache" / "keyfleet" / "debug.log").read_text()  # type: ignore[attr-defined]
    assert " INFO smbprotocol." in text  # the libraries' records are there
    assert " DEBUG smbprotocol." not in text and " DEBUG spnego." not in text
    search = LeakSearch({"NTLM message": "NTLMSSP\0"})
    search.add("debug log", text)
    search.assert_clean()


def test_a_missing_folder_on_samba_is_named_not_audited_as_empty(
    tmp_path: Path, keyfleet: Keyfleet, server: SmbServer, folder: str
) -> None:
    lab = make_lab_inventory(tmp_path / "lab")
    url, env = server.url(f"{folder}/no/such"), server.share_env()
    run = keyfleet("audit", "-i", str(lab.inventory), "--share", url, env=env)
    assert run.returncode == 2 and run.stderr.strip().splitlines() == [
        f"keyfleet: share smb://{server.host}:{server.port}/{server.share}/{folder}/no/such does not exist "
        "(check the path, or back up first)"
    ]
    backup = keyfleet("backup", "-i", str(lab.inventory), "--share", url, env=env)
    assert backup.returncode == 2 and "nor does its parent folder" in backup.stderr
    assert not (server.root / folder).exists() and not lab.journal.exists()
