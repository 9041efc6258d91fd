"""``keyfleet lab up`` in a subprocess, served to bare pywinrm; and the embedded lab of an inventory."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from winrm.protocol import Protocol

from orchestrator.commands import lab as lab_command
from orchestrator.errors import ConfigError
from orchestrator.inventory.loader import load_inventory
from orchestrator.inventory.model import Role
from orchestrator.lab.fleet import serving
from orchestrator.lab.journal import Journal


def _bare_pywinrm(host: dict[str, object], username: str, password: str) -> tuple[bytes, bytes, int]:
    """What an operator's script does: plain pywinrm, a command reading stdin."""
    endpoint = f"{host['scheme']}://{host['address']}:{host['port']}/wsman"
    p = Protocol(
        endpoint,
        transport=str(host["transport"]),
        username=username,
        password=password,  # type: ignore[arg-type]
        ca_trust_path=host.get("ca_bundle"),
        proxy=None,  # type: ignore[arg-type]
        operation_timeout_sec=5,
        read_timeout_sec=10,
    )
    shell = p.open_shell()
    cmd = p.run_command(shell, "more")
    p.send_command_input(shell, cmd, b"stdin reaches the lab\r\n", end=True)
    result = p.get_command_output(shell, cmd)
    p.cleanup_command(shell, cmd)
    p.close_shell(shell)
    return result


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


def test_lab_up_serves_bare_pywinrm_and_stops_on_sigterm(tmp_path: Path) -> None:
    inventory = tmp_path / "lab-up.yml"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "lab",
            "up",
            "--hosts",
            "4",
            "--inventory-out",
            str(inventory),
            "--state-dir",
            str(tmp_path / "state"),
            "--base-address",
            "127.0.77.120",
        ],
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
        seen = _wait_for_ready(proc, lines, timeout=20)
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
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    journal = Journal.read(tmp_path / "state" / "journal.jsonl")
    sends = [e for e in journal if e.operation == "Send"]
    assert len(sends) == 2 and all(e.stdin_bytes == 23 for e in sends)
    assert "stdin reaches" not in (tmp_path / "state" / "journal.jsonl").read_text()


def test_lab_up_rejects_faults_for_unknown_hosts(tmp_path: Path) -> None:
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
            "127.0.77.130",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "unknown host(s) nohost" in proc.stderr and "Traceback" not in proc.stderr


def test_plan_covers_groups_roles_and_auth_modes() -> None:
    specs = lab_command.plan_hosts(12, "127.0.20.1", "pw", {"test-dw02": ("down",)})
    assert len({s.group for s in specs}) == 2
    assert {s.role for s in specs} == set(Role)
    assert {(s.scheme, s.auth) for s in specs} == {("http", "ntlm"), ("https", "basic"), ("https", "ntlm")}
    assert len({s.address for s in specs}) == 12 and all(len(s.name.split(".")[0]) <= 15 for s in specs)
    assert next(s for s in specs if s.name == "test-dw02").settings.faults == ("down",)
    with pytest.raises(ConfigError):
        lab_command.plan_hosts(3, "10.0.0.1", "pw", {})
    with pytest.raises(ConfigError):
        lab_command.plan_hosts(3, "127.255.255.254", "pw", {})


LAB_INVENTORY = """
lab: {{serve: {serve}, state_dir: state, seed: 3}}
share: {{url: share}}
defaults:
  credential: {{username: 'LAB\\embedded', password: Emb3dded-pw}}
management_groups:
  EMBED:
    hosts:
      emb-ms01: {{role: management_server, address: 127.0.77.140, port: 5985}}
      emb-dw01:
        role: dw_management_server
        address: 127.0.77.141
        port: 5986
        scheme: https
        transport: basic
        ca_bundle: lab
"""


def test_serving_starts_the_embedded_lab_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "inv.yml"
    path.write_text(LAB_INVENTORY.format(serve="false"))
    with serving(load_inventory(path)) as fleet:
        assert fleet is None
    path.write_text(LAB_INVENTORY.format(serve="true"))
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
