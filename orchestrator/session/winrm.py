"""The WinRM session layer: one command with stdin on one host over pywinrm, errors as kinds.

It knows nothing about SCSM or keys. Per command it sends Create, Command, Send (stdin, end of
stream), Receive (repeated only while the command runs) and Delete: five requests besides the
auth handshake when the command finishes within one Receive. A session's first command is preceded by
a bare TCP connect (no request) to the listener, so its phases can be reported truthfully.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from xml.etree.ElementTree import ParseError as XMLParseError

import requests
import urllib3.exceptions
from winrm.exceptions import (
    InvalidCredentialsError,
    WinRMError,
    WinRMOperationTimeoutError,
    WinRMTransportError,
    WSManFaultError,
)
from winrm.protocol import Protocol

from orchestrator.errors import ErrorKind, HostFailure
from orchestrator.inventory.model import HostConfig
from orchestrator.secret import Secret, mask
from orchestrator.session import envelope, kerberos, transport

log = logging.getLogger("keyfleet.session")
envelope.install()  # pywinrm's envelopes, the same bytes, written at a fifth of the cost

DEFAULT_MAX_OUTPUT = 64 * 1024 * 1024
_READ_MARGIN = 5.0  # seconds a reply may take beyond the WS-Man OperationTimeout
_FINGERPRINT_MISMATCH = re.compile(r'Expected "([0-9a-fA-F:]+)", got "([0-9a-fA-F:]+)"')
_ACCESS_DENIED = re.compile(r"access is denied|access denied", re.IGNORECASE)
# Group Policy "Allow Remote Shell Access" disabled: "The WS-Management service cannot process the
# request. The service is configured to not accept any remote shell requests." (public reports; the
# fault code is not documented, so the text decides)
_SHELL_DISABLED = re.compile(
    r"not accept any remote shell requests|remote shell access is (?:disabled|not allowed)", re.I
)
# a Send to a process that has ended: "The pipe has been ended." (ERROR_BROKEN_PIPE, ansible/ansible#69595);
# "The pipe is being closed." (ERROR_NO_DATA) where the process is still closing its stdin
_PIPE_ENDED = re.compile(r"the pipe (?:has been ended|is being closed)", re.I)
STDIN_CHUNK = 200_000  # bytes per Send, as Ansible's winrm plugin; fits the default MaxEnvelopeSizekb of 500
# What ``run`` reports through ``on_phase``, in order: for a live display, never for control flow.
PHASES = ("connecting", "authenticating", "running helper", "receiving")


def _no_phase(_phase: str) -> None:
    return None


_NOT_HTTP = re.compile(r"BadStatusLine|LineTooLong|got more than \d+ (bytes|headers)|too many headers|InvalidHeader")
_CLEANUP_GRACE = 0.5  # seconds past the host deadline a failed command's shell may take to delete


def _cleanup_deadline(deadline: float) -> float:
    """After a failure, Delete still gets a moment (it stops the remote process), but at most a
    little past the host deadline."""
    now = time.monotonic()
    return min(now + 5.0, max(deadline, now) + _CLEANUP_GRACE)


@dataclass(frozen=True)
class CommandResult:
    stdout: bytes
    stderr: bytes
    exit_code: int
    requests: int  # WS-Man requests sent for this command, auth handshake not counted


def system_ca_bundle() -> str | bool:
    """The operating system's CA store as OpenSSL was built to find it: not certifi's bundle, and not
    REQUESTS_CA_BUNDLE or SSL_CERT_FILE. True (requests' own bundle) where the system has none."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.openssl_cafile, paths.openssl_capath):
        if candidate and os.path.exists(candidate):
            return candidate
    return True


class WinRMSession:
    """A WinRM connection to one host. Not thread-safe: NTLM sealing state is sequential."""

    def __init__(self, host: HostConfig, password: Secret | None) -> None:
        self.host = host
        self._pinned = host.scheme == "https" and host.cert_thumbprint is not None
        validate = host.scheme == "https" and host.cert_validation and not self._pinned
        encrypt_messages = host.scheme == "http" and host.transport in ("ntlm", "kerberos", "credssp")
        username = host.credential.username if host.credential else None
        try:
            self._protocol = Protocol(
                endpoint=host.endpoint,
                # the inventory's names are pywinrm's; kerberos and negotiate are keyfleet's own NegotiateAuth
                transport="kerberos" if host.transport in kerberos.TRANSPORTS else host.transport,  # type: ignore[arg-type]
                username=username,
                password=self._password(password),
                cert_pem=host.client_cert,
                cert_key_pem=host.client_key,
                server_cert_validation="validate" if validate else "ignore",
                # explicit trust and proxy: pywinrm's defaults read REQUESTS_CA_BUNDLE and proxy env vars
                ca_trust_path=(host.ca_bundle or system_ca_bundle()) if validate else None,  # type: ignore[arg-type]
                proxy=None,
                message_encryption="always" if encrypt_messages else "auto",
                operation_timeout_sec=max(1, int(host.operation_timeout)),
                read_timeout_sec=max(1, int(host.operation_timeout)) + int(_READ_MARGIN),
            )
        except WinRMError as exc:
            raise HostFailure(ErrorKind.CONFIG, host.name, mask(str(exc))) from None
        self._watch = transport.bound(
            self._protocol, proxy=host.proxy, thumbprint=host.cert_thumbprint if self._pinned else None
        )
        self._gss = None
        if host.transport in kerberos.TRANSPORTS:
            self._gss = kerberos.attach(self._protocol.transport, host, password)
        self.requests_sent = 0

    def _password(self, password: Secret | None) -> str | None:
        if password is None:
            return None
        if self.host.transport == "ntlm":  # the same NTLM exchange, its one-way functions run once per password
            return transport.ntlm_password(password.reveal())
        return password.reveal()

    @property
    def mechanism(self) -> str | None:
        """The authentication in use: kerberos, ntlm, basic, credssp or certificate (None before a logon)."""
        if self._gss is not None:
            return self._gss.negotiated
        return self.host.transport if transport.authenticated(self._protocol) else None

    # -- public -------------------------------------------------------------------------------

    def run(
        self,
        command_line: str,
        stdin: bytes,
        *,
        deadline: float,
        cancel: threading.Event | None = None,
        max_output: int = DEFAULT_MAX_OUTPUT,
        on_phase: Callable[[str], None] = _no_phase,
    ) -> CommandResult:
        """Run ``command_line`` with ``stdin`` (sent in chunks, then end of stream); collect its output.

        The shell's code page is UTF-8 (65001), set explicitly. The command runs without cmd.exe
        (WINRS_SKIP_CMD_SHELL) and with stdin as a pipe (WINRS_CONSOLEMODE_STDIN=FALSE, as
        Ansible's winrm plugin streams stdin: a real end of file, and no console echo of what is
        sent). ``deadline`` is a ``time.monotonic()`` value; past it the command is abandoned
        with kind ``timeout``. ``on_phase`` hears each of ``PHASES`` as it starts. Raises
        HostFailure for every failure.
        """
        start_count = self.requests_sent
        if start_count == 0:  # a first command: reach the listener, so "connecting" means just that
            on_phase("connecting")
            if self.host.proxy is None:  # through a proxy the first request is what connects
                self._reach(deadline)
            on_phase("authenticating")  # the first request carries the handshake (TLS, NTLM or Basic)
        shell_id = self._call(deadline, "Create", self._protocol.open_shell, codepage=65001)
        done = False
        try:
            command_id = self._call(
                deadline,
                "Command",
                self._protocol.run_command,
                shell_id,
                command_line,
                console_mode_stdin=False,
                skip_cmd_shell=True,
            )
            early = self._send_stdin(shell_id, command_id, stdin, deadline, cancel, max_output)
            on_phase("running helper")
            stdout, stderr, code = early or self._receive_all(
                shell_id, command_id, deadline, cancel, max_output, on_phase
            )
            done = True
        finally:
            self._delete(shell_id, deadline if done else _cleanup_deadline(deadline))
        return CommandResult(stdout, stderr, code, self.requests_sent - start_count)

    def _send_stdin(
        self,
        shell_id: str,
        command_id: str,
        stdin: bytes,
        deadline: float,
        cancel: threading.Event | None,
        max_output: int,
    ) -> tuple[bytes, bytes, int] | None:
        """Send stdin in chunks, the last with End. Windows faults a Send to a process that has
        already ended ("The pipe has been ended", ansible/ansible#69595): then the process's own
        output and exit code say why, so they are returned instead of the Send's fault (and a
        Receive that fails too reports its own failure)."""
        chunks = [stdin[i : i + STDIN_CHUNK] for i in range(0, len(stdin), STDIN_CHUNK)] or [b""]
        for index, chunk in enumerate(chunks):
            last = index == len(chunks) - 1
            try:
                self._call(deadline, "Send", self._protocol.send_command_input, shell_id, command_id, chunk, last)
            except HostFailure as refused:
                if not _PIPE_ENDED.search(refused.reason):
                    raise
                log.debug("%s: Send refused (%s); collecting what the command left", self.host.name, refused.reason)
                return self._receive_all(shell_id, command_id, deadline, cancel, max_output)
        return None

    def close(self) -> None:
        self._protocol.transport.close_session()
        self._watch.close()

    def __enter__(self) -> WinRMSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _receive_all(
        self,
        shell_id: str,
        command_id: str,
        deadline: float,
        cancel: threading.Event | None,
        max_output: int,
        on_phase: Callable[[str], None] = _no_phase,
    ) -> tuple[bytes, bytes, int]:
        stdout: list[bytes] = []
        stderr: list[bytes] = []
        size = 0
        configured = max(1, int(self.host.operation_timeout))
        while True:
            if cancel is not None and cancel.is_set():
                raise HostFailure(ErrorKind.INTERRUPTED, self.host.name, "interrupted by the operator")
            remaining = deadline - time.monotonic()
            if remaining < 1:
                raise HostFailure(
                    ErrorKind.TIMEOUT, self.host.name, "the command did not finish before the host deadline"
                )
            # never wait on the server longer than the host deadline allows
            asked = self._protocol.operation_timeout_sec = max(1, min(configured, int(remaining) - 1 or 1))
            sent = time.monotonic()
            try:
                out, err, code, done = self._call(
                    deadline, "Receive", self._protocol.get_command_output_raw, shell_id, command_id
                )
            except WinRMOperationTimeoutError:
                # no output yet: the command is still running. MS-WSMV 3.1.4.14 (Receive): "If no output is
                # available before the wsman:OperationTimeout expires, the server MUST return a WSManFault
                # with the Code attribute equal to 2150858793"; the client SHOULD Receive again. A server
                # faulting at once would have this loop spin: the next Receive waits for half the time asked
                early = sent + asked / 2 - time.monotonic()
                if early > 0:
                    (cancel or threading.Event()).wait(min(early, max(0.0, deadline - time.monotonic())))
                continue
            finally:
                self._protocol.operation_timeout_sec = configured
            if out and not size:
                on_phase("receiving")
            stdout.append(out)
            stderr.append(err)
            size += len(out) + len(err)
            if size > max_output:
                raise HostFailure(ErrorKind.PROTOCOL, self.host.name, f"command output exceeds {max_output} bytes")
            if done:
                return b"".join(stdout), b"".join(stderr), code

    def _reach(self, deadline: float) -> None:
        """Open and close one TCP connection to the listener (bounded by connect_timeout and the deadline)."""
        where = f"{self.host.address}:{self.host.port}"
        timeout = min(self.host.connect_timeout, deadline - time.monotonic())
        if timeout <= 0:
            raise HostFailure(ErrorKind.TIMEOUT, self.host.name, "host deadline reached before connecting")
        try:
            socket.create_connection((self.host.address, self.host.port), timeout=timeout).close()
        except TimeoutError:
            reason = f"no answer from {where} (connect timeout)"
        except ConnectionRefusedError:
            reason = f"connection refused by {where}"
        except OSError as exc:
            reason = f"cannot connect to {where} ({exc.strerror or type(exc).__name__})"
        else:
            return
        raise HostFailure(ErrorKind.UNREACHABLE, self.host.name, reason)

    def _delete(self, shell_id: str, deadline: float) -> None:
        try:
            self._call(deadline, "Delete", self._protocol.close_shell, shell_id, close_session=False)
        except HostFailure as exc:
            # the command's own result (or failure) matters more than a failed clean-up
            log.debug("%s: could not delete shell: %s", self.host.name, exc.reason)

    def _call(self, deadline: float, operation: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HostFailure(ErrorKind.TIMEOUT, self.host.name, f"host deadline reached before {operation}")
        self.requests_sent += 1
        try:
            self._limit_socket_timeouts(remaining)
            with self._watch.armed(deadline):
                return func(*args, **kwargs)
        except WinRMOperationTimeoutError:
            if operation == "Receive":
                raise  # no output yet: _receive_all asks again
            # only a Receive waits on the command; any other operation timing out is the server's failure
            raise HostFailure(
                ErrorKind.TIMEOUT, self.host.name, f"{operation}: the WS-Management service timed out ({self._where})"
            ) from None
        except Exception as exc:
            if self._watch.expired:  # the watchdog cut the connection: whatever broke after is that
                raise HostFailure(
                    ErrorKind.TIMEOUT, self.host.name, f"{operation}: host deadline reached ({self._where})"
                ) from None
            raise self._classify(exc, operation) from None

    @property
    def _where(self) -> str:
        return f"{self.host.address}:{self.host.port}"

    def _limit_socket_timeouts(self, remaining: float) -> None:
        read = min(self._protocol.operation_timeout_sec + _READ_MARGIN, max(remaining, 0.5))
        # requests takes (connect, read); pywinrm passes the value through unchanged
        self._protocol.transport.read_timeout_sec = (min(self.host.connect_timeout, read), read)  # type: ignore[assignment]

    def _classify(self, exc: Exception, operation: str) -> HostFailure:
        name = self.host.name
        where = f"{self.host.address}:{self.host.port}"
        if isinstance(exc, transport.NotAuthenticated):
            return HostFailure(ErrorKind.AUTH, name, f"the server did not authenticate ({where})")
        if isinstance(exc, transport.ReplyTooLarge):
            return HostFailure(ErrorKind.PROTOCOL, name, f"{operation}: {exc} from {where}")
        if isinstance(exc, PermissionError) and "NTLM" in str(exc):
            # requests_ntlm: "Access denied: Server did not respond with NTLM challenge token"
            return HostFailure(ErrorKind.AUTH, name, f"NTLM logon refused by {where}")
        if isinstance(exc, kerberos.KerberosError):
            return HostFailure(ErrorKind.AUTH, name, exc.reason)
        if isinstance(exc, InvalidCredentialsError):
            return HostFailure(ErrorKind.AUTH, name, f"credentials rejected by {where} (HTTP 401)")
        if isinstance(exc, WSManFaultError):
            reason = mask(exc.reason or "")
            if _SHELL_DISABLED.search(reason):
                return HostFailure(ErrorKind.REMOTE_SHELL_DISABLED, name, f"{operation}: {reason}")
            if exc.code in (401, 403) or _ACCESS_DENIED.search(reason):
                return HostFailure(ErrorKind.AUTH, name, f"{operation}: {reason}")
            kind = ErrorKind.HTTP if exc.code >= 500 else ErrorKind.REMOTE
            return HostFailure(kind, name, f"{operation}: WS-Man fault (HTTP {exc.code}): {reason}")
        if isinstance(exc, WinRMTransportError):
            kind = ErrorKind.HTTP if exc.code >= 500 else ErrorKind.PROTOCOL
            return HostFailure(kind, name, f"{operation}: HTTP {exc.code} from {where}")
        if isinstance(exc, requests.exceptions.SSLError):
            return HostFailure(ErrorKind.TLS, name, self._tls_reason(exc))
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return HostFailure(ErrorKind.UNREACHABLE, name, f"no answer from {where} (connect timeout)")
        if isinstance(exc, requests.exceptions.ReadTimeout):
            return HostFailure(ErrorKind.TIMEOUT, name, f"{operation}: {where} did not answer in time")
        if isinstance(exc, requests.exceptions.ConnectionError):
            text = str(exc)
            if "Read timed out" in text:
                return HostFailure(ErrorKind.TIMEOUT, name, f"{operation}: {where} did not answer in time")
            if _NOT_HTTP.search(text):
                return HostFailure(ErrorKind.PROTOCOL, name, f"{operation}: {where} did not answer in HTTP")
            if "Connection refused" in text or "Errno 111" in text:
                return HostFailure(ErrorKind.UNREACHABLE, name, f"connection refused by {where}")
            if "Max retries" in text and "NewConnectionError" in text:
                return HostFailure(ErrorKind.UNREACHABLE, name, f"cannot connect to {where}")
            return HostFailure(ErrorKind.UNREACHABLE, name, f"{operation}: connection to {where} lost")
        if isinstance(exc, OSError) and "certificate" in str(exc).lower():
            # requests: "Could not find a suitable TLS CA certificate bundle, invalid path: ..."
            return HostFailure(ErrorKind.TLS, name, f"cannot use the CA bundle: {mask(str(exc))[:200]}")
        if isinstance(exc, (WinRMError, XMLParseError, StopIteration, KeyError, ValueError)):
            return HostFailure(ErrorKind.PROTOCOL, name, f"{operation}: malformed reply: {mask(str(exc))[:200]}")
        if isinstance(exc, (requests.exceptions.RequestException, urllib3.exceptions.HTTPError)):
            # cut or malformed body (ChunkedEncodingError, ContentDecodingError), bad headers, ...
            return HostFailure(
                ErrorKind.PROTOCOL, name, f"{operation}: bad HTTP reply from {where}: {type(exc).__name__}"
            )
        return HostFailure(ErrorKind.INTERNAL, name, f"{operation}: {type(exc).__name__}: {mask(str(exc))[:200]}")

    def _tls_reason(self, exc: Exception) -> str:
        text = str(exc)
        match = _FINGERPRINT_MISMATCH.search(text)
        if match:
            return (
                f"certificate thumbprint mismatch: expected {match.group(1).lower()}, "
                f"server presented {match.group(2).lower()}"
            )
        if "CERTIFICATE_VERIFY_FAILED" in text:
            detail = text.split("CERTIFICATE_VERIFY_FAILED]")[-1].split("(_ssl")[0].strip(" ')\"")
            return (
                f"certificate of {self.host.address} not trusted ({detail or 'verify failed'}); "
                "set ca_bundle or cert_thumbprint"
            )
        return f"TLS handshake with {self.host.address}:{self.host.port} failed"
