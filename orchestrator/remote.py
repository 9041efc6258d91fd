"""The remote helper contract: the constant bootstrap command, the stdin request, typed results.

A helper is a PowerShell script shipped as package data: ``common.ps1`` (parameters, settings,
shared functions) followed by ``<helper>.ps1``, sent as one script. The command line sent over
WinRM is always the same short bootstrap; the helper script, its SHA-256, its parameters and the
secret travel on stdin as one JSON line. The bootstrap answers with one ``KEYFLEET-RESULT {json}`` line:
``{"ok": true, "helper": NAME, "result": {...}}`` or
``{"ok": false, "helper": NAME, "error": {"kind": KIND, "message": TEXT}}``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, TypeVar

from orchestrator.errors import ErrorKind, HostFailure
from orchestrator.inventory.model import Role
from orchestrator.secret import Secret, mask

HELPERS = ("export", "restore", "probe")
BOOTSTRAP = "bootstrap"
COMMON = "common"  # the part every helper script starts with
HELPER_VERSION = "1.0.0"  # common.ps1 declares the same value in $HelperVersion
REQUEST_FORMAT = "keyfleet-helper/1"
RESULT_MARKER = b"KEYFLEET-RESULT "
MAX_KEY_FILE_BYTES = 256 * 1024  # the helpers refuse a larger key file
MAX_OUTPUT_BYTES = 1024 * 1024  # a sensible output cap for the session layer: base64 + tool output
_REASON_LIMIT = 400
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# kinds a helper may report; anything else is reported as REMOTE
_HELPER_KINDS = {
    k.value: k
    for k in (
        ErrorKind.TOOL_MISSING,
        ErrorKind.TOOL_FAILED,
        ErrorKind.TOOL_TIMEOUT,
        ErrorKind.NOT_ADMIN,
        ErrorKind.DISK_FULL,
        ErrorKind.ROLE_MISMATCH,
        ErrorKind.NAME_MISMATCH,
        ErrorKind.INTEGRITY,
        ErrorKind.PROTOCOL,
        ErrorKind.REMOTE,
    )
}


@dataclass(frozen=True)
class HelperScript:
    """A script as keyfleet sends it: its exact bytes and their SHA-256 (hex)."""

    name: str
    content: bytes = field(repr=False)
    sha256: str


def _package_file(name: str) -> bytes:
    return resources.files("orchestrator").joinpath("helpers", f"{name}.ps1").read_bytes()


@cache
def load_script(name: str) -> HelperScript:
    """The script keyfleet sends for ``name``, from the installed package: ``bootstrap.ps1`` as it is;
    for a helper, ``common.ps1``, a blank line, then ``<name>.ps1``, so the server needs no file."""
    if name == BOOTSTRAP:
        content = _package_file(BOOTSTRAP)
    elif name in HELPERS:
        content = _package_file(COMMON) + b"\n" + _package_file(name)
    else:
        raise ValueError(f"unknown helper {name!r} (choose from {', '.join(HELPERS)})")
    return HelperScript(name, content, hashlib.sha256(content).hexdigest())


def encode_command(script: str) -> str:
    """PowerShell's ``-EncodedCommand`` form of a script: base64 of its UTF-16LE text."""
    return base64.b64encode(script.encode("utf-16-le")).decode("ascii")


@cache
def bootstrap_command_line() -> str:
    """The one command line keyfleet ever runs remotely. It carries no data and no secret."""
    text = load_script(BOOTSTRAP).content.decode("utf-8-sig")
    return f"powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -EncodedCommand {encode_command(text)}"


def build_stdin(helper: str, params: dict[str, object], secret: Secret | None) -> bytes:
    """The bootstrap's stdin: one JSON line with the helper script, its SHA-256, params and secret.

    The JSON is ASCII (non-ASCII characters escaped), so the remote console code page cannot
    alter it. The caller sends it and then closes stdin.
    """
    if helper not in HELPERS:
        raise ValueError(f"unknown helper {helper!r} (choose from {', '.join(HELPERS)})")
    script = load_script(helper)
    request = {
        "format": REQUEST_FORMAT,
        "helper": helper,
        "script": base64.b64encode(script.content).decode("ascii"),
        "sha256": script.sha256,
        "params": params,
        "secret": None if secret is None else secret.reveal(),
    }
    return (json.dumps(request, ensure_ascii=True, separators=(",", ":")) + "\n").encode("ascii")


