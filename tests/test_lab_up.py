"""``keyfleet lab up`` in a subprocess, served to bare pywinrm; and the embedded lab of an inventory."""

from __future__ import annotations

import ipaddress
import json
import os
import queue
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from winrm.protocol import Protocol

from orchestrator.errors import ConfigError
from orchestrator.inventory.loader import load_inventory
from orchestrator.inventory.model import Role
from orchestrator.lab.fleet import serving
from orchestrator.lab.journal import Journal
from orchestrator.lab.plan import SECRETS_FILE, lab_secrets, plan_hosts
from orchestrator.share.manifest import load_public_key, new_signing_key_pair
from tests.conftest import CliRun, LabFiles
from tests.loopback import LoopbackAllocator, claim
from tests.share_history import read_share


def _bare_pywinrm(host: dict[str, object], username: str, password: str) -> tuple[bytes, bytes, int]:
    """What an operator's script does: plain pywinrm, a command reading stdin."""
    endpoint = f"{host['scheme']}://{host['address']}:{host['port']}/wsman"
    ca_bundle = host.get("ca_bundle")
    p = Protocol(
        endpoint,
        transport=str(host["transport"]),  # type: ignore[arg-type]
        username=username,
        password=password,
        ca_trust_path=str(ca_bundle) if ca_bundle else None,  # type: ignore[arg-type]
        proxy=None,
        operation_timeout_sec=5,
        read_timeout_sec=10,
    )
    shell = p.open_shell()
    cmd = p.run_command(shell, "more", console_mode_stdin=False)
    p.send_command_input(shell, cmd, b"stdin reaches the lab\r\n", end=True)
    result = p.get_command_output(shell, cmd)
    p.cleanup_command(shell, cmd)
    p.close_shell(shell)
    return result


