"""The lab's HTTP/1.1 listeners: one per host on its own loopback address, TLS, Basic, NTLM, Kerberos and
SPNEGO authentication, message sealing, transport-level faults, and one thread per connection."""

from __future__ import annotations

import base64
import binascii
import hmac
import itertools
import os
import selectors
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from spnego.channel_bindings import GssChannelBindings

from orchestrator.lab.faults import Fault, find
from orchestrator.lab.gss import (
    KERBEROS_PROTOCOL,
    SPNEGO_PROTOCOL,
    Acceptor,
    AuthRejectedError,
    AuthSetupError,
    HostKeys,
    sealed_content_type,
    token_mechanism,
)
from orchestrator.lab.journal import Journal
from orchestrator.lab.machine import LabUser
from orchestrator.lab.soap import (
    SoapFaultError,
    SoapRequest,
    WSManError,
    envelope_too_large_fault,
    fault_envelope,
    injected_fault,
    operation_timeout_fault,
)
from orchestrator.lab.wsman import WinRSService

_BACKLOG = 512
_MECHANISM_NAMES = {"ntlm": "NTLM", "kerberos": "Kerberos", "negotiate": "SPNEGO"}
_MAX_BODY = 16 * 1024 * 1024  # beyond this the connection is closed without reading the body
_MAX_LINE = 65536
_SOAP_TYPE = "application/soap+xml;charset=UTF-8"
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Request Entity Too Large",
    500: "Internal Server Error",
}


@dataclass
class HostListener:
    """Everything the connections of one host need."""

    name: str
    scheme: str  # http | https
    auth: str  # ntlm | basic (basic hosts accept Negotiate too, as Windows with both enabled)
    users: dict[str, tuple[str, bool]] = field(repr=False)  # user name -> (password, admin)
    service: WinRSService
    faults: tuple[Fault, ...] = ()
    ssl_context: ssl.SSLContext | None = None
    channel_bindings: GssChannelBindings | None = None
    ntlm_user_file: Path | None = None
    allow_unencrypted: bool = False  # Windows' AllowUnencrypted=true: Basic over plain HTTP
    keytab: Path | None = None  # this host's HTTP/<name> keys: Kerberos is accepted when set

    @property
    def keys(self) -> HostKeys:
        assert self.ntlm_user_file is not None
        return HostKeys(self.ntlm_user_file, self.keytab, self.channel_bindings)

    @property
    def basic_enabled(self) -> bool:
        return self.auth == "basic" and (self.scheme == "https" or self.allow_unencrypted)

    def user(self, name: str) -> LabUser | None:
        """The lab user called ``name`` (case-insensitive; a bare name matches DOMAIN\\name)."""
        wanted = name.lower()
        for configured, (_, admin) in self.users.items():
            c = configured.lower()
            if c == wanted or ("\\" not in c and wanted.rpartition("\\")[2] == c):
                return LabUser(configured, admin)
            # a Kerberos principal user@REALM is the account DOMAIN\user of that realm's domain
            if "@" in wanted and "@" not in c and wanted.partition("@")[0] == c.rpartition("\\")[2]:
                return LabUser(configured, admin)
        return None

    def challenges(self) -> list[str]:
        basic = ['Basic realm="WSMAN"'] if self.basic_enabled else []
        kerberos = ["Kerberos"] if self.keytab is not None else []
        return ["Negotiate", *kerberos, *basic]


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class _Drop(Exception):
    """Close the connection now, without a reply."""


def _read_request(rfile: IO[bytes]) -> _Request | None:
    line = rfile.readline(_MAX_LINE)
    while line in (b"\r\n", b"\n"):
        line = rfile.readline(_MAX_LINE)
    if not line:
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _Drop("bad request line")
    headers: dict[str, str] = {}
    while True:
        h = rfile.readline(_MAX_LINE)
        if h in (b"\r\n", b"\n", b""):
            break
        key, _, value = h.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
    length = headers.get("content-length", "0")
    if not length.isdigit() or "chunked" in headers.get("transfer-encoding", "").lower():
        raise _Drop("no usable Content-Length")
    if int(length) > _MAX_BODY:
        raise _Drop("request body too large")
    body = rfile.read(int(length))
    if len(body) != int(length):
        return None
    conn = headers.get("connection", "").lower()
    keep = conn != "close" and (parts[2] == "HTTP/1.1" or conn == "keep-alive")
    return _Request(parts[0], parts[1], headers, body, keep)


