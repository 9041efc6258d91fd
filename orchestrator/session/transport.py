"""pywinrm's HTTP transport, bounded: an absolute deadline per request, a size cap per reply, explicit proxies.

Every use of requests', urllib3's and pywinrm's internals lives here (tests/test_transport.py fails
loudly when an upgrade changes them):
- urllib3 pools whose connections register a duplicate of their socket with the session's
  ``SocketWatch``; a watchdog thread shuts that socket down when the deadline passes, whatever the
  server does (a socket read timeout is reset by every byte a slow server drips);
- the socket file under each reply counts bytes and refuses the reply past a cap, however it is
  framed (length, chunks, read to close), before requests or urllib3 hold it;
- a pywinrm Transport whose requests session never reads or writes proxy environment variables:
  pywinrm's ``proxy=None`` makes requests set and delete ``os.environ["no_proxy"]`` around each
  request, which is not thread-safe (psf/requests issue 4997);
- one TLS context per trust setting for the whole process: urllib3 builds a context for every
  connection and loads the CA bundle into it (the system store: about 20 ms of CPU each time);
- NTLM passwords handed to pyspnego in its LM:NT hash form, its one-way functions run once per password.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import itertools
import os
import socket
import ssl
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import requests
import requests.adapters
import requests.auth
import urllib3.exceptions
import winrm
import winrm.encryption
import winrm.exceptions
import winrm.transport
from spnego._ntlm_raw.crypto import lmowfv1, ntowfv1
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.ssl_ import create_urllib3_context, resolve_cert_reqs
from winrm.protocol import Protocol

from orchestrator.secret import Secret

# Windows' default MaxEnvelopeSizekb is 500 (winrm get winrm/config); framing: HTTP multipart of
# encrypted messages, SOAP headers. No reply of a WS-Man server that honours it is larger.
MAX_ENVELOPE = 512 * 1024
FRAMING = 64 * 1024
_CHUNK = 64 * 1024
_WATCHDOG_TICK = 0.25  # seconds; the deadline holds within this (plus the time a shutdown takes)

# keyfleet warns about unverified https itself (security_warnings); urllib3 would repeat it per request.
# A process-wide filter: warnings.catch_warnings around each request is not thread-safe.
warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
# BoundedTransport hands pywinrm "legacy_requests" only to keep it off os.environ, then drops the
# environment's proxies: pywinrm's notice that it "will use an environment defined proxy" would be false.
warnings.filterwarnings(
    "ignore", message="'pywinrm' will use an environment defined proxy", category=DeprecationWarning
)


MAX_XML_TAGS = 16384  # per reply (refuse_unsafe_xml)


class ReplyTooLarge(Exception):  # not an OSError: urllib3 and requests let it through unchanged
    """A reply that grew past the cap; it was refused while streaming, never held whole."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"reply larger than {limit} bytes")


class NotAuthenticated(requests.exceptions.RequestException):
    """The server answered without the authentication handshake (e.g. 200 instead of an NTLM challenge)."""

    def __init__(self) -> None:
        super().__init__("the server did not authenticate")


def refuse_unsafe_xml(reply: bytes | str) -> None:
    """WinRMError (kind protocol) for a reply pywinrm must not parse. A document type declaration: SOAP 1.2
    Part 1, section 5, says a SOAP message MUST NOT contain one, and its entities would expand into far
    more elements than the reply's bytes show. More than MAX_XML_TAGS tags: ElementTree keeps about 270
    bytes per element, so a reply within the size cap made of ``<a>`` alone would cost 50 MB. A real
    reply never comes near: its smallest repeated element, a Receive's ``<rsp:Stream Name="stdout"
    CommandId="{GUID}">...</rsp:Stream>``, takes 96 bytes for two tags, so a reply within the cap holds
    at most about 12,300."""
    if isinstance(reply, str):
        reply = reply.encode("utf-8", "replace")
    if b"<!DOCTYPE" in reply:
        raise winrm.exceptions.WinRMError("the reply declares a document type, which SOAP forbids")
    if reply.count(b"<") > MAX_XML_TAGS:
        raise winrm.exceptions.WinRMError(f"the reply holds more than {MAX_XML_TAGS} XML tags")


