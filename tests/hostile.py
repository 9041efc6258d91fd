"""A deliberately hostile HTTP server on a raw socket: it drips, floods, chunks forever or talks garbage."""

from __future__ import annotations

import itertools
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from orchestrator.lab.pki import LabPKI

DRIP = 0.2  # seconds between two dripped bytes: well under any socket read timeout

# One behaviour per name: what the server sends once it has read a request's headers.
BEHAVIOURS = (
    "drip-headers",  # the status line and headers, one byte at a time, forever
    "drip-body",  # headers at once (a huge Content-Length), then the body one byte at a time
    "flood",  # a Content-Length of 1 GiB, sent as fast as the socket takes it
    "endless-chunks",  # chunked, one 64 KiB chunk after another, never the last chunk
    "until-close",  # no length, no chunks: bytes until the connection closes (never)
    "huge-headers",  # an endless header section of short lines
    "silent",  # reads the request, never answers, never closes
    "garbage",  # bytes that are not HTTP, then closes
    "no-challenge",  # 200 with an empty body to everything: no NTLM challenge
    "soap-nonsense",  # 200 with well-formed SOAP that is no WS-Man reply (an empty ShellId, no streams)
    "tls-stall",  # accepts TCP, then drips a TLS handshake that never completes
    "basic-only",  # 401 offering only Basic to everything: no NTLM to log on with
    "no-ntlm-challenge",  # 401 offering Negotiate, then no challenge token after NTLM NEGOTIATE
    "overflow-stall",  # a reply of exactly ``overflow`` bytes (a larger Content-Length), then silence, open
    "harvest",  # 200 with a good Create reply to every request: never asks the client to authenticate
    "deep-xml",  # 200 with 120 KB of nested <a>: within the size cap, 40,000 elements
    "deep-fault",  # the same as a 500 (pywinrm parses a 500's body as a SOAP fault)
    "entity-xml",  # 200 with a DTD whose entities expand 20 KB of text into 2.5 million elements
    "forged-fault",  # a WS-Man fault whose text forges console lines: line breaks, C1 controls, bidi, 200 KB
)

_FORGED = (
    "Access is fine.\n  prod-ms01        ok      0.1s\u2028\u0085\u009b31m\u202eevil\t" + "padding " * 25000
).encode()
_FAULT = (
    b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><s:Fault>'
    b"<s:Code><s:Value>s:Receiver</s:Value></s:Code><s:Reason><s:Text>%s</s:Text></s:Reason>"
    b'<s:Detail><f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" Code="5">'
    b"</f:WSManFault></s:Detail></s:Fault></s:Body></s:Envelope>" % _FORGED
)


_SHELL = (
    b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body>'
    b'<x:ResourceCreated xmlns:x="http://schemas.xmlsoap.org/ws/2004/09/transfer">'
    b'<w:Selector xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" Name="ShellId">'
    b"0B4C1A2E-6F2B-4C43-9D0B-2E5A8F1D7C11</w:Selector></x:ResourceCreated></s:Body></s:Envelope>"
)
_CREATED = b"HTTP/1.1 200 OK\r\nContent-Type: application/soap+xml;charset=UTF-8\r\nContent-Length: %d\r\n\r\n%s" % (
    len(_SHELL),
    _SHELL,
)


