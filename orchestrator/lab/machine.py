"""A simulated SCSM server: runs the WinRS commands the lab's WS-Management server receives.

It answers a few cmd built-ins, and the constant keyfleet bootstrap: the encoded command must be
the shipped bootstrap, the helper on stdin must be byte-identical to a shipped helper, and the
helper's contract is then simulated in Python, checks in the same order and with the same result
line as the PowerShell. Anything else fails as it would on Windows.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from orchestrator import remote
from orchestrator.inventory.model import LabHostSettings, Role
from orchestrator.lab.faults import MACHINE_FAULTS, Fault, find, parse_faults
from orchestrator.lab.keyfile import ToolRun, tool_backup, tool_restore
from orchestrator.lab.registry import Installation, Registry

Emit = Callable[[str, bytes], None]
OUTPUT_CHUNK = 4096  # bytes per emit: long output reaches the server in several pieces
_CANCELLED_EXIT = 0xC000013A  # STATUS_CONTROL_C_EXIT, what a terminated console process returns
DEFAULT_TOOL_TIMEOUT = 120.0
MIN_FREE_BYTES = 10 * 1024 * 1024
MAX_OUTPUT_CHARS = 8000
POWERSHELL_VERSION = "5.1.17763.6414"
_ONLY_BOOTSTRAP = (
    "keyfleet lab: this simulated server runs no PowerShell but the keyfleet bootstrap "
    "(powershell.exe -EncodedCommand <bootstrap.ps1>)\r\n"
)
_NOT_ENCODED = (
    "Cannot process the command because the value specified with -EncodedCommand is not properly "
    "encoded. The value must be Base64 encoded.\r\n"
)


class HelperError(Exception):
    """A failure the helper reports in its result line (kind as in Exception.Data['KeyfleetKind'])."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class _Cancelled(Exception):
    """The command was terminated (Signal, Delete, server stop) while the helper ran."""


@dataclass(frozen=True)
class LabUser:
    """The authenticated WinRM user a command runs as."""

    name: str
    admin: bool


