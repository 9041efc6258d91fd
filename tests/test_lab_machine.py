"""The simulated SCSM server, driven with the exact bytes the controller sends (no network)."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import ErrorKind, HostFailure
from orchestrator.helpers import remote
from orchestrator.inventory.model import Role
from orchestrator.lab import keyfile
from orchestrator.lab.config import LabHostSettings
from orchestrator.lab.machine import OUTPUT_CHUNK, LabUser, Machine, StdinPipe
from orchestrator.lab.windows import CommandOptions
from orchestrator.secret import Secret
from tests.loopback import ALLOCATOR

PASSWORD = "Lab-pw-4b1d-unique"
SECRET = Secret(PASSWORD, "test")
ADMIN = LabUser("LAB\\keyfleet", True)
HOST = "scsm-ms01"


@dataclass
class Run:
    stdout: bytes
    stderr: bytes
    code: int
    chunks: int
    seconds: float


def make(tmp_path: Path, *faults: str, name: str = HOST, role: Role = Role.MANAGEMENT_SERVER, **lab: Any) -> Machine:
    settings = replace(LabHostSettings(), faults=tuple(faults), **lab)
    return Machine(name, role, settings, tmp_path / "state", seed=7)


def execute(
    machine: Machine,
    command: str,
    stdin: bytes = b"",
    user: LabUser = ADMIN,
    cancel: threading.Event | None = None,
) -> Run:
    out = {"stdout": b"", "stderr": b""}
    chunks = 0

    def emit(stream: str, data: bytes) -> None:
        nonlocal chunks
        out[stream] += data
        chunks += 1

    pipe = StdinPipe()
    pipe.write(stdin)
    pipe.close()
    start = time.monotonic()
    code = machine.execute(command, pipe, user, emit, cancel or threading.Event())
    run = Run(out["stdout"], out["stderr"], code, chunks, time.monotonic() - start)
    assert PASSWORD.encode() not in run.stdout + run.stderr
    return run


def helper(machine: Machine, name: str, params: dict[str, object], secret: Secret | None = SECRET, **kw: Any) -> Run:
    command = remote.bootstrap_command_line()
    assert PASSWORD not in command
    return execute(machine, command, remote.build_stdin(name, params, secret), **kw)


def export(machine: Machine, secret: Secret | None = SECRET, **kw: Any) -> remote.ExportResult:
    run = helper(machine, "export", remote.export_params(None, 5), secret, **kw)
    return remote.parse_export(machine.name, run.stdout, run.stderr, run.code)


def restore(machine: Machine, file: bytes, secret: Secret = SECRET, **params: Any) -> remote.RestoreResult:
    run = helper(machine, "restore", remote.restore_params(file, None, 5, **params), secret)
    return remote.parse_restore(machine.name, run.stdout, run.stderr, run.code)


def failure(call: Callable[..., object], *args: object, **kw: object) -> HostFailure:
    with pytest.raises(HostFailure) as caught:
        call(*args, **kw)
    assert PASSWORD not in str(caught.value)
    return caught.value


def test_cmd_builtins(tmp_path: Path) -> None:
    machine = make(tmp_path)
    assert not machine.can_start("echo hello", CommandOptions(skip_cmd_shell=True))  # a cmd built-in
    assert machine.can_start("echo hello", CommandOptions(skip_cmd_shell=False))
    assert machine.can_start("hostname", CommandOptions(skip_cmd_shell=True))
    assert execute(machine, "hostname").stdout == b"scsm-ms01\r\n"
    assert execute(machine, "whoami").stdout == b"lab\\keyfleet\r\n"
    assert execute(machine, "echo hello  world").stdout == b"hello  world\r\n"
    assert execute(machine, "exit /b 7").code == 7
    big = bytes(range(256)) * 100
    more = execute(machine, "more", big)
    assert more.stdout == big and more.chunks == -(-len(big) // OUTPUT_CHUNK) > 1
    unknown = execute(machine, "dir C:\\")
    assert unknown.code == 1 and unknown.stdout == b""
    assert unknown.stderr == (
        b"'dir' is not recognized as an internal or external command,\r\noperable program or batch file.\r\n"
    )


def test_export_makes_a_key_file_that_opens_with_the_password(tmp_path: Path) -> None:
    machine = make(tmp_path)
    result = export(machine)
    assert result.roles == (Role.MANAGEMENT_SERVER,) and result.version == "10.22.1068.0"
    assert result.computer_name == "SCSM-MS01" and result.helper_version == remote.HELPER_VERSION
    assert "Secure Storage Backup Complete" in result.tool_output
    assert keyfile.read_header(result.file) == keyfile.KeyFileHeader("SCSM-MS01", "management_server")
    assert keyfile.unseal(result.file, PASSWORD) == machine.current_key()
    assert len(machine.current_key()) >= 32


def test_state_is_private_and_shared_between_processes(tmp_path: Path) -> None:
    first = make(tmp_path)
    state = tmp_path / "state" / "hosts" / f"{HOST}.json"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    first.rebuild()
    again = make(tmp_path)  # another process starting the lab on the same state dir
    assert again.current_key() == first.current_key()
    assert PASSWORD not in state.read_text()
    other = make(tmp_path, name="scsm-ms02")
    assert other.current_key() != first.current_key()


def test_dr_drill_backup_rebuild_restore(tmp_path: Path) -> None:
    machine = make(tmp_path)
    original = machine.current_key()
    backup = export(machine)
    machine.rebuild()
    assert machine.current_key() != original
    result = restore(
        machine, backup.file, expected_computer_name="scsm-ms01.contoso.com", expected_role=Role.MANAGEMENT_SERVER
    )
    assert "Secure Storage Key Restore Complete" in result.tool_output
    assert result.sha256 == backup.sha256
    assert make(tmp_path).current_key() == original


def test_restore_with_wrong_password_fails_and_leaves_the_key(tmp_path: Path) -> None:
    machine = make(tmp_path)
    backup = export(machine)
    machine.rebuild()
    rebuilt = machine.current_key()
    error = failure(restore, machine, backup.file, Secret("not-the-password"))
    assert error.kind is ErrorKind.TOOL_FAILED and "password is incorrect" in error.reason
    assert machine.current_key() == rebuilt


def test_restore_refusals(tmp_path: Path) -> None:
    machine = make(tmp_path)
    backup = export(machine)
    other = make(tmp_path, name="scsm-ms02")
    assert failure(restore, other, backup.file).kind is ErrorKind.TOOL_FAILED  # made on another server
    error = failure(restore, other, backup.file, expected_computer_name=HOST)
    assert error.kind is ErrorKind.NAME_MISMATCH and "same computer name" in error.reason
    error = failure(restore, machine, backup.file, expected_role=Role.DW_MANAGEMENT_SERVER)
    assert error.kind is ErrorKind.ROLE_MISMATCH
    damaged = backup.file[:-1] + bytes([backup.file[-1] ^ 1])
    assert failure(restore, machine, damaged).kind is ErrorKind.TOOL_FAILED
    params = remote.restore_params(backup.file, None, 5)
    params["sha256"] = "0" * 64
    run = helper(machine, "restore", params)
    assert failure(remote.parse_restore, HOST, run.stdout, run.stderr, run.code).kind is ErrorKind.INTEGRITY


def test_password_rules(tmp_path: Path) -> None:
    machine = make(tmp_path)
    error = failure(export, machine, Secret("short7!"))
    assert error.kind is ErrorKind.TOOL_FAILED and "at least 8 characters" in error.reason
    error = failure(export, machine, None)
    assert error.kind is ErrorKind.REMOTE and "no backup password" in error.reason


@pytest.mark.parametrize(
    ("fault", "kind", "hint"),
    [
        ("corrupt-output", ErrorKind.PROTOCOL, "UTF-8"),
        ("truncate-output", ErrorKind.PROTOCOL, "truncated"),
        ("tool-missing", ErrorKind.TOOL_MISSING, "not found"),
        ("tool-failing", ErrorKind.TOOL_FAILED, "exited with code 2"),
        ("tool-hanging", ErrorKind.TOOL_TIMEOUT, "did not finish within 1 s"),
        ("tool-wizard-only", ErrorKind.TOOL_INTERACTIVE, "keyfleet collect"),
        ("tool-exits-early", ErrorKind.TOOL_FAILED, "could not be contacted"),
        ("not-admin", ErrorKind.NOT_ADMIN, "not a local administrator"),
        ("disk-full", ErrorKind.DISK_FULL, "bytes free"),
    ],
)
def test_machine_faults(tmp_path: Path, fault: str, kind: ErrorKind, hint: str) -> None:
    machine = make(tmp_path, fault)
    run = helper(machine, "export", remote.export_params(None, 1))
    error = failure(remote.parse_export, HOST, run.stdout, run.stderr, run.code)
    assert error.kind is kind and hint in error.reason
    if fault in ("tool-hanging", "tool-wizard-only"):
        assert 1 <= run.seconds < 3


@pytest.mark.parametrize(
    ("role", "fault", "reported"),
    [
        (Role.MANAGEMENT_SERVER, "wrong-role", Role.DW_MANAGEMENT_SERVER),
        (Role.DW_MANAGEMENT_SERVER, "wrong-role", Role.MANAGEMENT_SERVER),
        (Role.MANAGEMENT_SERVER, "wrong-role:self_service_portal", Role.SELF_SERVICE_PORTAL),
    ],
)
def test_wrong_role(tmp_path: Path, role: Role, fault: str, reported: Role) -> None:
    machine = make(tmp_path, fault, role=role)
    assert export(machine).roles == (reported,)
    run = helper(machine, "probe", remote.probe_params(None), None)
    assert remote.parse_probe(HOST, run.stdout, run.stderr, run.code).roles == (reported,)


def test_non_admin_user_and_host(tmp_path: Path) -> None:
    assert failure(export, make(tmp_path), user=LabUser("LAB\\reader", False)).kind is ErrorKind.NOT_ADMIN
    assert failure(export, make(tmp_path, admin=False)).kind is ErrorKind.NOT_ADMIN


def test_tool_location(tmp_path: Path) -> None:
    assert failure(export, make(tmp_path, tool_installed=False)).kind is ErrorKind.TOOL_MISSING
    odd = make(tmp_path, tool_path="D:\\Media\\Tools\\SecureStorageBackup\\SecureStorageBackup.exe")
    assert failure(export, odd).kind is ErrorKind.TOOL_MISSING  # not in a known location
    run = helper(
        odd, "export", remote.export_params("d:\\media\\tools\\securestoragebackup\\securestoragebackup.exe", 5)
    )
    assert remote.parse_export(HOST, run.stdout, run.stderr, run.code).tool_path is not None


def test_probe(tmp_path: Path) -> None:
    run = helper(make(tmp_path), "probe", remote.probe_params(None), None)
    probe = remote.parse_probe(HOST, run.stdout, run.stderr, run.code)
    assert probe.admin and probe.roles == (Role.MANAGEMENT_SERVER,) and probe.tool_path and probe.temp_free_bytes
    run = helper(make(tmp_path, "tool-missing", "disk-full", "not-admin"), "probe", remote.probe_params(None), None)
    probe = remote.parse_probe(HOST, run.stdout, run.stderr, run.code)
    assert not probe.admin and probe.tool_path is None and (probe.temp_free_bytes or 0) < 10 * 1024 * 1024


def test_a_modified_helper_script_is_refused(tmp_path: Path) -> None:
    machine = make(tmp_path)
    request_line, secret_line, _ = remote.build_stdin("export", remote.export_params(None, 5), SECRET).split(b"\n")
    request = json.loads(request_line)
    script = base64.b64decode(request["script"]) + b"\nStart-Process calc.exe\n"
    request["script"] = base64.b64encode(script).decode()

    def stdin() -> bytes:
        return json.dumps(request).encode() + b"\n" + secret_line + b"\n"

    run = execute(machine, remote.bootstrap_command_line(), stdin())
    error = failure(remote.parse_result, HOST, run.stdout, run.stderr, run.code)
    assert error.kind is ErrorKind.PROTOCOL and "SHA-256" in error.reason
    request["sha256"] = hashlib.sha256(script).hexdigest()
    run = execute(machine, remote.bootstrap_command_line(), stdin())
    error = failure(remote.parse_result, HOST, run.stdout, run.stderr, run.code)
    assert error.kind is ErrorKind.REMOTE and "byte-identical" in error.reason
    # export.ps1 alone is not what keyfleet sends (common.ps1 + conpty.ps1 + export.ps1)
    alone = resources.files("orchestrator").joinpath("helpers", "export.ps1").read_bytes()
    request.update(script=base64.b64encode(alone).decode(), sha256=hashlib.sha256(alone).hexdigest())
    run = execute(machine, remote.bootstrap_command_line(), stdin())
    error = failure(remote.parse_result, HOST, run.stdout, run.stderr, run.code)
    assert error.kind is ErrorKind.REMOTE and "byte-identical" in error.reason


def test_bad_requests_on_stdin(tmp_path: Path) -> None:
    machine = make(tmp_path)
    for stdin in (b"", b"{not json", b'{"format": "other"}'):
        run = execute(machine, remote.bootstrap_command_line(), stdin)
        assert run.code == 1
        assert failure(remote.parse_result, HOST, run.stdout, run.stderr, run.code).kind is ErrorKind.PROTOCOL
    run = helper(machine, "export", remote.export_params(None, -1))
    assert failure(remote.parse_result, HOST, run.stdout, run.stderr, run.code).kind is ErrorKind.REMOTE


def test_other_powershell_commands_are_refused(tmp_path: Path) -> None:
    machine = make(tmp_path)
    other = remote.encode_command("Write-Output 'hello'")
    for command in (
        f"powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -EncodedCommand {other}",
        "powershell.exe -NoProfile -EncodedCommand @@not-base64@@",
        "powershell.exe -Command Get-Date",
    ):
        run = execute(machine, command, remote.build_stdin("probe", {}, None))
        assert run.code == 1 and run.stdout == b"" and run.stderr
        assert failure(remote.parse_result, HOST, run.stdout, run.stderr, run.code).kind is ErrorKind.PROTOCOL
    bootstrap = remote.bootstrap_command_line().split()[-1]
    run = execute(machine, f"PowerShell -enc {bootstrap}", remote.build_stdin("probe", {}, None))
    assert run.code == 0  # abbreviated switches are accepted, as powershell.exe does


def test_cancel_stops_a_hanging_tool_promptly(tmp_path: Path) -> None:
    machine = make(tmp_path, "tool-hanging")
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    run = helper(machine, "export", remote.export_params(None, 60), cancel=cancel)
    assert run.seconds < 2 and run.code != 0 and run.stdout == b""


def test_stdin_pipe_waits_for_end_of_stream_or_cancel() -> None:
    pipe, cancel = StdinPipe(), threading.Event()

    def feed() -> None:
        pipe.write(b"a")
        pipe.write(b"b")
        pipe.close()

    threading.Timer(0.1, feed).start()
    assert pipe.read_all(cancel) == b"ab"
    with pytest.raises(ValueError):
        pipe.write(b"late")
    open_pipe = StdinPipe()
    threading.Timer(0.1, cancel.set).start()
    open_pipe.write(b"partial")
    assert open_pipe.read_all(cancel) == b"partial"


@pytest.mark.lab
def test_dr_drill_over_winrm(tmp_path: Path) -> None:
    """The same bytes over real sockets: pywinrm (NTLM, encrypted) against the lab's WS-Management server."""
    from winrm.protocol import Protocol

    from orchestrator.lab.fleet import LabFleet, LabHostSpec

    user, password = "LAB\\svc-keyfleet", "Winrm-pw-Sample-1"
    spec = LabHostSpec(
        name=HOST, group="TEST", role=Role.MANAGEMENT_SERVER, address=ALLOCATOR.address(), port=0, scheme="http",
        auth="ntlm", users={user: (password, True)}, settings=LabHostSettings(),
    )  # fmt: skip

    def run(p: Protocol, helper_name: str, params: dict[str, object]) -> tuple[bytes, bytes, int]:
        shell = p.open_shell()
        try:
            command = p.run_command(shell, remote.bootstrap_command_line())
            p.send_command_input(shell, command, remote.build_stdin(helper_name, params, SECRET), end=True)
            stdout, stderr, code = p.get_command_output(shell, command)
            p.cleanup_command(shell, command)
        finally:
            p.close_shell(shell)
        return stdout, stderr, code

    journal = tmp_path / "journal.jsonl"
    with LabFleet([spec], tmp_path / "state", seed=3, journal_path=journal) as fleet:
        served = fleet.spec(HOST)
        p = Protocol(
            served.endpoint, transport="ntlm", username=user, password=password, proxy=None,
            ca_trust_path=str(fleet.ca_path),
        )  # fmt: skip
        machine = fleet.machine(HOST)
        original = machine.current_key()
        backup = remote.parse_export(HOST, *run(p, "export", remote.export_params(None, 5)))
        machine.rebuild()
        restored = remote.parse_restore(HOST, *run(p, "restore", remote.restore_params(backup.file, None, 5)))
        assert restored.sha256 == backup.sha256
        assert machine.current_key() == original
    assert remote.bootstrap_command_line() in journal.read_text()
    assert PASSWORD not in journal.read_text()