class HostileServer:
    """Serves one behaviour on 127.0.0.1 (a free port) to every connection, each in its own thread.

    With ``tls_dir``, speaks it over TLS (a lab certificate kept there), except ``tls-stall``.
    """

    def __init__(
        self,
        behaviour: str,
        tls_dir: Path | None = None,
        *,
        after: int = 0,
        overflow: int = 0,
        cert: tuple[Path, Path] | None = None,  # its own certificate and key, instead of a lab one
    ) -> None:
        if behaviour not in BEHAVIOURS:
            raise ValueError(behaviour)
        self.behaviour = behaviour
        self._overflow = overflow
        # the first ``after`` requests on a connection get a well-formed Create reply (a ShellId): with
        # Basic over https the session is then logged on, and the behaviour meets what it sends next
        self._after = after
        self._tls: ssl.SSLContext | None = None
        if tls_dir is not None and behaviour != "tls-stall":
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            if cert is None:
                lab = LabPKI(tls_dir).host_certificate("hostile", "127.0.0.1")
                cert = (lab.cert_path, lab.key_path)
            else:
                self._tls.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL would refuse an odd certificate's digest
            self._tls.load_cert_chain(*cert)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self.connections = 0
        self.requests = 0  # read over all connections
        self.sent = 0  # bytes sent over all connections

    def __enter__(self) -> HostileServer:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True)
            with conn:
                if self.behaviour == "tls-stall":
                    # a handshake record header announcing 16 KiB, then its bytes one by one
                    self._drip(conn, itertools.chain(b"\x16\x03\x03\x40\x00", itertools.repeat(0)))
                    return
                answered = 0
                while self._read_request(conn):
                    answered += 1
                    self.requests += 1
                    if answered <= self._after or self.behaviour == "harvest":
                        self._send(conn, _CREATED)
                        continue
                    if not self._answer(conn):
                        return
        except OSError:
            return  # the client gave up: exactly what the tests wait for

    def _read_request(self, conn: socket.socket) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            body += chunk
        return True

    def _answer(self, conn: socket.socket) -> bool:
        """Answer one request; False when the connection is done."""
        b = self.behaviour
        if b == "drip-headers":
            self._drip(conn, itertools.chain(b"HTTP/1.1 200 OK\r\n", itertools.cycle(b"X-Slow: drip\r\n")))
        elif b == "drip-body":
            self._send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
            self._drip(conn, itertools.repeat(ord("<")))
        elif b == "flood":
            self._send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n")
            self._flood(conn, lambda block: block)
        elif b == "endless-chunks":
            self._send(conn, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            self._flood(conn, lambda block: b"%x\r\n%s\r\n" % (len(block), block))
        elif b == "until-close":
            self._send(conn, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            self._flood(conn, lambda block: block)
        elif b == "huge-headers":
            self._send(conn, b"HTTP/1.1 200 OK\r\n")
            self._flood(conn, lambda block: b"X-Filler: " + b"b" * 60 + b"\r\n")
        elif b == "silent":
            self._stop.wait(60)
        elif b == "overflow-stall":
            head = b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n"
            self._send(conn, head + b"x" * (self._overflow - len(head)))
            self._stop.wait(60)
        elif b == "garbage":
            self._send(conn, b"\x00\xff garbage, not HTTP \x13\x37" * 50)
            return False
        elif b == "soap-nonsense":
            body = (
                b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body>'
                b'<x Name="ShellId"/><CommandId/><ExitCode>x</ExitCode></s:Body></s:Envelope>'
            )
            self._send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            return True
        elif b in ("basic-only", "no-ntlm-challenge"):
            offer = b'Basic realm="WSMAN"' if b == "basic-only" else b"Negotiate"
            self._send(conn, b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: %s\r\nContent-Length: 0\r\n\r\n" % offer)
            return True
        elif b == "entity-xml":
            dtd = b'<!DOCTYPE r [<!ENTITY e "' + b"<a/>" * 64 + b'"><!ENTITY f "' + b"&e;" * 64 + b'">]>'
            body = dtd + b"<r>" + b"&f;" * 600 + b"</r>"
            self._send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            return True
        elif b in ("deep-xml", "deep-fault"):
            body = b"<a>" * 40000
            status = b"200 OK" if b == "deep-xml" else b"500 Internal Server Error"
            self._send(conn, b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body))
            return True
        elif b == "forged-fault":
            head = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n\r\n" % len(_FAULT)
            self._send(conn, head + _FAULT)
            return True
        elif b == "no-challenge":
            self._send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/soap+xml\r\nContent-Length: 0\r\n\r\n")
            return True
        return False

    def _send(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)
        self.sent += len(data)

    def _drip(self, conn: socket.socket, source: Iterator[int]) -> None:
        for byte in source:
            if self._stop.is_set():
                return
            self._send(conn, bytes([byte]))
            time.sleep(DRIP)

    def _flood(self, conn: socket.socket, frame: Callable[[bytes], bytes]) -> None:
        block = b"x" * 65536
        while not self._stop.is_set():
            self._send(conn, frame(block))