def logged_on(auth: Any) -> bool:
    """Whether a requests auth handler finished its logon. A handshake handler answers the server's 401;
    a server that answers 200 at once never asked, so nothing was authenticated, and the checks that ride
    on the handshake (NTLM's channel binding, Kerberos's mutual authentication) never ran. requests_ntlm
    keeps the sealing state it derives from the challenge (``session_security``, None before), keyfleet's
    NegotiateAuth the protocol its context negotiated (``negotiated``, None before). Basic and client
    certificates (no handler, or requests' HTTPBasicAuth) have nothing to finish."""
    if _static(auth):
        return True
    if hasattr(auth, "negotiated"):
        return auth.negotiated is not None
    if hasattr(auth, "contexts"):  # requests_credssp: one context per host, kept once its handshake ran
        return bool(auth.contexts)
    return getattr(auth, "session_security", None) is not None


def _static(auth: Any) -> bool:
    """Basic (a header on every request) or a client certificate (no handler): no handshake to finish."""
    return auth is None or isinstance(auth, requests.auth.HTTPBasicAuth)


def forget_logon(auth: Any) -> None:
    """Drop what ``logged_on`` reads before a connection logs on again, so the new logon is judged on its
    own (a new connection that answers 200 at once authenticated nothing either)."""
    if hasattr(auth, "negotiated"):
        auth.forget()
    elif hasattr(auth, "session_security"):
        auth.session_security = None


class GuardedEncryption(winrm.encryption.Encryption):
    """pywinrm's Encryption whose unsealing of a server's reply fails as a malformed reply (WinRMError,
    kind protocol) whatever the bytes: pywinrm splits and indexes the multipart body and unpacks its
    length prefix unchecked (IndexError, struct.error), and pyspnego refuses a bad signature (SpnegoError)."""

    def parse_encrypted_response(self, response: requests.Response) -> bytes:
        try:
            return super().parse_encrypted_response(response)
        except winrm.exceptions.WinRMError:
            raise
        except Exception as exc:  # any failure to unseal hostile bytes is that
            raise winrm.exceptions.WinRMError(f"the sealed reply cannot be unsealed ({type(exc).__name__})") from None


def reply_cap(max_envelope: int) -> int:
    """The largest HTTP reply body accepted when requests carry ``max_envelope`` as MaxEnvelopeSize."""
    return max(max_envelope, MAX_ENVELOPE) + FRAMING


