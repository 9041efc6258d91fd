"""The Python side of the remote helper contract: the request it builds and the results it accepts."""

from __future__ import annotations

import base64
import hashlib
import json
import tracemalloc
from importlib import resources

import pytest

from orchestrator.errors import ErrorKind, HostFailure
from orchestrator.helpers import remote
from orchestrator.inventory.model import Role
from orchestrator.secret import Secret

HOST = "scsm-ms01"
PASSWORD = "Pw-unique-7f3c9a!"


def _line(document: object) -> bytes:
    return remote.RESULT_MARKER + json.dumps(document).encode() + b"\r\n"


def _ok(result: dict[str, object], helper: str = "export") -> bytes:
    return _line({"ok": True, "helper": helper, "result": result})


def _export_result(file: bytes = b"sealed key file") -> dict[str, object]:
    return {
        "file": base64.b64encode(file).decode(),
        "sha256": hashlib.sha256(file).hexdigest(),
        "size": len(file),
        "roles": ["management_server", "self_service_portal"],
        "version": "10.22.1068.0",
        "method": "stdin",
        "tool_path": r"C:\Tools\SecureStorageBackup.exe",
        "tool_exit": 0,
        "tool_output": "Secure Storage Backup Complete",
        "computer_name": "SCSM-MS01",
        "helper_version": remote.HELPER_VERSION,
    }


def _failure(kind: str, message: str, stdout: bytes | None = None, code: int = 1) -> HostFailure:
    payload = (
        stdout
        if stdout is not None
        else _line({"ok": False, "helper": "export", "error": {"kind": kind, "message": message}})
    )
    with pytest.raises(HostFailure) as caught:
        remote.parse_result(HOST, payload, b"", code)
    return caught.value


def test_scripts_load_with_their_sha256() -> None:
    for name in (*remote.HELPERS, "bootstrap"):
        script = remote.load_script(name)
        assert script.sha256 == hashlib.sha256(script.content).hexdigest()
        assert script.content.startswith(b"<#") or script.content.startswith(b"#")
    for name in ("../secrets", remote.COMMON):  # common.ps1 is sent only as part of a helper
        with pytest.raises(ValueError, match="unknown helper"):
            remote.load_script(name)


@pytest.mark.parametrize("helper", remote.HELPERS)
def test_a_helper_script_is_common_conpty_then_the_helper(helper: str) -> None:
    package = resources.files("orchestrator").joinpath("helpers")
    common = package.joinpath("common.ps1").read_bytes()
    conpty = package.joinpath("conpty.ps1").read_bytes()
    own = package.joinpath(f"{helper}.ps1").read_bytes()
    assert remote.load_script(helper).content == common + b"\n" + conpty + b"\n" + own


def test_bootstrap_command_line_is_constant_and_carries_only_the_bootstrap() -> None:
    line = remote.bootstrap_command_line()
    assert line == remote.bootstrap_command_line()
    prefix = "powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -EncodedCommand "
    assert line.startswith(prefix)
    decoded = base64.b64decode(line[len(prefix) :]).decode("utf-16-le")
    assert decoded == remote.bootstrap_text()
    shipped = remote.load_script("bootstrap").content.decode()
    code = [line for line in shipped.splitlines() if not line.lstrip().startswith("#")]
    assert decoded.splitlines() == code and "KEYFLEET-CONSTRAINED-LANGUAGE" in decoded


def _forms(secret: str) -> list[bytes]:
    """The secret as plain text, UTF-16LE, and base64 of both at every alignment."""
    forms = []
    for raw in (secret.encode("utf-8"), secret.encode("utf-16-le")):
        forms.append(raw)
        for skip in range(3):
            encoded = base64.b64encode(b"\0" * skip + raw)[4 if skip else 0 :]
            forms.append(encoded[: len(encoded) - 4])  # the stable middle, whatever surrounds it
    return [f for f in forms if len(f) >= 8]


