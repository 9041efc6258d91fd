"""The WinRM session layer: one command with stdin on one host over pywinrm, errors as kinds.

It knows nothing about SCSM or keys. Per command it sends Create, Command, Send (stdin, end of
stream), Receive (repeated only while the command runs) and Delete: five requests besides the
auth handshake when the command finishes within one Receive.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any
from xml.etree.ElementTree import ParseError as XMLParseError

import requests
import requests.adapters
import urllib3.exceptions
import winrm
from winrm.exceptions import (
    InvalidCredentialsError,
    WinRMError,
    WinRMOperationTimeoutError,
    WinRMTransportError,
    WSManFaultError,
)

from orchestrator import kerberos
from orchestrator.errors import ErrorKind, HostFailure
from orchestrator.inventory.model import HostConfig
from orchestrator.secret import Secret, mask

log = logging.getLogger("keyfleet.session")

DEFAULT_MAX_OUTPUT = 64 * 1024 * 1024
_READ_MARGIN = 5.0  # seconds a reply may take beyond the WS-Man OperationTimeout
_FINGERPRINT_MISMATCH = re.compile(r'Expected "([0-9a-fA-F:]+)", got "([0-9a-fA-F:]+)"')
_ACCESS_DENIED = re.compile(r"access is denied|access denied", re.IGNORECASE)


@dataclass(frozen=True)
class CommandResult:
    stdout: bytes
    stderr: bytes
    exit_code: int
    requests: int  # WS-Man requests sent for this command, auth handshake not counted


class _PinnedAdapter(requests.adapters.HTTPAdapter):
    """Accepts exactly the certificate whose SHA-256 or SHA-1 thumbprint is pinned."""

    def __init__(self, thumbprint: str) -> None:
        self._thumbprint = thumbprint
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["assert_fingerprint"] = self._thumbprint
        super().init_poolmanager(*args, **kwargs)


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
            self._protocol = winrm.Protocol(
                endpoint=host.endpoint,
                # the inventory's names are pywinrm's; kerberos and negotiate are keyfleet's own NegotiateAuth
                transport="kerberos" if host.transport in kerberos.TRANSPORTS else host.transport,  # type: ignore[arg-type]
                username=username,
                password=password.reveal() if password else None,
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
        self._gss = None
        if host.transport in kerberos.TRANSPORTS:
            self._gss = kerberos.attach(self._protocol.transport, host, password)
        self.requests_sent = 0

    @property
    def mechanism(self) -> str | None:
        """The authentication in use: kerberos, ntlm, basic, credssp or certificate (None before a logon)."""
        if self._gss is not None:
            return self._gss.negotiated
        return self.host.transport if self._protocol.transport.session is not None else None

    # -- public -------------------------------------------------------------------------------

    def run(
        self,
        command_line: str,
        stdin: bytes,
        *,
        deadline: float,
        cancel: threading.Event | None = None,
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> CommandResult:
        """Run ``command_line`` with ``stdin`` (sent whole, then end of stream); collect its output.

        ``deadline`` is a ``time.monotonic()`` value; past it the command is abandoned with kind
        ``timeout``. Raises HostFailure for every failure.
        """
        start_count = self.requests_sent
        shell_id = self._call(deadline, "Create", self._protocol.open_shell, codepage=65001)
        done = False
        try:
            command_id = self._call(
                deadline, "Command", self._protocol.run_command, shell_id, command_line, skip_cmd_shell=True
            )
            self._call(deadline, "Send", self._protocol.send_command_input, shell_id, command_id, stdin, True)
            stdout, stderr, code = self._receive_all(shell_id, command_id, deadline, cancel, max_output)
            done = True
        finally:
            self._delete(shell_id, deadline if done else time.monotonic() + 5.0)
        return CommandResult(stdout, stderr, code, self.requests_sent - start_count)

    def close(self) -> None:
        self._protocol.transport.close_session()

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
            self._protocol.operation_timeout_sec = max(1, min(configured, int(remaining) - 1 or 1))
            try:
                out, err, code, done = self._call(
                    deadline, "Receive", self._protocol.get_command_output_raw, shell_id, command_id
                )
            except WinRMOperationTimeoutError:
                continue  # no output yet: the command is still running
            finally:
                self._protocol.operation_timeout_sec = configured
            stdout.append(out)
            stderr.append(err)
            size += len(out) + len(err)
            if size > max_output:
                raise HostFailure(ErrorKind.PROTOCOL, self.host.name, f"command output exceeds {max_output} bytes")
            if done:
                return b"".join(stdout), b"".join(stderr), code

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
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
                return func(*args, **kwargs)
        except WinRMOperationTimeoutError:
            raise
        except Exception as exc:
            raise self._classify(exc, operation) from None

    def _limit_socket_timeouts(self, remaining: float) -> None:
        transport = self._protocol.transport
        read = min(self._protocol.operation_timeout_sec + _READ_MARGIN, max(remaining, 0.5))
        # requests takes (connect, read); pywinrm passes the value through unchanged
        transport.read_timeout_sec = (min(self.host.connect_timeout, read), read)  # type: ignore[assignment]
        if self._pinned and transport.session is None:
            session = transport.build_session()
            session.verify = False
            session.mount("https://", _PinnedAdapter(self.host.cert_thumbprint or ""))

    def _classify(self, exc: Exception, operation: str) -> HostFailure:
        name = self.host.name
        where = f"{self.host.address}:{self.host.port}"
        if isinstance(exc, PermissionError) and "NTLM" in str(exc):
            # requests_ntlm: "Access denied: Server did not respond with NTLM challenge token"
            return HostFailure(ErrorKind.AUTH, name, f"NTLM logon refused by {where}")
        if isinstance(exc, kerberos.KerberosError):
            return HostFailure(ErrorKind.AUTH, name, exc.reason)
        if isinstance(exc, InvalidCredentialsError):
            return HostFailure(ErrorKind.AUTH, name, f"credentials rejected by {where} (HTTP 401)")
        if isinstance(exc, WSManFaultError):
            reason = mask(exc.reason or "")
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