class SocketWatch:
    """The bounds of one host's session: the reply cap, and its sockets, shut down by the watchdog
    when an armed deadline passes.

    A duplicate of each socket is kept: shutting it down ends any blocking call on the original
    (plain or TLS, even mid-handshake) without racing the original's own close.
    """

    def __init__(self, max_reply: int) -> None:
        self.max_reply = max_reply  # bytes of one HTTP reply, status line and headers included
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._armed: int | None = None  # the token of the armed deadline
        self.expired = False  # the last armed deadline passed while armed

    @contextmanager
    def armed(self, deadline: float) -> Iterator[None]:
        """Requests made in this block (by this thread) end when ``deadline`` (monotonic) passes."""
        token = next(_tokens)
        with self._lock:
            self._armed = token
            self.expired = False
        _current.watch = self
        _WATCHDOG.arm(self, token, deadline)
        try:
            yield
        finally:
            _current.watch = None
            _WATCHDOG.disarm(self)
            with self._lock:
                self._armed = None

    def track(self, sock: socket.socket) -> None:
        duplicate = sock.dup()
        with self._lock:
            self._sockets.append(duplicate)
            if self.expired:
                _shutdown(duplicate)

    def expire(self, token: int) -> None:
        with self._lock:
            if self._armed != token:
                return  # that request finished meanwhile
            self.expired = True
            for sock in self._sockets:
                _shutdown(sock)

    def close(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the peer or by us: nothing left to end
        sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """One daemon thread for the whole process: expires armed watches whose deadline passed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: dict[SocketWatch, tuple[int, float]] = {}
        self._thread: threading.Thread | None = None

    def arm(self, watch: SocketWatch, token: int, deadline: float) -> None:
        with self._lock:
            self._armed[watch] = (token, deadline)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="keyfleet-watchdog", daemon=True)
                self._thread.start()

    def disarm(self, watch: SocketWatch) -> None:
        with self._lock:
            self._armed.pop(watch, None)

    def _loop(self) -> None:
        while True:
            time.sleep(_WATCHDOG_TICK)
            now = time.monotonic()
            with self._lock:
                due = [(watch, token) for watch, (token, deadline) in self._armed.items() if deadline <= now]
                for watch, _token in due:
                    del self._armed[watch]
            for watch, token in due:
                watch.expire(token)


_WATCHDOG = _Watchdog()
_tokens = itertools.count(1)
_current = threading.local()  # the SocketWatch armed by this thread, if any


class _CappedReader:
    """A reply's socket file that raises ReplyTooLarge once more than ``limit`` bytes came through it."""

    def __init__(self, inner: Any, limit: int) -> None:
        self._inner = inner
        self._limit = limit
        self._left = limit

    def _count(self, size: int) -> None:
        self._left -= size
        if self._left < 0:
            raise ReplyTooLarge(self._limit)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:  # to the end: in bounded steps, never one unbounded read
            parts = []
            while chunk := self.read(_CHUNK):
                parts.append(chunk)
            return b"".join(parts)
        data: bytes = self._inner.read(min(size, self._left + 1))
        self._count(len(data))
        return data

    def read1(self, size: int = -1) -> bytes:
        data: bytes = self._inner.read1(self._left + 1 if size < 0 else min(size, self._left + 1))
        self._count(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)[: self._left + 1]
        size: int = self._inner.readinto(view)
        self._count(size)
        return size

    def readline(self, size: int | None = -1) -> bytes:
        limit = self._left + 1 if size is None or size < 0 else min(size, self._left + 1)
        line: bytes = self._inner.readline(limit)
        self._count(len(line))
        return line

    def __getattr__(self, name: str) -> Any:  # close, flush, peek, raw (requests_ntlm reads raw._sock)
        return getattr(self._inner, name)


class _CappedResponse(http.client.HTTPResponse):
    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        watch: SocketWatch | None = getattr(_current, "watch", None)
        if watch is not None:
            self.fp = _CappedReader(self.fp, watch.max_reply)  # type: ignore[assignment]


class _WatchedConnection(HTTPConnection):
    response_class = _CappedResponse

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        watch: SocketWatch | None = getattr(_current, "watch", None)
        if watch is not None:
            watch.track(sock)
        return sock


class _WatchedHTTPSConnection(HTTPSConnection):
    response_class = _CappedResponse

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # the TCP socket, before the TLS handshake
        watch: SocketWatch | None = getattr(_current, "watch", None)
        if watch is not None:
            watch.track(sock)
        return sock

    def connect(self) -> None:
        shared = _shared_context(self)
        if shared is not None:  # urllib3 takes a given context as it is: no CA loaded again
            self.ssl_context, self.ca_certs, self.ca_cert_dir = shared, None, None
        super().connect()


_CONTEXTS: dict[tuple[object, ...], ssl.SSLContext] = {}
_CONTEXTS_LOCK = threading.Lock()


def _shared_context(conn: HTTPSConnection) -> ssl.SSLContext | None:
    """The process's TLS context for ``conn``'s trust setting, made as urllib3 would make it for the
    connection (``create_urllib3_context``, then the CA bundle), once per bundle (its path, size and
    modification time) instead of once per connection. None where the connection needs a context of its
    own (a client certificate, TLS versions, a caller's context): urllib3 then builds one as before.

    Without verification (a pinned thumbprint, ``cert_validation: false``) the shared context loads no
    CA at all, where urllib3 would load the system store into a context that checks nothing."""
    custom = (conn.ssl_context, conn.cert_file, conn.key_file, conn.ca_cert_data, conn.ssl_version, conn.proxy)
    if any(value is not None for value in custom) or conn.ssl_minimum_version or conn.ssl_maximum_version:
        return None
    cert_reqs = resolve_cert_reqs(conn.cert_reqs)
    if cert_reqs == ssl.CERT_NONE:
        key: tuple[object, ...] = ("none",)
    elif conn.ca_certs or conn.ca_cert_dir:
        try:
            stat = os.stat(conn.ca_certs or conn.ca_cert_dir or "")
        except OSError:
            return None  # urllib3 reports it as it always has
        key = ("verify", conn.ca_certs, conn.ca_cert_dir, stat.st_size, stat.st_mtime_ns, stat.st_ino)
    else:
        return None
    with _CONTEXTS_LOCK:  # built once even when many workers connect at the same moment
        context = _CONTEXTS.get(key)
        if context is None:
            context = create_urllib3_context(cert_reqs=cert_reqs)
            if cert_reqs != ssl.CERT_NONE:
                try:
                    context.load_verify_locations(conn.ca_certs, conn.ca_cert_dir)
                except OSError as exc:  # as urllib3's ssl_wrap_socket words a bundle it cannot load
                    raise urllib3.exceptions.SSLError(exc) from exc
            _CONTEXTS[key] = context
    return context


class _WatchedPool(HTTPConnectionPool):
    ConnectionCls = _WatchedConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_POOLS = {"http": _WatchedPool, "https": _WatchedHTTPSPool}


class BoundedAdapter(requests.adapters.HTTPAdapter):
    """Watched connections whose replies are capped as they are read (see SocketWatch).

    With ``thumbprint``, accepts exactly the certificate whose SHA-256 or SHA-1 thumbprint it is.
    """

    def __init__(self, thumbprint: str | None = None) -> None:
        self._thumbprint = thumbprint
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        if self._thumbprint:
            kwargs["assert_fingerprint"] = self._thumbprint
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _POOLS
        return manager


class _Reply:
    """What pywinrm's Encryption reads of a reply (headers, body, URL), for replies urllib3 gave directly."""

    def __init__(self, headers: Any, content: bytes, url: str) -> None:
        self.headers = headers
        self.content = content
        self.request = self  # Encryption reads response.request.url
        self.url = url


class _Direct:
    """WS-Man messages after the logon, sent on the pool the logon used, without requests' Session.

    requests' Session.send costs about 0.7 ms of CPU per message (preparing the request, merging
    settings, hooks, cookie jars, redirect resolution) that a logged-on WinRM session does not need:
    pywinrm's own Transport re-prepares every message. Here each message goes to urllib3 exactly as
    requests' HTTPAdapter.send would send it (same pool, so the same authenticated connection, TLS
    settings and watched sockets; same retry policy; no redirects, no content decoding), and urllib3's
    errors are raised as the requests exceptions HTTPAdapter.send and Response.content would raise, so
    callers see what they saw before. Message encryption is pywinrm's (MS-WSMV 2.2.9.1)."""

    def __init__(self, transport: BoundedTransport, session: requests.Session) -> None:
        base = session.prepare_request(requests.Request("POST", transport.endpoint, data=b""))
        self._transport = transport
        self._url = transport.endpoint
        self._path = base.path_url
        # the headers requests would send: the session's and the auth handler's (Basic's Authorization,
        # NTLM's Keep-Alive); no body headers, and no compressed replies (WinRM does not compress)
        headers = {k: v for k, v in base.headers.items() if k.lower() not in ("content-length", "content-type")}
        headers["Accept-Encoding"] = "identity"
        self._headers = headers
        self._content_type = str(base.headers.get("Content-Type") or transport.default_headers["Content-Type"])
        pool = transport.adapter.get_connection_with_tls_context(
            base, session.verify, proxies=session.proxies, cert=session.cert
        )
        assert isinstance(pool, HTTPConnectionPool)  # no proxy: a pool of watched connections
        # what HTTPAdapter.send does before every urlopen: the CA bundle (certifi for verify=True, or
        # the path given; a missing path is requests' OSError) and client certificate onto the pool. Since
        # requests 2.32.2 the pool is already made with them (its key holds the TLS settings), so without
        # this call the trust tests (tests/test_session.py, Basic over https: its first message comes here)
        # still pass; it stays so this path keeps doing what HTTPAdapter.send does
        transport.adapter.cert_verify(pool, transport.endpoint, session.verify, session.cert)  # type: ignore[no-untyped-call]
        self._pool = pool
        self._retries = transport.adapter.max_retries
        encryption = transport.encryption
        self._encryption = encryption
        self._host = urllib.parse.urlsplit(transport.endpoint).hostname
        if encryption is not None:
            self._sealed_protocol = f'protocol="{encryption.protocol_string.decode()}"'
            self._sealed_type = f'multipart/encrypted;{self._sealed_protocol};boundary="Encrypted Boundary"'

    @staticmethod
    def usable(transport: BoundedTransport) -> bool:
        """Not through a proxy (requests rewrites the request line and headers for one), and not CredSSP
        (its own TLS channel inside HTTP; pywinrm splits its sealed messages)."""
        return not transport.proxies and transport.auth_method != "credssp"

    @staticmethod
    def static_auth(session: requests.Session) -> bool:
        """Basic (a header on every request) or a client certificate: nothing to negotiate first."""
        return _static(session.auth)

    def send(self, message: bytes) -> bytes:
        headers = dict(self._headers)
        if self._encryption is not None:
            body = self._encryption._encrypt_message(message, self._host) + self._encryption.MIME_BOUNDARY + b"--\r\n"
            headers["Content-Type"] = self._sealed_type
        else:
            body = message
            headers["Content-Type"] = self._content_type
        headers["Content-Length"] = str(len(body))
        connect, read = self._transport.read_timeout_sec  # type: ignore[misc]  # set per call by the session
        response = self._urlopen(body, headers, urllib3.Timeout(connect=connect, read=read))
        content = self._read(response)
        reply = _Reply(response.headers, content, self._url)
        if response.status == 200:
            if self._encryption is not None and self._sealed_protocol not in response.headers.get("Content-Type", ""):
                # pywinrm would take it as it is: in a sealed session, that is a reply anyone on the path wrote
                raise winrm.exceptions.WinRMError("the server answered a sealed session with an unsealed reply")
            return self._text(reply)
        if response.status == 401:
            raise winrm.exceptions.InvalidCredentialsError("the specified credentials were rejected by the server")
        text = self._text(reply) if content else b""
        raise winrm.exceptions.WinRMTransportError("http", response.status, text.decode())

    def _text(self, reply: _Reply) -> bytes:
        if self._encryption is None:
            return reply.content
        return self._encryption.parse_encrypted_response(reply)  # type: ignore[arg-type]

    def _urlopen(self, body: bytes, headers: dict[str, str], timeout: urllib3.Timeout) -> Any:
        """urllib3's urlopen with requests' arguments, its errors as HTTPAdapter.send raises them."""
        try:
            return self._pool.urlopen(
                method="POST",
                url=self._path,
                body=body,
                headers=headers,
                redirect=False,
                assert_same_host=False,
                preload_content=False,
                decode_content=False,
                retries=self._retries,
                timeout=timeout,
                chunked=False,
            )
        except (urllib3.exceptions.ProtocolError, OSError) as err:
            raise requests.exceptions.ConnectionError(err) from None
        except urllib3.exceptions.MaxRetryError as err:
            reason = err.reason
            if isinstance(reason, urllib3.exceptions.ConnectTimeoutError) and not isinstance(
                reason, urllib3.exceptions.NewConnectionError
            ):
                raise requests.exceptions.ConnectTimeout(err) from None
            if isinstance(reason, urllib3.exceptions.SSLError):
                raise requests.exceptions.SSLError(err) from None
            raise requests.exceptions.ConnectionError(err) from None
        except urllib3.exceptions.ClosedPoolError as err:
            raise requests.exceptions.ConnectionError(err) from None
        except urllib3.exceptions.SSLError as err:
            raise requests.exceptions.SSLError(err) from None
        except urllib3.exceptions.ReadTimeoutError as err:
            raise requests.exceptions.ReadTimeout(err) from None
        except urllib3.exceptions.InvalidHeader as err:
            raise requests.exceptions.InvalidHeader(err) from None

    @staticmethod
    def _read(response: Any) -> bytes:
        """The whole body (the socket's cap bounds it), errors as requests' Response.content raises them. A
        reply not read to its end (cut, too large, timed out) closes its connection: what is left of it on
        the socket must never be read as the next reply."""
        whole = False
        try:
            data = bytes(response.read(decode_content=False))
            whole = True
            return data
        except urllib3.exceptions.ProtocolError as err:
            raise requests.exceptions.ChunkedEncodingError(err) from None
        except urllib3.exceptions.ReadTimeoutError as err:
            raise requests.exceptions.ConnectionError(err) from None
        except urllib3.exceptions.SSLError as err:
            raise requests.exceptions.SSLError(err) from None
        finally:
            if not whole:
                response.close()
            response.release_conn()


class BoundedTransport(winrm.transport.Transport):
    """pywinrm's Transport on a requests session that ignores the environment and uses BoundedAdapter.

    Messages go straight to urllib3 (``_Direct``) once nothing is left to negotiate: from the first one
    with Basic or a client certificate, after the handshake with NTLM, Kerberos or Negotiate."""

    adapter: BoundedAdapter
    proxies: dict[str, str]
    direct: _Direct | None

    def send_message(self, message: str | bytes) -> bytes:
        try:
            reply = self._send_message(message)
        except winrm.exceptions.WinRMTransportError as exc:  # pywinrm parses its text as a SOAP fault
            refuse_unsafe_xml(exc.response_text)
            raise
        refuse_unsafe_xml(reply)
        return reply

    def _send_message(self, message: str | bytes) -> bytes:
        data = message.encode("utf-8") if isinstance(message, str) else message
        session = self.build_session()  # the logon, where it comes before the first message (sealing)
        if self.direct is None:
            if not _Direct.usable(self):
                reply = super().send_message(data)
                if not logged_on(session.auth):  # CredSSP over https, or a proxy: the same rule
                    raise NotAuthenticated()
                return reply
            if self.encryption is None and not _Direct.static_auth(session):
                return self._log_on_with(data, session)  # the first message carries the logon
            self.direct = _Direct(self, session)
        try:
            return self.direct.send(data)
        except winrm.exceptions.InvalidCredentialsError:
            if self.encryption is not None or _Direct.static_auth(session):
                raise  # sealed: the context cannot move to a new connection; Basic: the credentials were refused
            # the connection was replaced (the server closed keep-alive, a proxy in between did): its 401 ran
            # nothing, and the message logs the new connection on
            forget_logon(session.auth)
            return self._log_on_with(data, session)

    def _log_on_with(self, data: bytes, session: requests.Session) -> bytes:
        """NTLM, Kerberos or Negotiate without sealing authenticate the connection: ``data`` goes through
        requests, whose auth handler answers the 401 with its handshake; later messages go direct on the
        connection it logged on."""
        self.direct = None
        reply = super().send_message(data)
        if not logged_on(session.auth):  # a 200 before any handshake: nothing more may go to this server
            raise NotAuthenticated()
        self.direct = _Direct(self, session)
        return reply

    def close_session(self) -> None:
        self.direct = None
        super().close_session()

    def build_session(self) -> requests.Session:
        if self.session is None:
            explicit = self.proxy
            # any value but None keeps pywinrm from handing requests a no_proxy to write into os.environ
            self.proxy = "legacy_requests"
            try:
                session = super().build_session()
            finally:
                self.proxy = explicit
            self.harden(session)
        assert self.session is not None
        return self.session

    def setup_encryption(self, session: requests.Session) -> None:
        self.harden(session)  # build_session sends the first request from here, before it returns
        super().setup_encryption(session)
        if not logged_on(session.auth):  # the sealing keys come from the handshake: a 200 without it has none
            raise NotAuthenticated()
        self.encryption = GuardedEncryption(session, self.auth_method)

    def harden(self, session: requests.Session) -> None:
        if session.get_adapter(self.endpoint) is self.adapter:
            return
        session.trust_env = False
        session.proxies = dict(self.proxies)
        session.mount("http://", self.adapter)
        session.mount("https://", self.adapter)


def authenticate_with(
    transport: BoundedTransport | winrm.transport.Transport,
    auth: requests.auth.AuthBase,
    *,
    before_logon: Callable[[], None],
    encrypt: bool,
) -> None:
    """Make a pywinrm Transport authenticate with ``auth`` (a requests auth handler: Negotiate or
    Kerberos) instead of its own. The session is built on the first send, as pywinrm builds its own, so
    ``before_logon`` (credentials) and the logon run under the caller's deadline and error handling;
    with ``encrypt`` (http) it then sets up pywinrm's message encryption (MS-WSMV: an empty request
    establishes the context first)."""

    def build_session() -> requests.Session:
        if transport.session is not None:
            existing: requests.Session = transport.session
            return existing
        before_logon()
        session = requests.Session()
        session.trust_env = False  # no proxy or CA variables: keyfleet passes trust explicitly
        validate = transport.server_cert_validation == "validate"
        session.verify = (transport.ca_trust_path or True) if validate else False
        session.auth = auth
        session.headers.update(transport.default_headers)
        if isinstance(transport, BoundedTransport):  # the deadline, reply cap and explicit proxies
            transport.harden(session)
        if encrypt:
            transport.setup_encryption(session)
        transport.session = session
        return session

    transport.build_session = build_session  # type: ignore[method-assign]


def authenticated(protocol: Protocol) -> bool:
    """Whether ``protocol``'s transport has logged on (pywinrm keeps the session once built)."""
    return protocol.transport.session is not None


@functools.lru_cache(maxsize=16)
def ntlm_password(password: str) -> str:
    """``password`` as the LM:NT hash pair that pyspnego (under requests_ntlm) accepts in its place
    (pass-the-hash, documented by requests_ntlm and pyspnego): the same NTLM exchange, but pyspnego's
    one-way functions (LMOWFv1 is DES in pure Python, about 1 ms) run once per password, not per host."""
    hashes = f"{lmowfv1(password).hex()}:{ntowfv1(password).hex()}"
    Secret(hashes, "NTLM hashes")  # they log on as the password does: masked wherever it would be
    return hashes


def bound(protocol: Protocol, *, proxy: str | None, thumbprint: str | None) -> SocketWatch:
    """Turn ``protocol``'s transport into a BoundedTransport (before its first request); requests made
    inside its SocketWatch's ``armed`` block are bounded in time and size."""
    transport = protocol.transport
    if type(transport) is not winrm.transport.Transport or transport.session is not None:
        raise TypeError(f"unexpected pywinrm transport {type(transport).__name__}: check the pinned pywinrm")
    transport.__class__ = BoundedTransport
    assert isinstance(transport, BoundedTransport)
    transport.adapter = BoundedAdapter(thumbprint)
    transport.direct = None
    transport.proxies = {"http": proxy, "https": proxy} if proxy else {}
    return SocketWatch(reply_cap(protocol.max_env_sz))
