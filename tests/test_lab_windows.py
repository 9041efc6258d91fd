"""The Windows behaviour the lab models at the byte level, and the faults the first release's helper
had against it: each test here fails if the shipped helpers move bytes the wrong way."""

from __future__ import annotations

import base64
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import ErrorKind, HostFailure
from orchestrator.helpers import remote
from orchestrator.inventory.model import Role
from orchestrator.lab import helpersim, keyfile, machine, windows
from orchestrator.lab.config import LabHostSettings
from orchestrator.lab.machine import LabUser, Machine, StdinPipe
from orchestrator.lab.tool import Behaviour, Exited, Hang, ToolProcess
from orchestrator.lab.windows import CommandOptions, facts_of, script_facts
from orchestrator.secret import Secret

PASSWORD = "Lab-pw-4b1d-unique"
SECRET = Secret(PASSWORD, "test")
ADMIN = LabUser("LAB\\keyfleet", True)
HOST = "scsm-ms01"
DATA = Path(__file__).parent / "data"
RELEASE1 = facts_of((DATA / "release1-common.ps1").read_text(), (DATA / "release1-bootstrap.ps1").read_text())


def make(tmp_path: Path, *faults: str, role: Role = Role.MANAGEMENT_SERVER, **lab: Any) -> Machine:
    settings = replace(LabHostSettings(), faults=tuple(faults), **lab)
    return Machine(HOST, role, settings, tmp_path / "state", seed=7)


def run_helper(
    host: Machine,
    name: str,
    params: dict[str, object],
    secret: Secret | None = SECRET,
    options: CommandOptions | None = None,
) -> tuple[bytes, bytes, int]:
    out = {"stdout": b"", "stderr": b""}
    pipe = StdinPipe()
    pipe.write(remote.build_stdin(name, params, secret))
    pipe.close()

    def emit(stream: str, data: bytes) -> None:
        out[stream] += data

    code = host.execute(remote.bootstrap_command_line(), pipe, ADMIN, emit, threading.Event(), options)
    return out["stdout"], out["stderr"], code


def export(host: Machine, tool_input: str = "auto", **kw: Any) -> remote.ExportResult:
    return remote.parse_export(HOST, *run_helper(host, "export", remote.export_params(None, 2, tool_input), **kw))


def failure(host: Machine, tool_input: str = "auto", **kw: Any) -> HostFailure:
    with pytest.raises(HostFailure) as caught:
        export(host, tool_input, **kw)
    return caught.value


def use_facts(monkeypatch: pytest.MonkeyPatch, facts: windows.ScriptFacts) -> None:
    monkeypatch.setattr(helpersim, "script_facts", lambda: facts)
    monkeypatch.setattr(machine, "script_facts", lambda: facts)


# -- what the shipped scripts do, read from their text --------------------------------------------


def test_the_shipped_scripts_move_bytes_the_safe_way() -> None:
    facts = script_facts()
    assert facts.sets_utf8_console_without_bom and facts.writes_stdin_bytes and not facts.writes_stdin_lines
    assert facts.tool_folder_is_working_directory and facts.checks_language_mode_first
    assert not facts.uses_dollar_input


def test_the_first_release_had_each_fault() -> None:
    assert not RELEASE1.sets_utf8_console_without_bom and RELEASE1.writes_stdin_lines
    assert not RELEASE1.tool_folder_is_working_directory and not RELEASE1.checks_language_mode_first


# -- tool stdin: BOM, code page, line ends ---------------------------------------------------------


def test_a_bom_makes_the_tool_read_another_password() -> None:
    data, codepage = windows.tool_stdin_bytes([PASSWORD, PASSWORD], 65001, RELEASE1)
    assert data.startswith(windows.UTF8_BOM) and codepage == 65001
    first, second, *_ = windows.console_read_lines(data, codepage)
    assert first == "\ufeff" + PASSWORD and second == PASSWORD
    data, codepage = windows.tool_stdin_bytes([PASSWORD, PASSWORD], 65001, script_facts())
    assert data == f"{PASSWORD}\r\n{PASSWORD}\r\n".encode() and codepage == 65001
    # a shell left on the OEM code page: no BOM, the bytes are the same for printable ASCII
    data, codepage = windows.tool_stdin_bytes([PASSWORD, PASSWORD], 437, RELEASE1)
    assert data == f"{PASSWORD}\r\n{PASSWORD}\r\n".encode() and codepage == 437