def export_params(tool_path: str | None, tool_timeout: float) -> dict[str, object]:
    return {"tool_path": tool_path, "tool_timeout": tool_timeout}


def restore_params(
    key_file: bytes,
    tool_path: str | None,
    tool_timeout: float,
    *,
    expected_computer_name: str | None = None,
    expected_role: Role | None = None,
) -> dict[str, object]:
    """Restore parameters. The helper refuses a server whose computer name (first DNS label, any
    case) or detected role differs from the expected one; a server without a detected role (not
    yet set up, as Microsoft's recovery requires) is accepted."""
    return {
        "file": base64.b64encode(key_file).decode("ascii"),
        "sha256": hashlib.sha256(key_file).hexdigest(),
        "tool_path": tool_path,
        "tool_timeout": tool_timeout,
        "expected_computer_name": expected_computer_name,
        "expected_role": None if expected_role is None else expected_role.value,
    }


def probe_params(tool_path: str | None) -> dict[str, object]:
    return {"tool_path": tool_path}


def _reason(text: str) -> str:
    text = mask(" ".join(text.split()))
    return text if len(text) <= _REASON_LIMIT else text[: _REASON_LIMIT - 3] + "..."


def _protocol(host: str, reason: str) -> HostFailure:
    return HostFailure(ErrorKind.PROTOCOL, host, _reason(reason))


def parse_result(host: str, stdout: bytes, stderr: bytes, exit_code: int) -> dict[str, object]:
    """The ``result`` object of a successful helper run; HostFailure for anything else."""
    lines = [line for line in stdout.splitlines(keepends=True) if line.startswith(RESULT_MARKER)]
    if not lines:
        detail = stderr.decode("utf-8", "replace").strip().splitlines()
        hint = f": {detail[0]}" if detail else ""
        raise _protocol(host, f"no result line from the remote helper (exit code {exit_code}){hint}")
    if len(lines) > 1:
        raise _protocol(host, f"{len(lines)} result lines from the remote helper, expected one")
    line = lines[0]
    complete = line.endswith(b"\n")
    try:
        document = json.loads(line[len(RESULT_MARKER) :].rstrip(b"\r\n").decode("utf-8"))
    except UnicodeDecodeError:
        raise _protocol(host, "the result line is not valid UTF-8 (corrupted output)") from None
    except json.JSONDecodeError as exc:
        what = "truncated" if not complete else "corrupted"
        raise _protocol(host, f"the result line is not valid JSON ({what} output: {exc.msg})") from None
    if not isinstance(document, dict) or not isinstance(document.get("ok"), bool):
        raise _protocol(host, "the result line is not a helper result object")
    helper = document.get("helper") or "remote"
    if document["ok"]:
        result = document.get("result")
        if not isinstance(result, dict):
            raise _protocol(host, f"the {helper} helper reported success without a result object")
        if exit_code != 0:
            raise _protocol(host, f"the {helper} helper reported success but exited with code {exit_code}")
        return result
    error = document.get("error")
    if not isinstance(error, dict):
        raise _protocol(host, f"the {helper} helper failed without an error object")
    kind = _HELPER_KINDS.get(str(error.get("kind")), ErrorKind.REMOTE)
    server = document.get("server")
    version = server.get("version") if isinstance(server, dict) else None
    raise HostFailure(
        kind,
        host,
        _reason(f"{helper} helper: {error.get('message') or 'no message'}"),
        scsm_version=version if isinstance(version, str) and version else None,
    )