def test_build_stdin_is_a_request_line_without_the_secret_then_the_secret_line() -> None:
    data = remote.build_stdin("export", remote.export_params(None, 30), Secret(PASSWORD + "é"))
    assert data.endswith(b"\n") and data.count(b"\n") == 2
    data.decode("ascii")
    request_line, secret_line, rest = data.split(b"\n")
    assert rest == b""
    request = json.loads(request_line)
    script = remote.load_script("export")
    assert request["format"] == remote.REQUEST_FORMAT == "keyfleet-helper/2"
    assert set(request) == {"format", "helper", "script", "sha256", "params"}
    assert request["helper"] == "export"
    assert base64.b64decode(request["script"]) == script.content
    assert request["sha256"] == script.sha256
    assert request["params"] == {"tool_path": None, "tool_timeout": 30, "tool_input": "auto"}
    # the JSON document (what ConvertFrom-Json sees, and module logging records) holds no form of it
    for form in _forms(PASSWORD + "é"):
        assert form not in request_line, form
    assert base64.b64decode(secret_line, validate=True).decode("utf-8") == PASSWORD + "é"
    assert PASSWORD not in remote.bootstrap_command_line()


def test_build_stdin_without_secret_and_unknown_helper() -> None:
    data = remote.build_stdin("probe", remote.probe_params("C:\\t.exe"), None)
    assert data.split(b"\n")[1:] == [b"", b""]  # an empty secret line
    with pytest.raises(ValueError, match="unknown helper"):
        remote.build_stdin("bootstrap", {}, None)


def test_restore_params_carry_the_file_and_its_hash() -> None:
    params = remote.restore_params(
        b"key", None, 5, expected_computer_name="scsm-ms01.contoso.com", expected_role=Role.DW_MANAGEMENT_SERVER
    )
    assert base64.b64decode(str(params["file"])) == b"key"
    assert params["sha256"] == hashlib.sha256(b"key").hexdigest()
    assert params["expected_role"] == "dw_management_server"


def test_parse_export_ok() -> None:
    result = remote.parse_export(HOST, b"noise\r\n" + _ok(_export_result()), b"", 0)
    assert result.file == b"sealed key file"
    assert result.roles == (Role.MANAGEMENT_SERVER, Role.SELF_SERVICE_PORTAL) and result.method == "stdin"
    assert result.size == 15 and result.tool_exit == 0 and result.computer_name == "SCSM-MS01"
    assert "sealed" not in repr(result)


@pytest.mark.parametrize(
    "kind",
    ["tool-missing", "tool-failed", "tool-timeout", "not-admin", "disk-full", "role-mismatch", "name-mismatch"],
)
def test_helper_reported_kinds(kind: str) -> None:
    failure = _failure(kind, "what happened")
    assert failure.kind == ErrorKind(kind)
    assert failure.host == HOST and "what happened" in failure.reason


def test_unknown_kind_is_remote_and_secret_is_masked() -> None:
    Secret(PASSWORD)
    failure = _failure("weird", f"the tool echoed {PASSWORD} back")
    assert failure.kind is ErrorKind.REMOTE
    assert PASSWORD not in str(failure) and "********" in failure.reason


@pytest.mark.parametrize(
    ("stdout", "code", "expected"),
    [
        (b"", 1, "no result line"),
        (_ok(_export_result()) * 2, 0, "2 result lines"),
        (_ok(_export_result())[:60], 0, "truncated"),
        (remote.RESULT_MARKER + b'{"ok": tru}\n', 0, "corrupted"),
        (remote.RESULT_MARKER + b'{"ok": "\xff\xfe"}\n', 0, "not valid UTF-8"),
        (remote.RESULT_MARKER + b"[1, 2]\n", 0, "not a helper result"),
        (_line({"ok": True, "helper": "export", "result": "x"}), 0, "without a result object"),
        (_line({"ok": False, "helper": "export"}), 1, "without an error object"),
        (_ok(_export_result()), 3, "exited with code 3"),
    ],
)
def test_protocol_failures(stdout: bytes, code: int, expected: str) -> None:
    failure = _failure("", "", stdout=stdout, code=code)
    assert failure.kind is ErrorKind.PROTOCOL
    assert expected in failure.reason


