"""The remote helper contract: the constant bootstrap command, the stdin request, typed results.

A helper is a PowerShell script shipped as package data: ``common.ps1`` (parameters, settings,
shared functions), ``conpty.ps1`` (the pseudo console) and ``<helper>.ps1``, sent as one script.
The command line sent over WinRM is always the same short bootstrap. stdin (``keyfleet-helper/2``)
holds two lines: a JSON request (the helper script, its SHA-256 and its parameters, never a
secret), then the secret alone as base64 of its UTF-8 bytes, so the JSON that PowerShell's
``ConvertFrom-Json`` sees (and module logging records) holds no password in any form. The
bootstrap answers with one ``KEYFLEET-RESULT {json}`` line:
``{"ok": true, "helper": NAME, "result": {...}}`` or
``{"ok": false, "helper": NAME, "error": {"kind": KIND, "message": TEXT}}``. When powershell.exe
fails before the bootstrap's own error handling (Constrained Language Mode, AMSI, a parse error),
there is no result line and stderr holds CLIXML, which is decoded into the failure.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, TypeVar

from orchestrator.errors import ErrorKind, HostFailure, one_line
from orchestrator.inventory.model import Role
from orchestrator.secret import Secret, mask

HELPERS = ("export", "restore", "probe", "smoke", "collect")
BOOTSTRAP = "bootstrap"
COMMON = "common"  # the part every helper script starts with
CONPTY = "conpty"  # the pseudo console, sent after common.ps1
HELPER_VERSION = "2.0.0"  # common.ps1 declares the same value in $HelperVersion
REQUEST_FORMAT = "keyfleet-helper/2"
DEFAULT_OUTBOX = "C:\\ProgramData\\keyfleet\\outbox"  # where administrators save keys made with the wizard
MASKED_READ_MESSAGE = (  # .NET Framework's Console.ReadKey under a redirected stdin; common.ps1 has the same
    "Cannot read keys when either application does not have a console or when console input has been redirected"
)
CONSTRAINED_MARKER = "KEYFLEET-CONSTRAINED-LANGUAGE:"
CLIXML_HEADER = b"#< CLIXML"
_CLIXML_ESCAPE = re.compile(r"_x([0-9A-Fa-f]{4})_")
RESULT_MARKER = b"KEYFLEET-RESULT "
MAX_KEY_FILE_BYTES = 256 * 1024  # the helpers refuse a larger key file
MAX_OUTPUT_BYTES = 1024 * 1024  # a sensible output cap for the session layer: base64 + tool output
# tags of one CLIXML document read for its error text: ElementTree keeps about 270 bytes per element
_MAX_CLIXML_TAGS = 16384
_FIELD_LIMIT = 1024  # characters of a one-line result field: a long path fits
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# kinds a helper may report; anything else is reported as REMOTE
_HELPER_KINDS = {
    k.value: k
    for k in (
        ErrorKind.TOOL_MISSING,
        ErrorKind.NO_KEY_FILE,
        ErrorKind.TOOL_FAILED,
        ErrorKind.TOOL_TIMEOUT,
        ErrorKind.TOOL_INTERACTIVE,
        ErrorKind.CONSOLE_UNAVAILABLE,
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
    for a helper, ``common.ps1``, ``conpty.ps1`` and ``<name>.ps1`` joined by newlines, so the
    server needs no file."""
    if name == BOOTSTRAP:
        content = _package_file(BOOTSTRAP)
    elif name in HELPERS:
        content = b"\n".join(_package_file(part) for part in (COMMON, CONPTY, name))
    else:
        raise ValueError(f"unknown helper {name!r} (choose from {', '.join(HELPERS)})")
    return HelperScript(name, content, hashlib.sha256(content).hexdigest())


def encode_command(script: str) -> str:
    """PowerShell's ``-EncodedCommand`` form of a script: base64 of its UTF-16LE text."""
    return base64.b64encode(script.encode("utf-16-le")).decode("ascii")


