"""A simulated SCSM server: runs the WinRS commands the lab's WS-Management server receives.

It answers a few cmd built-ins, and the constant keyfleet bootstrap: the encoded command must be
the shipped bootstrap; the request on stdin then goes to the simulated helpers (helpersim), and
their result line comes back, damaged if an output fault says so. Anything else fails as it would
on Windows. WinRS's console-mode stdin echoes what it is sent (``winrs -noecho`` turns that off:
pipe mode); powershell.exe writes its progress and errors to stderr as CLIXML.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.helpers import remote
from orchestrator.inventory.model import Role, netbios_name
from orchestrator.lab.config import LabHostSettings
from orchestrator.lab.faults import MACHINE_FAULTS, Fault, find, parse_faults
from orchestrator.lab.helpersim import Cancelled, Logon, SimulatedHelpers
from orchestrator.lab.keyfile import tool_backup
from orchestrator.lab.registry import OUTBOX_PATH, Installation, Registry
from orchestrator.lab.windows import CommandOptions, clixml_progress, clixml_terminating_error, script_facts

Emit = Callable[[str, bytes], None]
OUTPUT_CHUNK = 4096  # bytes per emit: long output reaches the server in several pieces
_CANCELLED_EXIT = 0xC000013A  # STATUS_CONTROL_C_EXIT, what a terminated console process returns
_ONLY_BOOTSTRAP = (
    "keyfleet lab: this simulated server runs no PowerShell but the keyfleet bootstrap "
    "(powershell.exe -EncodedCommand <bootstrap.ps1>)\r\n"
)
_NOT_ENCODED = (
    "Cannot process the command because the value specified with -EncodedCommand is not properly "
    "encoded. The value must be Base64 encoded.\r\n"
)


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
        self.reading = threading.Event()  # the process has started to read (or has ended)

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
        self.reading.set()
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
        self.computer_name = netbios_name(name)  # as $env:COMPUTERNAME
        self.installation = Installation.of(role, settings, self.faults)
        self.helpers = SimulatedHelpers(self.computer_name, self.installation, self.registry)

    def current_key(self) -> bytes:
        """The encryption key now in the simulated registry (for tests and drills)."""
        return self.registry.load().key

    def run_wizard(self, password: str) -> str:
        """What an administrator does at the server's desktop: the wizard's Backup, with the file
        saved in the outbox folder. Returns the file's Windows path."""
        run = tool_backup(self.current_key(), password, self.computer_name, self.installation.role.value)
        if run.exit_code != 0 or run.file is None:
            raise ValueError(run.output)
        name = f"SMBackupkey-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.bin"
        self.registry.save_to_outbox(name, run.file)
        return f"{OUTBOX_PATH}\\{name}"

    def rebuild(self) -> None:
        """Reinstall the server: its key is wiped and replaced by a new one."""
        self.registry.rebuild()

    def can_start(self, command_line: str, options: CommandOptions) -> bool:
        """Whether WinRS can start the command: without cmd.exe (WINRS_SKIP_CMD_SHELL) only a program
        on disk starts; cmd's built-ins (echo, exit) and unknown names do not."""
        verb = command_line.strip().partition(" ")[0].lower()
        return not options.skip_cmd_shell or verb in _PROGRAMS

    def execute(
        self,
        command_line: str,
        stdin: StdinPipe,
        user: LabUser,
        emit: Emit,
        cancel: threading.Event,
        options: CommandOptions | None = None,
    ) -> int:
        """Run one WinRS command; emit output as it is produced; return the exit code."""
        options = options or CommandOptions()
        if options.console_mode_stdin:
            stdin = _EchoingStdin(stdin, emit)
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
            return self._powershell(rest, stdin, user, emit, cancel, options)
        emit("stderr", not_recognized(command))
        return 1

    def _powershell(
        self,
        arguments: str,
        stdin: StdinPipe,
        user: LabUser,
        emit: Emit,
        cancel: threading.Event,
        options: CommandOptions,
    ) -> int:
        encoded = _encoded_command(arguments.split())
        try:
            script = base64.b64decode(encoded or "", validate=True).decode("utf-16-le")
        except (binascii.Error, UnicodeDecodeError):
            emit("stderr", _NOT_ENCODED.encode())
            return 1
        if not encoded or script != remote.bootstrap_text():
            emit("stderr", _ONLY_BOOTSTRAP.encode())
            return 1
        if find(self.faults, "constrained-language"):
            emit("stderr", clixml_progress())
            return self._constrained(emit)
        request = stdin.read_all(cancel)
        if cancel.is_set():
            return _CANCELLED_EXIT
        if script_facts().uses_dollar_input:
            request = b""  # powershell.exe has read stdin into $input itself: [Console]::In is at its end
        try:
            document, code = self.helpers.bootstrap(request, self._logon(user), cancel, options)
        except Cancelled:
            return _CANCELLED_EXIT
        line = remote.RESULT_MARKER + json.dumps(document, ensure_ascii=True, separators=(",", ":")).encode()
        line = self._damage(line + b"\n")
        # powershell.exe's progress record of loading its modules (ConvertFrom-Json's), emitted with the
        # result rather than when it happens, so a command still finishes within one Receive
        emit("stderr", clixml_progress())
        _emit_chunks(emit, "stdout", line)
        return code

    def _constrained(self, emit: Emit) -> int:
        """The bootstrap under Constrained Language Mode (AppLocker/WDAC): its first statement throws
        (if it checks the language mode first), else its first .NET call fails; either way outside a
        try, so powershell.exe writes the error as CLIXML on stderr and exits 1 without reading stdin."""
        if script_facts().checks_language_mode_first:
            statement = 'throw "KEYFLEET-CONSTRAINED-LANGUAGE: PowerShell runs in $($ExecutionContext.Ses ...'
            message = (
                f"KEYFLEET-CONSTRAINED-LANGUAGE: PowerShell runs in ConstrainedLanguage mode on {self.computer_name}"
            )
            emit("stderr", clixml_terminating_error(message, 9, 5, statement))
        else:
            message = "Cannot invoke method. Method invocation is supported only on core types in this language mode."
            emit("stderr", clixml_terminating_error(message, 1, 1, "[Console]::In.ReadLine()"))
        return 1

    def _logon(self, user: LabUser) -> Logon:
        """The session Windows gives the user: the token is an administrator's only if the user is
        one on this host and no not-admin fault says otherwise."""
        admin = user.admin and self.settings.admin and find(self.faults, "not-admin") is None
        account = user.name.rpartition("\\")[2]
        return Logon(_qualified(user.name), admin, f"C:\\Users\\{account}\\AppData\\Local\\Temp\\")

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


class _EchoingStdin(StdinPipe):
    """Console-mode stdin (WINRS_CONSOLEMODE_STDIN=TRUE): what is sent is typed into the console,
    which echoes it to stdout (winrs documents -noecho, pipe mode, to turn the echo off)."""

    def __init__(self, pipe: StdinPipe, emit: Emit) -> None:
        super().__init__()
        self._pipe, self._emit = pipe, emit
        self.reading = pipe.reading

    def write(self, data: bytes) -> None:
        self._pipe.write(data)

    def close(self) -> None:
        self._pipe.close()

    def read_all(self, cancel: threading.Event) -> bytes:
        data = self._pipe.read_all(cancel)
        _emit_chunks(self._emit, "stdout", data)
        return data


_PROGRAMS = {  # what the simulated server has on its PATH (cmd's built-ins are not programs)
    "hostname", "hostname.exe", "whoami", "whoami.exe", "more", "more.com", "powershell", "powershell.exe",
}  # fmt: skip


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