def test_text_through_the_stdin_writer_takes_the_console_code_page_bytes_do_not() -> None:
    # StandardInput.WriteLine encodes with Console.InputEncoding; BaseStream.Write sends the script's own UTF-8
    shipped = script_facts()
    by_writer = replace(shipped, writes_stdin_bytes=False, writes_stdin_lines=True)
    own, _ = windows.tool_stdin_bytes(["Pässwörd"], 850, replace(shipped, sets_utf8_console_without_bom=False))
    written, _ = windows.tool_stdin_bytes(["Pässwörd"], 850, replace(by_writer, sets_utf8_console_without_bom=False))
    assert own == "Pässwörd\r\n".encode()
    assert written == "Pässwörd\r\n".encode("cp850")


def test_the_first_release_helper_fails_on_the_lab_as_it_would_on_windows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert export(make(tmp_path)).file  # the shipped helper works
    use_facts(monkeypatch, replace(script_facts(), sets_utf8_console_without_bom=False))
    error = failure(make(tmp_path))
    assert error.kind is ErrorKind.TOOL_FAILED and "The passwords do not match." in error.reason
    use_facts(monkeypatch, replace(script_facts(), tool_folder_is_working_directory=False))
    error = failure(make(tmp_path))
    assert error.kind is ErrorKind.TOOL_FAILED and "Could not load file or assembly" in error.reason


def test_dollar_input_would_take_stdin_from_the_bootstrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_facts(monkeypatch, replace(script_facts(), uses_dollar_input=True))
    error = failure(make(tmp_path))
    assert error.kind is ErrorKind.PROTOCOL and "stdin ended" in error.reason


def test_console_mode_stdin_echoes_the_secret_line(tmp_path: Path) -> None:
    """Why keyfleet opens commands in pipe mode: a console echoes what it is sent (winrs -noecho)."""
    secret_line = remote.build_stdin("export", {}, SECRET).split(b"\n")[1]
    stdout, _, _ = run_helper(make(tmp_path), "export", remote.export_params(None, 2), options=CommandOptions(True))
    assert secret_line in stdout
    stdout, _, _ = run_helper(make(tmp_path), "export", remote.export_params(None, 2), options=CommandOptions(False))
    assert secret_line not in stdout and PASSWORD.encode() not in stdout


# -- powershell.exe: CLIXML, Constrained Language Mode --------------------------------------------


def test_constrained_language_mode_is_reported_as_such(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = make(tmp_path, "constrained-language")
    stdout, stderr, code = run_helper(host, "export", remote.export_params(None, 2))
    assert code == 1 and remote.RESULT_MARKER not in stdout and stderr.count(b"#< CLIXML") == 2
    error = failure(host)
    assert error.kind is ErrorKind.CONSTRAINED_LANGUAGE and "ConstrainedLanguage mode on SCSM-MS01" in error.reason
    # without the check first, the first .NET call fails: readable, but not named
    use_facts(monkeypatch, replace(script_facts(), checks_language_mode_first=False))
    error = failure(host)
    assert error.kind is ErrorKind.REMOTE and "supported only on core types" in error.reason


def test_every_powershell_run_writes_progress_clixml_that_is_ignored(tmp_path: Path) -> None:
    stdout, stderr, code = run_helper(make(tmp_path), "probe", remote.probe_params(None), None)
    assert code == 0 and stderr.startswith(b"#< CLIXML") and b"Preparing modules" in stderr
    assert remote.parse_probe(HOST, stdout, stderr, code).computer_name == "SCSM-MS01"


# -- discovery, version, roles ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "folder"),
    [
        ("7.5.7487.0", r"C:\Program Files\Microsoft System Center 2016\Service Manager"),
        ("10.19.1035.0", r"C:\Program Files\Microsoft System Center\Service Manager"),
        ("10.25.1523.0", r"C:\Program Files\Microsoft System Center\Service Manager"),
    ],
)
def test_each_version_installs_where_it_does_and_is_found(tmp_path: Path, version: str, folder: str) -> None:
    result = export(make(tmp_path, version=version))
    assert result.tool_path == folder + r"\Tools\SecureStorageBackup\SecureStorageBackup.exe"
    assert result.version == version