@cache
def bootstrap_text() -> str:
    """The bootstrap as the command line carries it: bootstrap.ps1 without its comment lines, which
    would only lengthen the command line (the shipped file keeps them for the reader)."""
    lines = load_script(BOOTSTRAP).content.decode("utf-8-sig").splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#")) + "\n"


@cache
def bootstrap_command_line() -> str:
    """The one command line keyfleet ever runs remotely. It carries no data and no secret."""
    encoded = encode_command(bootstrap_text())
    return f"powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -EncodedCommand {encoded}"


@cache
def _request_head(helper: str) -> str:
    """The request line up to its params, the same for every host: ``{"format":...,"params":``. The
    script is about 40 KB, so its base64 and JSON are made once per process, not once per host."""
    script = load_script(helper)
    head = {
        "format": REQUEST_FORMAT,
        "helper": helper,
        "script": base64.b64encode(script.content).decode("ascii"),
        "sha256": script.sha256,
    }
    return json.dumps(head, ensure_ascii=True, separators=(",", ":"))[:-1] + ',"params":'


def build_stdin(helper: str, params: dict[str, object], secret: Secret | None) -> bytes:
    """The bootstrap's stdin: the JSON request line (script, SHA-256, params), then the secret line.

    Both lines are ASCII (the JSON escapes non-ASCII characters; the secret is base64), so the
    remote console code page cannot alter them; LF ends each (``ReadLine`` accepts LF and CRLF).
    The caller sends it and then closes stdin.
    """
    if helper not in HELPERS:
        raise ValueError(f"unknown helper {helper!r} (choose from {', '.join(HELPERS)})")
    line = _request_head(helper) + json.dumps(params, ensure_ascii=True, separators=(",", ":")) + "}"
    secret_line = "" if secret is None else base64.b64encode(secret.reveal().encode("utf-8")).decode("ascii")
    return f"{line}\n{secret_line}\n".encode("ascii")


def tool_password_problem(password: str) -> str | None:
    """Why SecureStorageBackup.exe cannot be given ``password`` reliably, or None.

    Only printable ASCII is accepted: its bytes are the same in every console code page, so what
    the tool reads is what keyfleet recorded whatever code page a server's console ends up with
    (the helper sets UTF-8, but a password the tool decoded differently could never be typed
    again at restore). The wizard's own rule is at least 8 characters.
    """
    if len(password) < 8:
        return "it has fewer than 8 characters (SecureStorageBackup.exe's minimum)"
    if any(not " " <= c <= "~" for c in password):
        return "it has characters outside printable ASCII (letters, digits, punctuation and space are safe)"
    return None


def export_params(tool_path: str | None, tool_timeout: float, tool_input: str = "auto") -> dict[str, object]:
    return {"tool_path": tool_path, "tool_timeout": tool_timeout, "tool_input": tool_input}


def smoke_params(tool_path: str | None, tool_timeout: float) -> dict[str, object]:
    return {"tool_path": tool_path, "tool_timeout": tool_timeout}


def collect_params(path: str, *, remove: tuple[str, str] | None = None) -> dict[str, object]:
    """fetch the newest key file of ``path``; with ``remove=(name, sha256)``, delete that file."""
    if remove is None:
        return {"path": path, "action": "fetch"}
    return {"path": path, "action": "remove", "name": remove[0], "sha256": remove[1]}


def restore_params(
    key_file: bytes,
    tool_path: str | None,
    tool_timeout: float,
    *,
    tool_input: str = "auto",
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
        "tool_input": tool_input,
        "expected_computer_name": expected_computer_name,
        "expected_role": None if expected_role is None else expected_role.value,
    }


def probe_params(tool_path: str | None) -> dict[str, object]:
    return {"tool_path": tool_path}


def _protocol(host: str, reason: str) -> HostFailure:
    return HostFailure(ErrorKind.PROTOCOL, host, reason)