@contextmanager
def _lab_up(*args: str) -> Iterator[list[str]]:
    """``keyfleet lab up ARGS`` in a subprocess: yields its stderr lines up to "ready", then stops it (SIGTERM)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "lab", "up", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    stderr = proc.stderr
    assert stderr is not None

    def pump() -> None:
        for line in stderr:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        yield _wait_for_ready(proc, lines, timeout=20)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def _wait_for_ready(proc: subprocess.Popen[str], lines: queue.Queue[str], timeout: float) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if line.startswith("ready"):
            return seen
    raise AssertionError(f"lab up never got ready: {seen}")


def test_lab_up_serves_bare_pywinrm_and_stops_on_sigterm(tmp_path: Path, loopback: LoopbackAllocator) -> None:
    inventory = tmp_path / "lab-up.yml"
    state = ("--state-dir", str(tmp_path / "state"), "--base-address", loopback.run(4))
    with _lab_up("--hosts", "4", "--inventory-out", str(inventory), *state) as seen:
        assert len(seen) == 5  # one line per host, then "ready"
        doc = yaml.safe_load(inventory.read_text())
        assert doc["lab"]["serve"] is False and Path(doc["lab"]["state_dir"]).is_absolute()
        username, password = doc["defaults"]["credential"]["username"], doc["defaults"]["credential"]["password"]
        hosts = [h for g in doc["management_groups"].values() for h in g["hosts"].values()]
        modes = {(h["scheme"], h["transport"]) for h in hosts}
        assert {("http", "ntlm"), ("https", "basic"), ("https", "ntlm")} <= modes
        for mode in (("http", "ntlm"), ("https", "basic")):
            host = next(h for h in hosts if (h["scheme"], h["transport"]) == mode)
            if mode[0] == "https":
                assert Path(host["ca_bundle"]).is_absolute()
            assert _bare_pywinrm(host, username, password) == (b"stdin reaches the lab\r\n", b"", 0)
        assert len(load_inventory(inventory).hosts) == 4  # the inventory loader accepts what lab up wrote
    journal = Journal.read(tmp_path / "state" / "journal.jsonl")
    sends = [e for e in journal if e.operation == "Send"]
    assert len(sends) == 2 and all(e.stdin_bytes == 23 for e in sends)
    assert "stdin reaches" not in (tmp_path / "state" / "journal.jsonl").read_text()


def test_lab_up_keeps_its_secrets_and_share_across_starts(
    tmp_path: Path, keyfleet: Callable[..., CliRun], loopback: LoopbackAllocator
) -> None:
    inventory = tmp_path / "rehearsal.yml"
    args = ("--hosts", "2", "--inventory-out", str(inventory), "--base-address", loopback.run(2))
    docs = []
    for _ in range(2):
        with _lab_up(*args):
            docs.append(yaml.safe_load(inventory.read_text()))
            backup = keyfleet("backup", "-i", str(inventory))
            assert backup.returncode == 0, backup.stderr  # the second start's backup is not "signed by another key"
    first, second = docs
    for section in ("share", "backup", "signing", "defaults"):
        assert second[section] == first[section]
    assert first["share"]["url"] == str(tmp_path / "rehearsal-share")  # named after the inventory, not lab-share
    assert first["lab"]["state_dir"] == str(tmp_path / "rehearsal-state")  # default: next to the inventory
    public_key = first["signing"]["public_key"]
    assert len(read_share(tmp_path / "rehearsal-share", public_key)["entries"]) == 4
    secrets_file = tmp_path / "rehearsal-state" / SECRETS_FILE
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(inventory.stat().st_mode) == 0o600


def test_lab_secrets_are_generated_once_and_checked(tmp_path: Path) -> None:
    first = lab_secrets(tmp_path / "state")
    assert lab_secrets(tmp_path / "state") == first
    load_public_key(first.signing_public_key)
    assert first.backup_password.reveal() not in repr(first)
    path = tmp_path / "state" / SECRETS_FILE
    document = json.loads(path.read_text())
    document["signing_public_key"] = new_signing_key_pair()[1]  # a key pair that does not belong together
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match="is damaged; delete it"):
        lab_secrets(tmp_path / "state")
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="is damaged; delete it"):
        lab_secrets(tmp_path / "state")


def test_lab_up_rejects_faults_for_unknown_hosts(tmp_path: Path, loopback: LoopbackAllocator) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "lab",
            "up",
            "--hosts",
            "2",
            "--faults",
            "nohost=down",
            "--inventory-out",
            str(tmp_path / "inv.yml"),
            "--base-address",
            loopback.run(2),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "unknown host(s) nohost" in proc.stderr and "Traceback" not in proc.stderr


def test_plan_covers_groups_roles_and_auth_modes() -> None:
    specs = plan_hosts(12, "127.0.20.1", "pw", {"test-dw02": ("down",)})
    assert len({s.group for s in specs}) == 2
    assert {s.role for s in specs} == set(Role)
    assert {(s.scheme, s.auth) for s in specs} == {("http", "ntlm"), ("https", "basic"), ("https", "ntlm")}
    assert len({s.address for s in specs}) == 12 and all(len(s.name.split(".")[0]) <= 15 for s in specs)
    assert next(s for s in specs if s.name == "test-dw02").settings.faults == ("down",)
    with pytest.raises(ConfigError):
        plan_hosts(3, "10.0.0.1", "pw", {})
    with pytest.raises(ConfigError):
        plan_hosts(3, "127.255.255.254", "pw", {})


LAB_INVENTORY = """
lab: {{serve: {serve}, state_dir: state, seed: 3}}
share: {{url: share}}
defaults:
  credential: {{username: 'LAB\\embedded', password: Emb3dded-pw}}
management_groups:
  EMBED:
    hosts:
      emb-ms01: {{role: management_server, address: {first}, port: 5985}}
      emb-dw01:
        role: dw_management_server
        address: {second}
        port: 5986
        scheme: https
        transport: basic
        ca_bundle: lab
