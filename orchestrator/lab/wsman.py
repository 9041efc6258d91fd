"""WinRS over WS-Management for one lab host: shells and commands (Create, Command, Send, Receive,
Signal, Delete), run by the host's simulated ``Machine`` in worker threads."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

from orchestrator.lab.faults import find
from orchestrator.lab.machine import LabUser, Machine, StdinPipe
from orchestrator.lab.soap import (
    NS_RSP,
    RESPONSE_ACTIONS,
    SoapFaultError,
    SoapRequest,
    WSManError,
    action_not_supported_fault,
    envelope,
    file_not_found_fault,
    invalid_request_fault,
    operation_timeout_fault,
    pipe_ended_fault,
    q,
    remote_shell_disabled_fault,
    shell_not_found_fault,
    shells_quota_fault,
)
from orchestrator.lab.windows import CommandOptions

log = logging.getLogger("keyfleet.lab")

SHELL_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"
_STATE = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/"
_DEFAULT_CLIENT_ENVELOPE = 153600  # what pywinrm asks for
_STREAM_OVERHEAD = 160  # bytes of XML around one rsp:Stream element
_REPLY_OVERHEAD = 2048  # header, CommandState and the End markers
_COALESCE_SECONDS = 0.05  # after output appears, wait this long for the command to finish too
_REQUEST_LINE_LIMIT = 4 * 1024 * 1024  # a first line longer than this is not a helper request
_STARTUP_SECONDS = 0.5  # how long Command waits for the process to start reading stdin


@dataclass(frozen=True)
class ServiceLimits:
    """The WinRM service quotas a lab host enforces (Windows defaults)."""

    max_envelope_kb: int = 500  # MaxEnvelopeSizekb: largest request accepted
    max_shells_per_user: int = 30  # winrs MaxShellsPerUser
    # MaxTimeoutms: a request without an OperationTimeout, or with a larger one, gets this one
    # (MS-WSMV 3.1.4.1.6 wsman:OperationTimeout)
    max_timeout_ms: int = 60000


@dataclass(frozen=True)
class Reply:
    """A SOAP reply and what the journal records about the request."""

    body: bytes
    command_line: str | None = None
    stdin_bytes: int | None = None
    options: str | None = None
    request: str | None = None


@dataclass
class _Command:
    id: str
    command_line: str
    options: CommandOptions = field(default_factory=CommandOptions)
    first_line: bytearray | None = field(default_factory=bytearray)  # until the request line is complete
    stdin: StdinPipe = field(default_factory=StdinPipe)
    cancel: threading.Event = field(default_factory=threading.Event)
    cond: threading.Condition = field(default_factory=threading.Condition)
    output: deque[tuple[str, bytes]] = field(default_factory=deque)
    done: bool = False
    exit_code: int = 0

    def emit(self, stream: str, data: bytes) -> None:
        if not data:
            return
        with self.cond:
            self.output.append((stream, bytes(data)))
            self.cond.notify_all()

    def terminate(self) -> None:
        self.cancel.set()
        self.stdin.close()
        with self.cond:
            self.cond.notify_all()


@dataclass
class _Shell:
    id: str
    owner: LabUser
    options: dict[str, str] = field(default_factory=dict)  # WINRS_CODEPAGE, WINRS_NOPROFILE
    commands: dict[str, _Command] = field(default_factory=dict)


class WinRSService:
    """The WinRS shells of one host. ``handle`` answers one parsed request or raises SoapFaultError."""

    def __init__(self, host: str, machine: Machine, limits: ServiceLimits | None = None) -> None:
        self.host = host
        self.machine = machine
        self.limits = limits or ServiceLimits()
        self._lock = threading.Lock()
        self._shells: dict[str, _Shell] = {}
        self._stopping = threading.Event()

    # -- public ---------------------------------------------------------------------------------

    def handle(self, req: SoapRequest, user: LabUser) -> Reply:
        handler = {
            "Create": self._create,
            "Command": self._command,
            "Send": self._send,
            "Receive": self._receive,
            "Signal": self._signal,
            "Delete": self._delete,
        }.get(req.operation)
        if handler is None:
            raise SoapFaultError(action_not_supported_fault(req.action or "(none)"))
        return handler(req, user)

    def reply(self, req: SoapRequest, body_xml: str, **journal: object) -> Reply:
        action = RESPONSE_ACTIONS[req.operation]
        return Reply(envelope(action, req.message_id, body_xml), **journal)  # type: ignore[arg-type]

    def shell_count(self) -> int:
        with self._lock:
            return len(self._shells)

    def stop(self) -> None:
        """Cancel every running command and wake every waiting Receive (fleet shutdown)."""
        self._stopping.set()
        with self._lock:
            shells = list(self._shells.values())
            self._shells.clear()
        for shell in shells:
            for cmd in shell.commands.values():
                cmd.terminate()

    # -- operations -----------------------------------------------------------------------------

    def _create(self, req: SoapRequest, user: LabUser) -> Reply:
        if find(self.machine.faults, "remote-shell-disabled"):
            raise SoapFaultError(remote_shell_disabled_fault())
        shell = _Shell(str(uuid.uuid4()).upper(), user, dict(req.options))
        with self._lock:
            owned = sum(1 for s in self._shells.values() if _same_user(s.owner, user))
            if owned >= self.limits.max_shells_per_user:
                raise SoapFaultError(shells_quota_fault(self.limits.max_shells_per_user))
            self._shells[shell.id] = shell
        shell_el = req.body.find(q(NS_RSP, "Shell"))
        if shell_el is None:
            shell_el = req.body
        streams_in = shell_el.findtext(q(NS_RSP, "InputStreams")) or "stdin"
        streams_out = shell_el.findtext(q(NS_RSP, "OutputStreams")) or "stdout stderr"
        body = (
            "<x:ResourceCreated><a:Address>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
            f"</a:Address><a:ReferenceParameters><w:ResourceURI>{SHELL_URI}</w:ResourceURI>"
            f'<w:SelectorSet><w:Selector Name="ShellId">{shell.id}</w:Selector></w:SelectorSet>'
            "</a:ReferenceParameters></x:ResourceCreated>"
            f"<rsp:Shell><rsp:ShellId>{shell.id}</rsp:ShellId><rsp:ResourceUri>{SHELL_URI}</rsp:ResourceUri>"
            f"<rsp:Owner>{escape(user.name)}</rsp:Owner><rsp:ClientIP>127.0.0.1</rsp:ClientIP>"
            "<rsp:IdleTimeOut>PT7200.000S</rsp:IdleTimeOut>"
            f"<rsp:InputStreams>{escape(streams_in)}</rsp:InputStreams>"
            f"<rsp:OutputStreams>{escape(streams_out)}</rsp:OutputStreams>"
            "<rsp:ShellRunTime>P0DT0H0M0S</rsp:ShellRunTime><rsp:ShellInactivity>P0DT0H0M0S</rsp:ShellInactivity>"
            "</rsp:Shell>"
        )
        return self.reply(req, body, options=_describe(req.options))

    def _command(self, req: SoapRequest, user: LabUser) -> Reply:
        shell = self._shell(req, user)
        line_el = req.body.find(q(NS_RSP, "CommandLine"))
        if line_el is None:
            raise SoapFaultError(invalid_request_fault("Command without rsp:CommandLine."))
        command_line = line_el.findtext(q(NS_RSP, "Command")) or ""
        args = [a.text or "" for a in line_el.findall(q(NS_RSP, "Arguments"))]
        if args:
            command_line += " " + " ".join(args)
        options = CommandOptions.of(shell.options, req.options, self.machine.settings.oem_codepage)
        if not self.machine.can_start(command_line, options):
            raise SoapFaultError(file_not_found_fault())
        cmd = _Command((line_el.get("CommandId") or str(uuid.uuid4())).upper(), command_line, options)
        with self._lock:
            shell.commands[cmd.id] = cmd
        threading.Thread(target=self._run, args=(cmd, user), name=f"lab-{self.host}-command", daemon=True).start()
        # Windows answers Command once the process runs: let it reach its first read of stdin (or end)
        cmd.stdin.reading.wait(_STARTUP_SECONDS)
        body = f"<rsp:CommandResponse><rsp:CommandId>{cmd.id}</rsp:CommandId></rsp:CommandResponse>"
        return self.reply(req, body, command_line=command_line, options=_describe(req.options))

    def _run(self, cmd: _Command, user: LabUser) -> None:
        exit_code = 1
        try:
            exit_code = self.machine.execute(cmd.command_line, cmd.stdin, user, cmd.emit, cmd.cancel, cmd.options)
        except Exception:  # a lab bug: log it and report it to the client like a crashed process
            log.exception("lab host %s: command failed inside the simulator", self.host)
            cmd.emit("stderr", b"keyfleet lab: internal simulator error (see the debug log)\r\n")
        finally:
            with cmd.cond:
                cmd.exit_code, cmd.done = exit_code, True
                cmd.cond.notify_all()
            cmd.stdin.reading.set()

    def _send(self, req: SoapRequest, user: LabUser) -> Reply:
        shell = self._shell(req, user)
        total = 0
        request = None
        for stream in req.body.iter(q(NS_RSP, "Stream")):
            cmd = self._cmd(shell, stream.get("CommandId"))
            if cmd.done:  # the process has ended: nothing reads its stdin pipe any more
                raise SoapFaultError(pipe_ended_fault())
            try:
                data = base64.b64decode((stream.text or "").strip(), validate=True)
            except binascii.Error:
                raise SoapFaultError(invalid_request_fault("stdin is not valid base64.")) from None
            total += len(data)
            try:
                if data:
                    cmd.stdin.write(data)
            except ValueError:
                raise SoapFaultError(invalid_request_fault("stdin of this command is closed.")) from None
            request = _request_line(cmd, data) or request
            if (stream.get("End") or "").lower() == "true":
                cmd.stdin.close()
        return self.reply(req, "<rsp:SendResponse/>", stdin_bytes=total, request=request)

    def _receive(self, req: SoapRequest, user: LabUser) -> Reply:
        shell = self._shell(req, user)
        desired = req.body.find(f"{q(NS_RSP, 'Receive')}/{q(NS_RSP, 'DesiredStream')}")
        cmd = self._cmd(shell, desired.get("CommandId") if desired is not None else None)
        max_timeout = self.limits.max_timeout_ms / 1000
        timeout = min(req.operation_timeout, max_timeout) if req.operation_timeout is not None else max_timeout
        deadline = time.monotonic() + timeout
        with cmd.cond:
            while not cmd.output and not cmd.done and not self._stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SoapFaultError(operation_timeout_fault())
                cmd.cond.wait(left)
            linger = min(deadline, time.monotonic() + _COALESCE_SECONDS)
            while not cmd.done and not self._stopping.is_set() and (left := linger - time.monotonic()) > 0:
                cmd.cond.wait(left)
            budget = (req.max_envelope_size or _DEFAULT_CLIENT_ENVELOPE) - _REPLY_OVERHEAD
            pieces = _drain(cmd.output, budget)
            finished = cmd.done and not cmd.output
            exit_code = cmd.exit_code
        cid = quoteattr(cmd.id)
        parts = [
            f'<rsp:Stream Name="{name}" CommandId={cid}>{base64.b64encode(data).decode()}</rsp:Stream>'
            for name, data in pieces
        ]
        if finished:
            parts += [f'<rsp:Stream Name="{n}" CommandId={cid} End="true"/>' for n in ("stdout", "stderr")]
            parts.append(
                f'<rsp:CommandState CommandId={cid} State="{_STATE}Done">'
                f"<rsp:ExitCode>{exit_code}</rsp:ExitCode></rsp:CommandState>"
            )
        else:
            parts.append(f'<rsp:CommandState CommandId={cid} State="{_STATE}Running"/>')
        return self.reply(req, f"<rsp:ReceiveResponse>{''.join(parts)}</rsp:ReceiveResponse>")

    def _signal(self, req: SoapRequest, user: LabUser) -> Reply:
        shell = self._shell(req, user)
        signal = req.body.find(q(NS_RSP, "Signal"))
        cmd = self._cmd(shell, signal.get("CommandId") if signal is not None else None)
        code = (signal.findtext(q(NS_RSP, "Code")) if signal is not None else None) or ""
        if code.rsplit("/", 1)[-1] in ("terminate", "ctrl_c", "ctrl_break"):
            cmd.terminate()
            with self._lock:
                shell.commands.pop(cmd.id, None)
        return self.reply(req, "<rsp:SignalResponse/>")

    def _delete(self, req: SoapRequest, user: LabUser) -> Reply:
        shell = self._shell(req, user)
        with self._lock:
            self._shells.pop(shell.id, None)
        for cmd in shell.commands.values():
            cmd.terminate()
        return self.reply(req, "")

    # -- lookups --------------------------------------------------------------------------------

    def _shell(self, req: SoapRequest, user: LabUser) -> _Shell:
        with self._lock:
            shell = self._shells.get((req.shell_id or "").upper())
        if shell is None or not _same_user(shell.owner, user):
            raise SoapFaultError(shell_not_found_fault(req.shell_id or "(none)"))
        return shell

    def _cmd(self, shell: _Shell, command_id: str | None) -> _Command:
        with self._lock:
            cmd = shell.commands.get((command_id or "").upper())
        if cmd is None:
            raise SoapFaultError(
                WSManError(
                    500,
                    "s:Sender",
                    "w:InvalidSelectors",
                    2150858843,
                    f"The request for the Windows Remote Shell with ShellId {shell.id} failed because the "
                    f"command with CommandId {command_id} was not found. ",
                )
            )
        return cmd


def _request_line(cmd: _Command, data: bytes) -> str | None:
    """The journal's copy of a helper request: the first stdin line once complete, if it is a JSON
    object, with the (constant, shipped) script replaced by its length; so the leak search of a
    run also covers every JSON document keyfleet sent."""
    if cmd.first_line is None:
        return None
    cmd.first_line += data
    line, newline, _ = bytes(cmd.first_line).partition(b"\n")
    if not newline and len(cmd.first_line) < _REQUEST_LINE_LIMIT:
        return None
    cmd.first_line = None
    try:
        document = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(document, dict):
        return None
    if isinstance(document.get("script"), str):
        document["script"] = f"<{len(document['script'])} base64 characters>"
    return json.dumps(document, separators=(",", ":"))


def _describe(options: dict[str, str]) -> str | None:
    return " ".join(f"{k}={v}" for k, v in sorted(options.items())) or None


def _same_user(a: LabUser, b: LabUser) -> bool:
    return a.name.lower() == b.name.lower()


def _drain(output: deque[tuple[str, bytes]], budget: int) -> list[tuple[str, bytes]]:
    """Take output chunks off ``output`` while their base64 XML fits ``budget`` bytes; merge neighbours."""
    pieces: list[tuple[str, bytes]] = []
    used = 0
    while output:
        stream, data = output[0]
        room = (budget - used - _STREAM_OVERHEAD) // 4 * 3
        if room <= 0:
            break
        take = data[:room]
        if len(take) == len(data):
            output.popleft()
        else:
            output[0] = (stream, data[room:])
        if pieces and pieces[-1][0] == stream:
            merged = pieces[-1][1] + take
            used += (len(merged) + 2) // 3 * 4 - (len(pieces[-1][1]) + 2) // 3 * 4
            pieces[-1] = (stream, merged)
        else:
            pieces.append((stream, take))
            used += _STREAM_OVERHEAD + (len(take) + 2) // 3 * 4
    return pieces