def decode_clixml(stderr: bytes) -> str | None:
    """The error text of powershell.exe's CLIXML stderr, or None when stderr is not CLIXML.

    powershell.exe writes its error stream as ``#< CLIXML`` and an ``<Objs>`` document when it is
    non-interactive with -EncodedCommand (PowerShell ConsoleHost); each ``<S S="Error">`` holds a
    line with control characters escaped as ``_xHHHH_`` (pywinrm's ``_clean_error_msg`` and
    Ansible's ``_parse_clixml`` decode the same). Progress records are skipped.
    """
    text = stderr.decode("utf-8", "replace").lstrip("\ufeff")
    start = text.find(CLIXML_HEADER.decode())
    if start < 0:
        return None
    lines: list[str] = []
    for document in text[start:].split(CLIXML_HEADER.decode())[1:]:
        body = document.strip()
        # a tree of so many would cost far more than the text; a DTD's entities would expand into more
        if body.count("<") > _MAX_CLIXML_TAGS or "<!DOCTYPE" in body:
            continue
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            continue
        for element in root.iter():
            if element.tag.rsplit("}", 1)[-1] == "S" and element.get("S") == "Error" and element.text:
                lines.append(_CLIXML_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), element.text))
    return "".join(lines).strip()


def _no_result(host: str, stderr: bytes, exit_code: int) -> HostFailure:
    """What went wrong when the helper wrote no result line: powershell.exe's own error, if any."""
    clixml = decode_clixml(stderr)
    if clixml is not None and CONSTRAINED_MARKER in clixml:
        detail = clixml.split(CONSTRAINED_MARKER, 1)[1].splitlines()[0].strip()
        return HostFailure(ErrorKind.CONSTRAINED_LANGUAGE, host, f"{detail}: the keyfleet helpers need FullLanguage")
    if clixml:
        first = clixml.splitlines()[0].strip()
        return HostFailure(ErrorKind.REMOTE, host, f"powershell.exe failed (exit code {exit_code}): {first}")
    lines = [] if clixml is not None else stderr.decode("utf-8", "replace").strip().splitlines()
    hint = f": {lines[0]}" if lines else ""
    return _protocol(host, f"no result line from the remote helper (exit code {exit_code}){hint}")


def parse_result(host: str, stdout: bytes, stderr: bytes, exit_code: int) -> dict[str, object]:
    """The ``result`` object of a successful helper run; HostFailure for anything else."""
    lines = [line for line in stdout.splitlines(keepends=True) if line.startswith(RESULT_MARKER)]
    if not lines:
        raise _no_result(host, stderr, exit_code)
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
    except (ValueError, RecursionError) as exc:  # valid JSON past Python's limits: nested too deep, a huge integer
        raise _protocol(host, f"the result line is not a helper result ({type(exc).__name__})") from None
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
        f"{helper} helper: {error.get('message') or 'no message'}",
        scsm_version=version if isinstance(version, str) and version else None,
    )