class _Fields:
    """Typed access to one helper result object; a missing or mistyped field is a protocol error."""

    def __init__(self, host: str, helper: str, data: dict[str, object]) -> None:
        self.host, self.helper, self.data = host, helper, data

    def _bad(self, name: str, expected: str) -> HostFailure:
        return _protocol(self.host, f"the {self.helper} result field {name!r} is not {expected}")

    def text(self, name: str) -> str:
        value = self.data.get(name)
        if not isinstance(value, str):
            raise self._bad(name, "a string")
        return value

    def optional_text(self, name: str) -> str | None:
        value = self.data.get(name)
        if value is not None and not isinstance(value, str):
            raise self._bad(name, "a string or null")
        return value or None

    def integer(self, name: str) -> int:
        value = self.data.get(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(name, "an integer")
        return value

    def optional_integer(self, name: str) -> int | None:
        return None if self.data.get(name) is None else self.integer(name)

    def flag(self, name: str) -> bool:
        value = self.data.get(name)
        if not isinstance(value, bool):
            raise self._bad(name, "true or false")
        return value

    def sha256(self, name: str = "sha256") -> str:
        value = self.text(name).lower()
        if not _SHA256_HEX.fullmatch(value):
            raise self._bad(name, "a SHA-256 in hex")
        return value

    def role(self, name: str = "role") -> Role | None:
        value = self.optional_text(name)
        if value is None:
            return None
        try:
            return Role(value)
        except ValueError:
            raise self._bad(name, "a known role") from None

    def base64(self, name: str) -> bytes:
        try:
            return base64.b64decode(self.text(name), validate=True)
        except (binascii.Error, ValueError):
            raise self._bad(name, "valid base64") from None


@dataclass(frozen=True, kw_only=True)
class ToolResult:
    """What a helper that ran SecureStorageBackup.exe reports: the key file's SHA-256, what the
    server said about itself, and the tool's exit code and output."""

    sha256: str
    role: Role | None
    version: str | None
    tool_exit: int
    tool_output: str
    helper_version: str
    computer_name: str | None = None
    tool_path: str | None = None


@dataclass(frozen=True, kw_only=True)
class ExportResult(ToolResult):
    """A key file exported by SecureStorageBackup.exe."""

    file: bytes = field(repr=False)
    size: int


@dataclass(frozen=True, kw_only=True)
class RestoreResult(ToolResult):
    """A key file restored by SecureStorageBackup.exe."""


@dataclass(frozen=True)
class ProbeResult:
    """What a server offers (keyfleet doctor): admin rights, SCSM role and version, the tool."""

    computer_name: str
    admin: bool
    role: Role | None
    version: str | None
    tool_path: str | None
    tool_version: str | None
    temp_path: str | None
    temp_free_bytes: int | None
    powershell_version: str | None
    helper_version: str


_R = TypeVar("_R", bound=ToolResult)


def _tool_result(result_type: type[_R], f: _Fields, **fields: Any) -> _R:
    """A ToolResult (or subclass, whose own ``fields`` are given) from the fields every tool run reports."""
    return result_type(
        sha256=f.sha256(),
        role=f.role(),
        version=f.optional_text("version"),
        tool_exit=f.integer("tool_exit"),
        tool_output=mask(f.text("tool_output")),
        helper_version=f.text("helper_version"),
        computer_name=f.optional_text("computer_name"),
        tool_path=f.optional_text("tool_path"),
        **fields,
    )


def parse_export(host: str, stdout: bytes, stderr: bytes, exit_code: int) -> ExportResult:
    """Parse an export run; the key file must match the size and SHA-256 the server computed."""
    f = _Fields(host, "export", parse_result(host, stdout, stderr, exit_code))
    result = _tool_result(ExportResult, f, file=f.base64("file"), size=f.integer("size"))
    if len(result.file) != result.size:
        raise HostFailure(
            ErrorKind.INTEGRITY, host, f"received {len(result.file)} bytes, the server reported {result.size}"
        )
    if hashlib.sha256(result.file).hexdigest() != result.sha256:
        raise HostFailure(
            ErrorKind.INTEGRITY, host, "the received key file does not match the SHA-256 the server computed"
        )
    return result


def parse_restore(host: str, stdout: bytes, stderr: bytes, exit_code: int) -> RestoreResult:
    return _tool_result(RestoreResult, _Fields(host, "restore", parse_result(host, stdout, stderr, exit_code)))


def parse_probe(host: str, stdout: bytes, stderr: bytes, exit_code: int) -> ProbeResult:
    f = _Fields(host, "probe", parse_result(host, stdout, stderr, exit_code))
    return ProbeResult(
        computer_name=f.text("computer_name"),
        admin=f.flag("admin"),
        role=f.role(),
        version=f.optional_text("version"),
        tool_path=f.optional_text("tool_path"),
        tool_version=f.optional_text("tool_version"),
        temp_path=f.optional_text("temp_path"),
        temp_free_bytes=f.optional_integer("temp_free_bytes"),
        powershell_version=f.optional_text("powershell_version"),
        helper_version=f.text("helper_version"),
    )