"""


def test_serving_starts_the_embedded_lab_only_when_asked(tmp_path: Path, loopback: LoopbackAllocator) -> None:
    path = tmp_path / "inv.yml"
    first = ipaddress.IPv4Address(loopback.run(2))
    addresses = {"first": first, "second": first + 1}
    path.write_text(LAB_INVENTORY.format(serve="false", **addresses))
    with serving(load_inventory(path)) as fleet:
        assert fleet is None
    path.write_text(LAB_INVENTORY.format(serve="true", **addresses))
    inv = load_inventory(path)
    with serving(inv) as fleet:
        assert fleet is not None and fleet.ca_path == tmp_path / "state" / "ca.pem"
        assert fleet.machine("emb-dw01").role == Role.DW_MANAGEMENT_SERVER
        for host in inv.hosts.values():
            doc = {
                "scheme": host.scheme,
                "address": host.address,
                "port": host.port,
                "transport": host.transport,
                "ca_bundle": host.ca_bundle,
            }
            assert _bare_pywinrm(doc, "LAB\\embedded", "Emb3dded-pw")[2] == 0
    journal = Journal.read(tmp_path / "state" / "journal.jsonl")
    assert {e.host for e in journal} == {"emb-ms01", "emb-dw01"}


def test_a_second_command_on_a_served_lab_fails_in_one_line_and_leaves_it_serving(
    lab_inventory: Callable[..., LabFiles], keyfleet: Callable[..., CliRun]
) -> None:
    lab = lab_inventory()
    inv = load_inventory(lab.inventory)
    with serving(inv) as fleet:  # the first command's lab
        assert fleet is not None
        second = keyfleet("backup", "-i", str(lab.inventory))
        assert second.returncode == 1 and "Traceback" not in second.stderr
        assert len(second.stderr.splitlines()) == 1 and "cannot listen on" in second.stderr
        host = inv.hosts["t-ms01"]  # NTLM: its user file must have survived the second command
        doc = {"scheme": host.scheme, "address": host.address, "port": host.port, "transport": host.transport}
        assert _bare_pywinrm(doc, "LAB\\keyfleet", "Lab-Test-Pw-1")[2] == 0


def test_a_failed_lab_up_removes_the_state_folder_it_created(tmp_path: Path, loopback: LoopbackAllocator) -> None:
    """Every address:port of the plan is taken (a listener on the first host's ports): lab up fails, leaving no
    half-made state; an existing state folder is kept."""
    import socket

    base = loopback.run(2)
    blockers = []
    for port in (5985, 5986):
        blocker = socket.socket()
        blocker.bind((base, port))
        blocker.listen()
        blockers.append(blocker)
    argv = [sys.executable, "-m", "orchestrator", "lab", "up", "--hosts", "2", "--base-address", base]
    try:
        fresh = tmp_path / "fresh-state"
        proc = subprocess.run(
            [*argv, "--inventory-out", str(tmp_path / "inv.yml"), "--state-dir", str(fresh)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert not fresh.exists() and not (tmp_path / "inv.yml").exists()
        kept = tmp_path / "kept-state"
        kept.mkdir()
        (kept / "note").write_text("mine")
        proc = subprocess.run(
            [*argv, "--inventory-out", str(tmp_path / "inv.yml"), "--state-dir", str(kept)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode != 0 and (kept / "note").read_text() == "mine"
    finally:
        for blocker in blockers:
            blocker.close()


def test_the_journal_is_private(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "state" / "journal.jsonl")
    journal.record("h", 1, "Create", 200)
    journal.close()
    assert (tmp_path / "state" / "journal.jsonl").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700


def test_two_test_sessions_never_share_a_loopback_range(tmp_path: Path) -> None:
    """Another session's worker holding a /16 makes the next claimant take the next free one."""
    first, held = claim(7, tmp_path)
    second, also = claim(7, tmp_path)
    try:
        assert (first, second) == (7, 8)
        os.close(held)
        third, again = claim(7, tmp_path)  # given back: claimable again
        os.close(again)
        assert third == 7
    finally:
        os.close(also)