def test_the_install_folder_setup_recorded_is_searched(tmp_path: Path) -> None:
    host = make(tmp_path, install_dir=r"D:\SCSM", tool_path=r"D:\SCSM\SecureStorageBackup.exe")
    assert export(host).tool_path == r"D:\SCSM\SecureStorageBackup.exe"
    hidden = make(tmp_path, tool_path=r"E:\Media\SecureStorageBackup.exe")
    error = failure(hidden)
    assert error.kind is ErrorKind.TOOL_MISSING and r"D:\SCSM" not in error.reason
    assert r"Microsoft System Center 2016\Service Manager (each folder also under Tools" in error.reason


def test_third_party_software_does_not_fool_the_version(tmp_path: Path) -> None:
    host = make(tmp_path, server_version_value=False, version="10.22.1068.0")
    noise = {e["DisplayVersion"] for e in host.installation.uninstall_entries()}
    assert {"12.8.0.2016", "10.99.0.0"} <= noise  # a higher third-party and a Microsoft console entry
    assert export(host).version == "10.22.1068.0"


def test_a_server_reports_every_role(tmp_path: Path) -> None:
    host = make(tmp_path, extra_roles=("self_service_portal",))
    assert export(host).roles == (Role.MANAGEMENT_SERVER, Role.SELF_SERVICE_PORTAL)
    probe = remote.parse_probe(HOST, *run_helper(host, "probe", remote.probe_params(None), None))
    assert probe.roles == (Role.MANAGEMENT_SERVER, Role.SELF_SERVICE_PORTAL) and probe.os_build == 20348


# -- process handling ------------------------------------------------------------------------------


def test_a_locked_temporary_folder_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    result = export(make(tmp_path, "cleanup-locked"))
    assert result.file and result.cleanup_warning and "being used by another process" in result.cleanup_warning


def test_a_tool_that_exits_before_reading_reports_its_own_output(tmp_path: Path) -> None:
    error = failure(make(tmp_path, "tool-exits-early"))
    assert error.kind is ErrorKind.TOOL_FAILED and "exited with code 1" in error.reason
    assert "could not be contacted" in error.reason


# -- how the password reaches the tool (issue: tool input) ------------------------------------------


def test_a_readkey_tool_fails_on_stdin_and_works_on_a_console(tmp_path: Path) -> None:
    host = make(tmp_path, "tool-readkey")
    error = failure(host, "stdin")
    assert error.kind is ErrorKind.TOOL_FAILED and remote.MASKED_READ_MESSAGE in error.reason
    for mode in ("auto", "console"):
        result = export(host, mode)
        assert result.method == "console" and keyfile.unseal(result.file, PASSWORD) == host.current_key()
        assert "*" * len(PASSWORD) in result.tool_output


def test_a_stdin_tool_on_a_console_echoes_and_the_echo_is_masked(tmp_path: Path) -> None:
    host = make(tmp_path)
    result = export(host, "console")
    assert result.method == "console" and "********" in result.tool_output
    assert PASSWORD not in result.tool_output


def test_windows_server_2016_has_no_pseudo_console(tmp_path: Path) -> None:
    host = make(tmp_path, "tool-readkey", windows_build=14393)
    error = failure(host, "auto")
    assert error.kind is ErrorKind.CONSOLE_UNAVAILABLE and "Windows Server 2016" in error.reason


def test_a_wizard_only_tool_points_to_collect(tmp_path: Path) -> None:
    for mode in ("stdin", "console"):
        error = failure(make(tmp_path, "tool-wizard-only"), mode)
        assert error.kind is ErrorKind.TOOL_INTERACTIVE and "keyfleet collect" in error.reason