def test_no_result_line_quotes_stderr() -> None:
    stderr = b"'powershell.exe' is not recognized as an internal or external command,\r\nmore\r\n"
    with pytest.raises(HostFailure) as caught:
        remote.parse_result(HOST, b"", stderr, 1)
    assert caught.value.kind is ErrorKind.PROTOCOL
    assert "'powershell.exe' is not recognized" in caught.value.reason


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("file", "not base64!", "valid base64"),
        ("sha256", "abc", "SHA-256"),
        ("size", "15", "an integer"),
        ("size", True, "an integer"),
        ("roles", ["sql_server"], "a list of known roles"),
        ("method", "telepathy", "stdin, console or wizard"),
        ("tool_output", None, "a string"),
        ("helper_version", 1, "a string"),
    ],
)
def test_export_field_validation(field: str, value: object, expected: str) -> None:
    result = _export_result()
    result[field] = value
    with pytest.raises(HostFailure) as caught:
        remote.parse_export(HOST, _ok(result), b"", 0)
    assert caught.value.kind is ErrorKind.PROTOCOL
    assert expected in caught.value.reason


def test_export_integrity() -> None:
    result = _export_result()
    result["sha256"] = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(HostFailure) as caught:
        remote.parse_export(HOST, _ok(result), b"", 0)
    assert caught.value.kind is ErrorKind.INTEGRITY
    result = _export_result()
    result["size"] = 99
    with pytest.raises(HostFailure) as caught:
        remote.parse_export(HOST, _ok(result), b"", 0)
    assert caught.value.kind is ErrorKind.INTEGRITY


def test_parse_probe_and_restore() -> None:
    probe = {
        "computer_name": "SCSM-MS01",
        "admin": False,
        "roles": [],
        "version": None,
        "tool_path": None,
        "tool_version": None,
        "temp_path": "C:\\Temp\\",
        "temp_free_bytes": 12,
        "powershell_version": "5.1",
        "helper_version": remote.HELPER_VERSION,
    }
    parsed = remote.parse_probe(HOST, _ok(probe, "probe"), b"", 0)
    assert parsed.admin is False and parsed.roles == () and parsed.temp_free_bytes == 12
    probe["admin"] = "yes"
    with pytest.raises(HostFailure, match="true or false"):
        remote.parse_probe(HOST, _ok(probe, "probe"), b"", 0)
    restore = _export_result()
    del restore["file"], restore["size"]
    assert remote.parse_restore(HOST, _ok(restore, "restore"), b"", 0).sha256 == restore["sha256"]


def test_reason_is_bounded() -> None:
    failure = _failure("tool-failed", "x" * 5000)
    assert len(failure.reason) <= 400


# CLIXML as powershell.exe writes it on stderr (the form pywinrm's run_ps and Ansible decode):
# a progress record first, then the error text in <S S="Error"> lines with CR LF escaped.
_PROGRESS = (
    b'#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
    b'<Obj S="progress" RefId="0"><TN RefId="0"><T>System.Management.Automation.PSCustomObject</T>'
    b'<T>System.Object</T></TN><MS><I64 N="SourceId">1</I64><PR N="Record"><AV>Preparing modules for first '
    b"use.</AV><AI>0</AI><Nil /><PI>-1</PI><PC>-1</PC><T>Completed</T><SR>-1</SR><SD> </SD></PR></MS></Obj></Objs>"
)


def _clixml_error(*lines: str) -> bytes:
    body = "".join(f'<S S="Error">{line}_x000D__x000A_</S>' for line in lines)
    return (
        f'#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">{body}</Objs>'
    ).encode()


def test_clixml_error_is_decoded_into_the_failure() -> None:
    stderr = _PROGRESS + _clixml_error(
        "Program 'SecureStorageBackup.exe' failed to run: This program is blocked by group policy.",
        "At line:1 char:1",
    )
    assert remote.decode_clixml(stderr) == (
        "Program 'SecureStorageBackup.exe' failed to run: This program is blocked by group policy.\r\nAt line:1 char:1"
    )
    with pytest.raises(HostFailure) as caught:
        remote.parse_result(HOST, b"", stderr, 1)
    assert caught.value.kind is ErrorKind.REMOTE
    assert "blocked by group policy" in caught.value.reason and "_x000D_" not in caught.value.reason


def test_constrained_language_mode_has_its_own_kind() -> None:
    stderr = _PROGRESS + _clixml_error(
        "KEYFLEET-CONSTRAINED-LANGUAGE: PowerShell runs in ConstrainedLanguage mode on SCSM-MS01",
        "At line:9 char:5",
    )
    with pytest.raises(HostFailure) as caught:
        remote.parse_result(HOST, b"", stderr, 1)
    assert caught.value.kind is ErrorKind.CONSTRAINED_LANGUAGE
    assert "ConstrainedLanguage mode on SCSM-MS01" in caught.value.reason