class StdinPipe:
    """The stdin of one command: the server writes what Send delivers; the machine reads it."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._closed = False
        self._cond = threading.Condition()

    def write(self, data: bytes) -> None:
        with self._cond:
            if self._closed:
                raise ValueError("stdin is already closed")
            self._chunks.append(bytes(data))
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def read_all(self, cancel: threading.Event) -> bytes:
        """Everything written until the stream is closed (Send with End=true), or so far if cancelled."""
        with self._cond:
            while not self._closed and not cancel.is_set():
                self._cond.wait(0.05)
            return b"".join(self._chunks)


def not_recognized(name: str) -> bytes:
    return (
        f"'{name}' is not recognized as an internal or external command,\r\noperable program or batch file.\r\n"
    ).encode()


class Machine:
    """One simulated Windows server with an SCSM role, a registry key and SecureStorageBackup.exe."""

    def __init__(self, name: str, role: Role, settings: LabHostSettings, state_dir: Path, seed: int) -> None:
        self.name = name
        self.role = role
        self.settings = settings
        self.faults: tuple[Fault, ...] = tuple(
            f for f in parse_faults(list(settings.faults)) if f.kind in MACHINE_FAULTS
        )
        self.registry = Registry(Path(state_dir), name, role.value, settings.version, seed)
        self.registry.load()  # a fresh installation on first start; the same key on later starts
        self.computer_name = name.split(".")[0].upper()
        self.installation = Installation.of(role, settings, self.faults)

    def current_key(self) -> bytes:
        """The encryption key now in the simulated registry (for tests and drills)."""
        return self.registry.load().key

    def rebuild(self) -> None:
        """Reinstall the server: its key is wiped and replaced by a new one."""
        self.registry.rebuild()

    def execute(self, command_line: str, stdin: StdinPipe, user: LabUser, emit: Emit, cancel: threading.Event) -> int:
        """Run one WinRS command; emit output as it is produced; return the exit code."""
        command, _, rest = command_line.strip().partition(" ")
        rest = rest.strip()
        verb = command.lower()
        if verb in ("hostname", "hostname.exe"):
            emit("stdout", f"{self.name}\r\n".encode())
            return 0
        if verb in ("whoami", "whoami.exe"):
            emit("stdout", f"{_qualified(user.name)}\r\n".encode())
            return 0
        if verb == "echo":
            emit("stdout", f"{rest if rest else 'ECHO is on.'}\r\n".encode())
            return 0
        if verb in ("more", "more.com"):
            _emit_chunks(emit, "stdout", stdin.read_all(cancel))
            return 0
        if verb == "exit":
            return _exit_code(rest)
        if verb in ("powershell", "powershell.exe"):
            return self._powershell(rest, stdin, user, emit, cancel)
        emit("stderr", not_recognized(command))
        return 1

    def _powershell(self, arguments: str, stdin: StdinPipe, user: LabUser, emit: Emit, cancel: threading.Event) -> int:
        encoded = _encoded_command(arguments.split())
        try:
            script = base64.b64decode(encoded or "", validate=True).decode("utf-16-le")
        except (binascii.Error, UnicodeDecodeError):
            emit("stderr", _NOT_ENCODED.encode())
            return 1
        if not encoded or script != remote.load_script("bootstrap").content.decode("utf-8-sig"):
            emit("stderr", _ONLY_BOOTSTRAP.encode())
            return 1
        request = stdin.read_all(cancel)
        if cancel.is_set():
            return _CANCELLED_EXIT
        try:
            document, code = self._bootstrap(request, user, cancel)
        except _Cancelled:
            return _CANCELLED_EXIT
        line = remote.RESULT_MARKER + json.dumps(document, ensure_ascii=True, separators=(",", ":")).encode()
        line = self._damage(line + b"\n")
        _emit_chunks(emit, "stdout", line)
        return code

    def _bootstrap(self, data: bytes, user: LabUser, cancel: threading.Event) -> tuple[dict[str, object], int]:
        """What bootstrap.ps1 does with its stdin: verify, run the helper, one result document."""
        helper: str | None = None
        try:
            try:
                request = json.loads(data.decode("ascii"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise HelperError("protocol", "Invalid JSON primitive: stdin is not a JSON request") from None
            if not isinstance(request, dict) or request.get("format") != remote.REQUEST_FORMAT:
                raise HelperError("protocol", "stdin does not hold a keyfleet-helper/1 request")
            helper = str(request.get("helper"))
            try:
                code = base64.b64decode(str(request.get("script")), validate=True)
            except binascii.Error:
                raise HelperError("protocol", "The input is not a valid Base-64 string.") from None
            if hashlib.sha256(code).hexdigest() != str(request.get("sha256")):
                raise HelperError("protocol", f"the {helper} helper script does not match its SHA-256")
            if helper not in remote.HELPERS or code != remote.load_script(helper).content:
                raise HelperError(
                    "remote",
                    "keyfleet lab: this helper script is not byte-identical to one keyfleet ships; "
                    "the simulated server runs only shipped helpers",
                )
            secret = request.get("secret")
            params = request.get("params")
            if not isinstance(params, dict):
                raise HelperError("remote", "Cannot bind argument to parameter 'Params' because it is null.")
            run = {"export": self._export, "restore": self._restore, "probe": self._probe}[helper]
            result = run(params, secret if isinstance(secret, str) else None, user, cancel)
        except HelperError as exc:
            return {"ok": False, "helper": helper, "error": {"kind": exc.kind, "message": exc.message}}, 1
        return {"ok": True, "helper": helper, "result": result}, 0

    # --- the helpers' contracts (same checks, same order, same fields as the .ps1 files) ---

    def _export(
        self, params: dict[str, object], secret: str | None, user: LabUser, cancel: threading.Event
    ) -> dict[str, object]:
        self._require_admin(user)
        if not secret:
            raise HelperError("remote", "no backup password was given")
        timeout = _tool_timeout(params)
        tool = self._require_tool(params)
        role = self.installation.reported_role()
        self._require_free_space(user)
        key = self.registry.load().key
        run = self._run_tool(
            "Backup", lambda: tool_backup(key, secret, self.computer_name, self.role.value), timeout, cancel
        )
        file = run.file or b""
        return {
            "file": base64.b64encode(file).decode("ascii"),
            "sha256": hashlib.sha256(file).hexdigest(),
            "size": len(file),
            **self._tool_fields(role, tool, run),
        }

    def _restore(
        self, params: dict[str, object], secret: str | None, user: LabUser, cancel: threading.Event
    ) -> dict[str, object]:
        self._require_admin(user)
        if not secret:
            raise HelperError("remote", "no password for the key file was given")
        timeout = _tool_timeout(params)
        encoded = params.get("file")
        if not encoded:
            raise HelperError("protocol", "the request holds no key file")
        try:
            data = base64.b64decode(str(encoded), validate=True)
        except binascii.Error:
            raise HelperError("protocol", "the key file in the request is not valid base64") from None
        if len(data) > remote.MAX_KEY_FILE_BYTES:
            raise HelperError(
                "protocol", f"the key file in the request is larger than {remote.MAX_KEY_FILE_BYTES} bytes"
            )
        sha256 = hashlib.sha256(data).hexdigest()
        if sha256 != str(params.get("sha256")):
            raise HelperError("integrity", "the key file received does not match its SHA-256; nothing was restored")
        expected_name = params.get("expected_computer_name")
        if expected_name:
            label = str(expected_name).split(".")[0]
            if label.upper() != self.computer_name:
                raise HelperError(
                    "name-mismatch",
                    f"this server is {self.computer_name} but the key file belongs to {label}: a key can "
                    "only be restored onto a server with the same computer name",
                )
        role = self.installation.reported_role()
        expected_role = params.get("expected_role")
        if expected_role and role and role != expected_role:
            raise HelperError("role-mismatch", f"this server is a {role} but the key file belongs to a {expected_role}")
        tool = self._require_tool(params)
        self._require_free_space(user)
        run = self._run_tool("Restore", lambda: tool_restore(data, secret, self.computer_name), timeout, cancel)
        self.registry.replace_key(run.key or b"")
        return {"sha256": sha256, **self._tool_fields(role, tool, run)}

    def _probe(
        self, params: dict[str, object], secret: str | None, user: LabUser, cancel: threading.Event
    ) -> dict[str, object]:
        tool = self.installation.find_tool(_text(params, "tool_path"))
        return {
            "computer_name": self.computer_name,
            "admin": self._is_admin(user),
            "role": self.installation.reported_role(),
            "version": self.settings.version or None,
            "tool_path": tool,
            "tool_version": self.settings.version if tool else None,
            "temp_path": _temp_path(user),
            "temp_free_bytes": self.installation.free_bytes(),
            "powershell_version": POWERSHELL_VERSION,
            "helper_version": remote.HELPER_VERSION,
        }

    def _fault(self, kind: str) -> Fault | None:
        return find(self.faults, kind)

    def _is_admin(self, user: LabUser) -> bool:
        return user.admin and self.settings.admin and self._fault("not-admin") is None

    def _require_admin(self, user: LabUser) -> None:
        if not self._is_admin(user):
            raise HelperError(
                "not-admin",
                f"{_qualified(user.name).upper()} is not a local administrator; "
                "SecureStorageBackup.exe needs administrator rights",
            )

    def _require_tool(self, params: dict[str, object]) -> str:
        tool = self.installation.find_tool(_text(params, "tool_path"))
        if tool is None:
            raise HelperError(
                "tool-missing",
                "SecureStorageBackup.exe not found: copy Tools\\SecureStorageBackup from the Service Manager "
                "installation media to this server and set tool_path (or install it in a known location)",
            )
        return tool

    def _require_free_space(self, user: LabUser) -> None:
        free = self.installation.free_bytes()
        if free < MIN_FREE_BYTES:
            raise HelperError(
                "disk-full",
                f"only {free} bytes free on C:\\ (temporary folder {_temp_path(user)}); "
                f"at least {MIN_FREE_BYTES} needed",
            )

    def _tool_fields(self, role: str, tool: str, run: ToolRun) -> dict[str, object]:
        return {
            "role": role,
            "version": self.settings.version or None,
            "tool_path": tool,
            "tool_exit": run.exit_code,
            "tool_output": run.output,
            "computer_name": self.computer_name,
            "helper_version": remote.HELPER_VERSION,
        }

    def _run_tool(self, verb: str, run: Callable[[], ToolRun], timeout: float, cancel: threading.Event) -> ToolRun:
        """The tool as Invoke-Tool sees it, tool faults included: a finished, successful run or a
        HelperError; never waits past cancel."""
        if self._fault("tool-hanging"):
            if cancel.wait(timeout):
                raise _Cancelled
            raise HelperError(
                "tool-timeout",
                f"SecureStorageBackup.exe did not finish within {timeout:g} s and was stopped; it may be "
                "waiting for interactive input (a wizard page needs a desktop session). Run it once by "
                "hand on this server, or raise tool_timeout.",
            )
        if self._fault("tool-failing"):
            what = "Backup" if verb == "Backup" else "Key Restore"
            result = ToolRun(2, f"Secure Storage {what} failed: Keyset does not exist (0x80090016).")
        else:
            result = run()
        output = result.output.strip()
        if len(output) > MAX_OUTPUT_CHARS:
            output = output[:MAX_OUTPUT_CHARS] + "..."
        if result.exit_code != 0:
            raise HelperError(
                "tool-failed", f"SecureStorageBackup.exe {verb} exited with code {result.exit_code}: {output}"
            )
        return replace(result, output=output)

    def _damage(self, line: bytes) -> bytes:
        """Machine-level output faults: the result line altered or cut short."""
        kinds = {f.kind for f in self.faults}
        if "corrupt-output" in kinds:
            middle = len(line) // 2
            altered = bytes(b ^ 0x80 for b in line[middle : middle + 24])
            line = line[:middle] + altered + line[middle + 24 :]
        if "truncate-output" in kinds:
            line = line[: len(line) // 2]
        return line


def _emit_chunks(emit: Emit, stream: str, data: bytes) -> None:
    for start in range(0, len(data), OUTPUT_CHUNK):
        emit(stream, data[start : start + OUTPUT_CHUNK])


def _encoded_command(words: list[str]) -> str | None:
    """The value of -EncodedCommand (or an accepted abbreviation) in powershell.exe arguments."""
    for index, word in enumerate(words[:-1]):
        name = word.lower().lstrip("-/")
        if word[:1] in "-/" and name and ("encodedcommand".startswith(name) or name == "ec"):
            return words[index + 1]
    return None


def _text(params: dict[str, object], name: str) -> str | None:
    value = params.get(name)
    return None if value is None or value == "" else str(value)


def _tool_timeout(params: dict[str, object]) -> float:
    value = params.get("tool_timeout")
    if value is None:
        return DEFAULT_TOOL_TIMEOUT
    try:
        seconds = float(value) if isinstance(value, int | float | str) and not isinstance(value, bool) else 0.0
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise HelperError("remote", f"tool_timeout must be a positive number of seconds, not '{value}'")
    return seconds


def _temp_path(user: LabUser) -> str:
    account = user.name.rpartition("\\")[2]
    return f"C:\\Users\\{account}\\AppData\\Local\\Temp\\"


def _qualified(user: str) -> str:
    return (user if "\\" in user else f"lab\\{user}").lower()


def _exit_code(args: str) -> int:
    words = args.split()
    if words and words[0].lower() == "/b":
        words = words[1:]
    try:
        return int(words[0]) if words else 0
    except ValueError:
        return 0