class _Fields:
    """Typed access to one helper result object; a missing or mistyped field is a protocol error."""

    def __init__(self, host: str, helper: str, data: dict[str, object]) -> None:
        self.host, self.helper, self.data = host, helper, data

    def _bad(self, name: str, expected: str) -> HostFailure:
        return _protocol(self.host, f"the {self.helper} result field {name!r} is not {expected}")

    def raw_text(self, name: str) -> str:
        """A string field as the server sent it: base64, or the tool's output (several lines)."""
        value = self.data.get(name)
        if not isinstance(value, str):
            raise self._bad(name, "a string")
        return value

    def file_name(self, name: str) -> str:
        """A file name the server will be asked about again (collect's remove): exactly as sent, and refused
        when it could be more than a name in its folder or would forge console lines."""
        value = self.raw_text(name)
        if not value or not value.isprintable() or any(c in value for c in "\\/:") or len(value) > 255:
            raise self._bad(name, "a file name")
        return value

    def text(self, name: str) -> str:
        """A one-line string field (a name, a version, a path): shown on the console and kept in the
        manifest, so a server's line breaks and terminal escapes are removed (errors.one_line)."""
        return one_line(self.raw_text(name), _FIELD_LIMIT)

    def optional_text(self, name: str) -> str | None:
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._bad(name, "a string or null")
        return one_line(value, _FIELD_LIMIT) or None

    def integer(self, name: str) -> int:
        value = self.data.get(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(name, "an integer")
        return value

    def optional_integer(self, name: str) -> int | None:
        return None if self.data.get(name) is None else self.integer(name)

    def texts(self, name: str) -> tuple[str, ...]:
        value = self.data.get(name)
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._bad(name, "a list of strings")
        return tuple(one_line(v, _FIELD_LIMIT) for v in value)

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

    def roles(self, name: str = "roles") -> tuple[Role, ...]:
        value = self.data.get(name)
        if value is None:
            return ()
        if isinstance(value, str):  # ConvertTo-Json writes a one-element array as itself in places
            value = [value]
        if not isinstance(value, list):
            raise self._bad(name, "a list of roles")
        try:
            return tuple(Role(item) for item in value)
        except ValueError:
            raise self._bad(name, "a list of known roles") from None

    def method(self, name: str = "method") -> str | None:
        value = self.optional_text(name)
        if value is not None and value not in ("stdin", "console", "wizard"):
            raise self._bad(name, "stdin, console or wizard")
        return value

    def base64(self, name: str) -> bytes:
        try:
            return base64.b64decode(self.raw_text(name), validate=True)
        except (binascii.Error, ValueError):
            raise self._bad(name, "valid base64") from None


@dataclass(frozen=True, kw_only=True)
class ToolResult:
    """What a helper that ran SecureStorageBackup.exe reports: the key file's SHA-256, what the
    server said about itself, and the tool's exit code and output."""

    sha256: str
    roles: tuple[Role, ...]  # every SCSM role the server holds (a portal often shares a server)
    version: str | None
    tool_exit: int
    tool_output: str
    helper_version: str
    method: str | None = None  # how the password reached the tool: stdin or console
    computer_name: str | None = None
    tool_path: str | None = None
    cleanup_warning: str | None = None  # the temporary folder could not be removed


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
    roles: tuple[Role, ...]
    version: str | None
    tool_path: str | None
    tool_version: str | None
    temp_path: str | None
    temp_free_bytes: int | None
    powershell_version: str | None
    helper_version: str
    os_build: int | None = None
    tool_candidates: tuple[str, ...] = ()
    smoke: SmokeResult | None = None  # keyfleet doctor --tool-smoke: which input method the tool takes


@dataclass(frozen=True)
class SmokeAttempt:
    """One way of typing the throwaway password (keyfleet doctor --tool-smoke)."""

    method: str
    exit: int | None
    output: str
    kind: str | None = None
    wrote_file: bool = False


@dataclass(frozen=True)
class SmokeResult:
    """Which input method SecureStorageBackup.exe takes on a server: stdin, console or none."""

    works: str | None
    attempts: tuple[SmokeAttempt, ...]
    tool_path: str | None
    os_build: int | None
    helper_version: str
    cleanup_warning: str | None = None


@dataclass(frozen=True)
class CollectedFile:
    """A key file an administrator made with the wizard, as the collect helper found it."""

    file: bytes = field(repr=False)
    sha256: str
    size: int
    name: str
    written: str
    roles: tuple[Role, ...]
    version: str | None
    computer_name: str | None
    helper_version: str


_R = TypeVar("_R", bound=ToolResult)


def _tool_result(result_type: type[_R], f: _Fields, **fields: Any) -> _R:
    """A ToolResult (or subclass, whose own ``fields`` are given) from the fields every tool run reports."""
    return result_type(
        sha256=f.sha256(),
        roles=f.roles(),
        version=f.optional_text("version"),
        tool_exit=f.integer("tool_exit"),
        tool_output=mask(f.raw_text("tool_output")),
        helper_version=f.text("helper_version"),
        method=f.method(),
        computer_name=f.optional_text("computer_name"),
        tool_path=f.optional_text("tool_path"),
        cleanup_warning=f.optional_text("cleanup_warning"),
        **fields,
    )


def parse_export(host: str, stdout: bytes, stderr: bytes, exit_code: int) -> ExportResult:
    """Parse an export run; the key file must match the size and SHA-256 the server computed."""
    f = _Fields(host, "export", parse_result(host, stdout, stderr, exit_code))
    result = _tool_result(ExportResult, f, file=f.base64("file"), size=f.integer("size"))
    _check_file(host, result.file, result.size, result.sha256)
    return result


def _check_file(host: str, data: bytes, size: int, sha256: str) -> None:
    if len(data) != size:
        raise HostFailure(ErrorKind.INTEGRITY, host, f"received {len(data)} bytes, the server reported {size}")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise HostFailure(
            ErrorKind.INTEGRITY, host, "the received key file does not match the SHA-256 the server computed"
        )


def parse_restore(host: str, stdout: bytes, stderr: bytes, exit_code: int) -> RestoreResult:
    return _tool_result(RestoreResult, _Fields(host, "restore", parse_result(host, stdout, stderr, exit_code)))


def parse_probe(host: str, stdout: bytes, stderr: bytes, exit_code: int) -> ProbeResult:
    f = _Fields(host, "probe", parse_result(host, stdout, stderr, exit_code))
    return ProbeResult(
        computer_name=f.text("computer_name"),
        admin=f.flag("admin"),
        roles=f.roles(),
        version=f.optional_text("version"),
        tool_path=f.optional_text("tool_path"),
        tool_version=f.optional_text("tool_version"),
        temp_path=f.optional_text("temp_path"),
        temp_free_bytes=f.optional_integer("temp_free_bytes"),
        powershell_version=f.optional_text("powershell_version"),
        helper_version=f.text("helper_version"),
        os_build=f.optional_integer("os_build"),
        tool_candidates=f.texts("tool_candidates"),
    )


def parse_smoke(host: str, stdout: bytes, stderr: bytes, exit_code: int) -> SmokeResult:
    f = _Fields(host, "smoke", parse_result(host, stdout, stderr, exit_code))
    raw = f.data.get("attempts")
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(a, dict) for a in raw):
        raise f._bad("attempts", "a list of objects")
    attempts = []
    for item in raw:
        a = _Fields(host, "smoke", item)
        attempts.append(
            SmokeAttempt(
                method=a.text("method"),
                exit=a.optional_integer("exit"),
                output=mask(a.raw_text("output")) if a.data.get("output") is not None else "",
                kind=a.optional_text("kind"),
                wrote_file=bool(item.get("wrote_file")),
            )
        )
    works = f.method("works")
    return SmokeResult(
        works=works,
        attempts=tuple(attempts),
        tool_path=f.optional_text("tool_path"),
        os_build=f.optional_integer("os_build"),
        helper_version=f.text("helper_version"),
        cleanup_warning=f.optional_text("cleanup_warning"),
    )


def parse_collect(host: str, stdout: bytes, stderr: bytes, exit_code: int) -> CollectedFile:
    f = _Fields(host, "collect", parse_result(host, stdout, stderr, exit_code))
    collected = CollectedFile(
        file=f.base64("file"),
        sha256=f.sha256(),
        size=f.integer("size"),
        name=f.file_name("name"),
        written=f.text("written"),
        roles=f.roles(),
        version=f.optional_text("version"),
        computer_name=f.optional_text("computer_name"),
        helper_version=f.text("helper_version"),
    )
    _check_file(host, collected.file, collected.size, collected.sha256)
    return collected


def parse_collect_remove(host: str, stdout: bytes, stderr: bytes, exit_code: int) -> str:
    return _Fields(host, "collect", parse_result(host, stdout, stderr, exit_code)).text("removed")