def test_progress_only_clixml_does_not_hide_a_good_result() -> None:
    result = remote.parse_export(HOST, _ok(_export_result()), _PROGRESS, 0)
    assert result.file == b"sealed key file"
    assert remote.decode_clixml(_PROGRESS) == ""
    with pytest.raises(HostFailure) as caught:
        remote.parse_result(HOST, b"", _PROGRESS, 1)
    assert caught.value.kind is ErrorKind.PROTOCOL and "CLIXML" not in caught.value.reason


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("Short-1", "fewer than 8"),
        ("Pässwort-2026", "outside printable ASCII"),
        ("tab\tinside-pw", "outside printable ASCII"),
        ("Ok password with spaces & ~!", None),
    ],
)
def test_tool_password_rules(password: str, problem: str | None) -> None:
    found = remote.tool_password_problem(password)
    assert (found is None) if problem is None else (problem in (found or ""))


@pytest.mark.parametrize(
    ("document", "why"),
    [(b"[" * 200_000, "RecursionError"), (b"9" * 5000, "ValueError")],  # nested too deep; past int's 4,300 digits
)
def test_a_result_line_past_python_s_json_limits_is_a_protocol_failure(document: bytes, why: str) -> None:
    failure = _failure("", "", stdout=remote.RESULT_MARKER + document + b"\n", code=0)
    assert failure.kind is ErrorKind.PROTOCOL and why in failure.reason, failure


def test_a_server_s_words_in_a_result_are_one_bounded_line() -> None:
    """Fields shown on the console and kept in the manifest lose a server's line breaks, controls and
    bidirectional overrides; the key file's base64 and the tool's output are kept as sent."""
    result = _export_result()
    result["computer_name"] = "SCSM-MS01\n  prod-ms02: ok\u202e\u009b31m" + "x" * 5000
    result["tool_output"] = "line one\r\nline two"
    parsed = remote.parse_export(HOST, _ok(result), b"", 0)
    assert parsed.computer_name is not None and parsed.computer_name.isprintable()
    assert parsed.computer_name.startswith("SCSM-MS01 prod-ms02: ok") and len(parsed.computer_name) <= 1024
    assert parsed.tool_output == "line one\r\nline two" and parsed.file == b"sealed key file"


def test_clixml_of_too_many_elements_is_not_read() -> None:
    """powershell.exe's stderr is the server's: a CLIXML document of 100,000 elements
    is left unread (its tree would take about 30 MB), as if stderr held no error text."""
    stderr = b"#< CLIXML\r\n<Objs>" + b"<S>" * 100_000 + b"</S>" * 100_000 + b"</Objs>"
    tracemalloc.start()
    try:
        assert remote.decode_clixml(stderr) == ""
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, peak


def _collected(name: str) -> bytes:
    file = b"sealed key file"
    return _ok(
        {
            "file": base64.b64encode(file).decode(),
            "sha256": hashlib.sha256(file).hexdigest(),
            "size": len(file),
            "name": name,
            "written": "2026-11-30T10:00:00Z",
            "roles": ["management_server"],
            "version": "10.22.1068.0",
            "computer_name": "SCSM-MS01",
            "helper_version": remote.HELPER_VERSION,
        },
        helper="collect",
    )


def test_a_collected_file_name_goes_back_to_the_server_exactly_as_it_came() -> None:
    """collect asks the server to remove the file by the name it sent: kept exact (two spaces and all),
    and refused when it is more than a plain name (a path, a drive, a control character)."""
    assert remote.parse_collect(HOST, _collected("SCSM  Key.bin"), b"", 0).name == "SCSM  Key.bin"
    for bad in ("..\\secret.bin", "C:key.bin", "a/b.bin", "key\u202e.bin", ""):
        with pytest.raises(HostFailure) as caught:
            remote.parse_collect(HOST, _collected(bad), b"", 0)
        assert caught.value.kind is ErrorKind.PROTOCOL and "is not a file name" in caught.value.reason