def test_the_pseudo_console_takes_keystrokes_as_a_real_one() -> None:
    """Enter is CR: a helper that typed CR LF would give the LF to the next password."""
    seen: list[str] = []

    def finish(password: str) -> keyfile.ToolRun:
        seen.append(password)
        return keyfile.ToolRun(0, "done")

    tool = ToolProcess(Behaviour.READKEY, finish)
    typed = iter([PASSWORD.encode() + b"\r\n", PASSWORD.encode() + b"\r\n"])
    outcome = tool.run_console(lambda _screen: next(typed))
    assert isinstance(outcome, Exited) and outcome.run.exit_code == 1 and "do not match" in outcome.run.output
    typed = iter([PASSWORD.encode() + b"\r", PASSWORD.encode() + b"\r"])
    outcome = tool.run_console(lambda _screen: next(typed))
    assert isinstance(outcome, Exited) and outcome.run.exit_code == 0 and seen == [PASSWORD]
    assert isinstance(ToolProcess(Behaviour.WIZARD_ONLY, finish).run_console(lambda _s: None), Hang)


def test_smoke_reports_which_method_works(tmp_path: Path) -> None:
    cases = {(): "stdin", ("tool-readkey",): "console", ("tool-wizard-only",): None}
    for faults, works in cases.items():
        host = make(tmp_path / "-".join(faults or ("plain",)), *faults)
        smoke = remote.parse_smoke(HOST, *run_helper(host, "smoke", remote.smoke_params(None, 1), None))
        assert smoke.works == works, faults
        assert [a.method for a in smoke.attempts] == (["stdin"] if works == "stdin" else ["stdin", "console"])
    key_before = make(tmp_path / "plain").current_key()
    assert make(tmp_path / "plain").current_key() == key_before  # the smoke test only reads the key


def test_collect_hands_over_the_newest_wizard_file(tmp_path: Path) -> None:
    host = make(tmp_path)
    with pytest.raises(HostFailure) as caught:
        remote.parse_collect(HOST, *run_helper(host, "collect", remote.collect_params(remote.DEFAULT_OUTBOX), None))
    assert caught.value.kind is ErrorKind.NO_KEY_FILE and "run the wizard" in caught.value.reason
    sealed = keyfile.seal(host.current_key(), PASSWORD, "SCSM-MS01", "management_server")
    host.registry.save_to_outbox("old.bin", b"older")
    host.registry.save_to_outbox("SMBackupkey.bin", sealed)
    older = host.registry.outbox_dir / "old.bin"
    import os

    os.utime(older, (1, 1))
    got = remote.parse_collect(HOST, *run_helper(host, "collect", remote.collect_params(remote.DEFAULT_OUTBOX), None))
    assert got.file == sealed and got.name == "SMBackupkey.bin" and got.roles == (Role.MANAGEMENT_SERVER,)
    removal = remote.collect_params(remote.DEFAULT_OUTBOX, remove=(got.name, "0" * 64))
    with pytest.raises(HostFailure) as caught:
        remote.parse_collect_remove(HOST, *run_helper(host, "collect", removal, None))
    assert caught.value.kind is ErrorKind.INTEGRITY and (host.registry.outbox_dir / got.name).exists()
    removal = remote.collect_params(remote.DEFAULT_OUTBOX, remove=(got.name, got.sha256))
    assert remote.parse_collect_remove(HOST, *run_helper(host, "collect", removal, None)).endswith("SMBackupkey.bin")
    assert not (host.registry.outbox_dir / got.name).exists() and older.exists()


def test_the_secret_line_is_decoded_as_the_bootstrap_does(tmp_path: Path) -> None:
    """UTF-8 bytes in base64: the JSON request never holds the password."""
    stdin = remote.build_stdin("export", remote.export_params(None, 2), SECRET)
    assert base64.b64encode(PASSWORD.encode()) in stdin and PASSWORD.encode() not in stdin
    assert helpersim.read_lines(stdin, 437)[1] == base64.b64encode(PASSWORD.encode()).decode()