class _Connection:
    """One accepted TCP connection of one host, served request by request in its own thread."""

    def __init__(self, server: LabHTTPServer, host: HostListener, sock: socket.socket, cid: int) -> None:
        self.server, self.host, self.sock, self.cid = server, host, sock, cid
        self.auth: Acceptor | None = None
        self.auth_scheme = "Negotiate"  # the scheme the client authenticated with: Negotiate or Kerberos
        self.auth_user: LabUser | None = None
        self.mutual_token: bytes | None = None  # the server's last token, sent on the next answer (mutual auth)

    def run(self) -> None:
        try:
            if find(self.host.faults, "blackhole"):
                while not self.server.stopping.is_set() and self.sock.recv(65536):
                    pass
                return
            if self.host.ssl_context is not None:
                self.sock.settimeout(30)
                self.sock = self.host.ssl_context.wrap_socket(self.sock, server_side=True)
                self.sock.settimeout(None)
            rfile = self.sock.makefile("rb")
            while not self.server.stopping.is_set():
                req = _read_request(rfile)
                if req is None or not self._serve(req) or not req.keep_alive:
                    break
        except (OSError, _Drop):
            pass  # client went away, TLS failed, or the fleet is stopping: the connection just ends
        finally:
            self.server.forget(self)
            self.sock.close()

    def _send(
        self, status: int, body: bytes = b"", *, content_type: str | None = None, challenge: list[str] | None = None
    ) -> None:
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}", "Server: Microsoft-HTTPAPI/2.0"]
        if body or content_type:
            head.append(f"Content-Type: {content_type or _SOAP_TYPE}")
        if challenge is None and self.mutual_token is not None:
            challenge = [f"{self.auth_scheme} {base64.b64encode(self.mutual_token).decode()}"]
            self.mutual_token = None
        head += [f"WWW-Authenticate: {c}" for c in challenge or ()]
        head.append(f"Content-Length: {len(body)}")
        self.sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

    def _journal(self, operation: str, status: int, user: LabUser | None, **fields: object) -> None:
        name = user.name if user else None
        if user is not None:
            fields["auth"] = self.auth.negotiated if self.auth is not None and self.auth.complete else "basic"
        self.server.journal.record(self.host.name, self.cid, operation, status, user=name, **fields)

    def _unauthorized(self, user: LabUser | None = None, detail: str | None = None) -> bool:
        self._journal("auth-handshake", 401, user, detail=detail)
        self._send(401, challenge=self.host.challenges())
        return True

    def _serve(self, req: _Request) -> bool:
        """Answer one request; False closes the connection."""
        latency = find(self.host.faults, "latency")
        if latency and latency.arg and self.server.stopping.wait(float(latency.arg)):
            return False
        if req.path.split("?", 1)[0].lower() != "/wsman" or req.method != "POST":
            status = 404 if req.method == "POST" else 405
            self._journal("rejected", status, None, detail=f"{req.method} {req.path}")
            self._send(status)
            return True
        user = self._authenticate(req)
        if user is None:
            return True
        content_type = req.headers.get("content-type", "").lower()
        sealed = next((p for p in (SPNEGO_PROTOCOL, KERBEROS_PROTOCOL) if p.lower() in content_type), None)
        if sealed:
            if self.auth is None or not self.auth.complete:
                return self._unauthorized(detail="sealed message without a security context")
            try:
                soap = self.auth.unseal(req.body)
            except AuthRejectedError as exc:
                self._journal("rejected", 400, user, detail=f"cannot unseal: {exc}")
                self._send(400)
                return False
        elif not req.body:
            self._journal("encryption-init", 200, user)
            self._send(200)
            return True
        elif self.host.scheme == "http" and not self.host.allow_unencrypted:
            # Windows with AllowUnencrypted=false refuses plaintext SOAP over HTTP with an empty 500.
            self._journal("rejected", 500, user, detail="unencrypted message refused")
            self._send(500)
            return True
        else:
            soap = req.body
        return self._soap(soap, user, sealed)

    def _soap(self, soap: bytes, user: LabUser, sealed: str | None) -> bool:
        limits = self.host.service.limits
        op, relates, fields = "rejected", "", {}
        try:
            if len(soap) > limits.max_envelope_kb * 1024:
                raise SoapFaultError(envelope_too_large_fault(limits.max_envelope_kb))
            request = SoapRequest.parse(soap)
            op, relates = request.operation, request.message_id
            if op == "Receive" and find(self.host.faults, "drop-receive"):
                self._journal(op, 0, user, detail="lab fault drop-receive")
                return False
            http500 = find(self.host.faults, "http500")
            if http500 and http500.arg == op:
                raise SoapFaultError(injected_fault(op))
            if any(f.kind == "timed-out" and f.arg == op for f in self.host.faults):
                raise SoapFaultError(operation_timeout_fault())
            reply = self.host.service.handle(request, user)
            status, body = 200, reply.body
            fields = {
                "command_line": reply.command_line,
                "stdin_bytes": reply.stdin_bytes,
                "options": reply.options,
                "request": reply.request,
            }
            detail = None
        except SoapFaultError as exc:
            fault: WSManError = exc.fault
            status, body = fault.status, fault_envelope(fault, relates, self.host.name)
            detail = f"fault {fault.wsman_code}"
        self._journal(op, status, user, detail=detail, **{k: v for k, v in fields.items() if v is not None})
        if sealed and not find(self.host.faults, "unsealed-reply"):
            assert self.auth is not None
            garble = find(self.host.faults, "garbled-seal")
            body = self.auth.seal(body, sealed, garble=(garble.arg or "payload") if garble else None)
            self._send(status, body, content_type=sealed_content_type(sealed))
        else:
            self._send(status, body)
        return True

    def _authenticate(self, req: _Request) -> LabUser | None:
        """The request's user, or None after answering 401 (a handshake step or a refusal)."""
        header = req.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        scheme = scheme.lower()
        if not header:
            if self.auth_user is not None:
                return self.auth_user
            self._unauthorized()
            return None
        if scheme == "basic":
            self.auth = self.auth_user = None
            return self._basic(token.strip())
        if scheme in ("negotiate", "ntlm", "kerberos"):
            return self._negotiate(scheme, token.strip())
        self._unauthorized(detail=f"unsupported scheme {scheme}")
        return None

    def _basic(self, token: str) -> LabUser | None:
        if not self.host.basic_enabled:
            self._unauthorized(detail="Basic is not enabled on this listener")
            return None
        try:
            name, _, password = base64.b64decode(token, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            name, password = "", ""
        user = self.host.user(name)
        expected = self.host.users[user.name][0] if user else ""
        if user is None or not hmac.compare_digest(password.encode(), expected.encode()):
            self._unauthorized(detail="bad credentials")
            return None
        if find(self.host.faults, "auth-failure"):
            self._unauthorized(user, detail="lab fault auth-failure")
            return None
        return user

    def _negotiate(self, scheme: str, token: str) -> LabUser | None:
        try:
            data = base64.b64decode(token, validate=True)
        except binascii.Error:
            data = b""
        mechanism = token_mechanism(scheme, data)
        if mechanism is not None:
            self.auth_user = self.auth = self.mutual_token = None
            self.auth_scheme = "Kerberos" if scheme == "kerberos" else "Negotiate"
            if mechanism == "unknown" or (scheme == "kerberos" and mechanism != "kerberos"):
                self._unauthorized(detail=f"unsupported {scheme} token")
                return None
            try:
                self.auth = Acceptor(mechanism, self.host.keys, data)
            except AuthSetupError as exc:
                # HTTP.sys answers a failure of its own security subsystem as any refused logon: a bare 401.
                self._unauthorized(detail=f"{_MECHANISM_NAMES[mechanism]} acceptor unavailable: {exc}")
                return None
        if self.auth is None or self.auth.complete:
            self._unauthorized(detail="not a first authentication token")
            return None
        try:
            out = self.auth.step(data)
        except AuthRejectedError as exc:
            self.auth = None
            self._journal("auth-handshake", 401, None, detail=f"{mechanism or 'token'} rejected: {exc}")
            # a Kerberos error (e.g. KRB_AP_ERR_SKEW) goes back to the client in the header, as SSPI does
            error = [f"{self.auth_scheme} {base64.b64encode(exc.token).decode()}"] if exc.token else None
            self._send(401, challenge=error or self.host.challenges())
            return None
        if not self.auth.complete:
            self._journal("auth-handshake", 401, None, detail=self.auth.mechanism)
            self._send(401, challenge=[f"{self.auth_scheme} " + base64.b64encode(out or b"").decode()])
            return None
        user = self.host.user(self.auth.client_principal or "")
        if user is None or find(self.host.faults, "auth-failure"):
            self.auth = None
            self._unauthorized(user, detail="lab fault auth-failure" if user else "unknown user")
            return None
        self.mutual_token = out
        self.auth_user = user
        return user


class LabHTTPServer:
    """All listeners of a fleet: one acceptor thread, one thread per connection."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.stopping = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._listeners: list[socket.socket] = []
        self._live: set[_Connection] = set()
        self._live_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None

    def listen(self, host: HostListener, address: str, port: int) -> int:
        """Bind ``address:port`` (port 0: any free port) for ``host``; return the bound port."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            sock.listen(_BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._listeners.append(sock)
        self._selector.register(sock, selectors.EVENT_READ, host)
        return int(sock.getsockname()[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._accept_loop, name="lab-acceptor", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self.stopping.is_set():
            for key, _ in self._selector.select():
                if key.data is None:
                    return
                while True:
                    try:
                        sock, _ = key.fileobj.accept()  # type: ignore[union-attr]
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break  # e.g. too many open files: try again on the next readiness event
                    sock.setblocking(True)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    conn = _Connection(self, key.data, sock, next(self._ids))
                    with self._live_lock:
                        self._live.add(conn)
                    threading.Thread(target=conn.run, name=f"lab-{key.data.name}", daemon=True).start()

    def forget(self, conn: _Connection) -> None:
        with self._live_lock:
            self._live.discard(conn)

    def stop(self) -> None:
        """Stop accepting, close listeners, and cut every open connection (blackholes too)."""
        self.stopping.set()
        self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(5)
        for sock in self._listeners:
            sock.close()
        with self._live_lock:
            live = list(self._live)
        for conn in live:
            _shutdown_fd(conn.sock)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


def _shutdown_fd(sock: socket.socket) -> None:
    """Shut a connection down from another thread without touching the (maybe TLS) socket object."""
    try:
        fd = os.dup(sock.fileno())
    except OSError:
        return  # already closed by its own thread
    dup = socket.socket(fileno=fd)
    try:
        dup.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected any more
    finally:
        dup.close()
