"""The session against a hostile server: the host deadline holds and memory stays bounded whatever it sends."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import socket
import ssl
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from orchestrator.errors import ErrorKind, HostFailure
from orchestrator.inventory.loader import load_inventory
from orchestrator.inventory.model import HostConfig
from orchestrator.runner.pool import HostContext, Runner
from orchestrator.secret import Secret
from orchestrator.session.transport import reply_cap
from orchestrator.session.winrm import WinRMSession
from orchestrator.status import Status
from tests.conftest import make_lab_inventory
from tests.hostile import HostileServer

pytestmark = pytest.mark.lab

PASSWORD = Secret("Lab-Test-Pw-1")
HOST_SECONDS = 3.0
SLACK = 2.0  # the bound: kind timeout within host_timeout + 2 s
FLEET = {
    "H": {
        "ntlm-http": {"role": "management_server"},
        "basic-https": {"role": "management_server", "scheme": "https", "transport": "basic", "cert_validation": False},
        "ntlm-https": {"role": "management_server", "scheme": "https", "transport": "ntlm", "cert_validation": False},
        "negotiate-http": {"role": "management_server", "transport": "negotiate"},
        "negotiate-https": {
            "role": "management_server",
            "scheme": "https",
            "transport": "negotiate",
            "cert_validation": False,
        },
    }
}


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, HostConfig]:
    files = make_lab_inventory(tmp_path_factory.mktemp("hostile"), fleet=FLEET)
    inv = load_inventory(files.inventory)
    # socket read timeouts longer than the host deadline: only the deadline can end a dripping reply
    return {
        name: dataclasses.replace(h, operation_timeout=10, connect_timeout=10, host_timeout=HOST_SECONDS)
        for name, h in inv.hosts.items()
    }


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile-tls")


# "logged-on": the behaviour starts after a good Create, so it meets the messages sent once logged on
# (straight to urllib3, not through requests' Session: session/transport.py's _Direct)
NAMES = ["ntlm-http", "basic-https", "logged-on"]


def serve(behaviour: str, name: str, tls_dir: Path) -> HostileServer:
    if name == "logged-on":
        return HostileServer(behaviour, tls_dir, after=1)
    return HostileServer(behaviour, tls_dir if name == "basic-https" else None)


def target(hosts: dict[str, HostConfig], name: str) -> HostConfig:
    return hosts["basic-https" if name == "logged-on" else name]


def attack(host: HostConfig, server: HostileServer) -> tuple[HostFailure, float, int]:
    """Run a command against ``server``; the failure, the seconds it took and the peak Python memory."""
    target = dataclasses.replace(host, address="127.0.0.1", port=server.port)
    tracemalloc.start()
    started = time.monotonic()
    try:
        with WinRMSession(target, PASSWORD) as session, pytest.raises(HostFailure) as raised:
            session.run("hostname", b"", deadline=started + host.host_timeout)
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "Lab-Test-Pw-1" not in str(raised.value)
    return raised.value, elapsed, peak


@pytest.mark.parametrize("behaviour", ["drip-headers", "drip-body", "silent"])
@pytest.mark.parametrize("name", NAMES)
def test_a_slow_reply_ends_at_the_host_deadline(hosts, tls_dir, behaviour, name):
    with serve(behaviour, name, tls_dir) as server:
        failure, elapsed, _ = attack(target(hosts, name), server)
    assert failure.kind is ErrorKind.TIMEOUT, failure
    assert elapsed <= HOST_SECONDS + SLACK
    assert elapsed >= HOST_SECONDS - 1.5  # it was the deadline that ended it, not an early error


def test_a_dripped_tls_handshake_ends_at_the_host_deadline(hosts):
    with HostileServer("tls-stall") as server:
        failure, elapsed, _ = attack(hosts["basic-https"], server)
    assert failure.kind is ErrorKind.TIMEOUT, failure
    assert HOST_SECONDS - 1.5 <= elapsed <= HOST_SECONDS + SLACK


@pytest.mark.parametrize("behaviour", ["flood", "endless-chunks", "until-close", "huge-headers"])
@pytest.mark.parametrize("name", NAMES)
def test_a_huge_reply_is_refused_while_read(hosts, tls_dir, behaviour, name):
    with serve(behaviour, name, tls_dir) as server:
        failure, elapsed, peak = attack(target(hosts, name), server)
    assert failure.kind is ErrorKind.PROTOCOL, failure
    if name == "logged-on":
        # the bare connect, the session's, and a new one for the shell's Delete: what is left of a refused
        # reply on its connection is never read as the Delete's reply
        assert server.connections == 3, server.connections
    if behaviour != "huge-headers":  # http.client refuses more than 100 header lines first
        assert f"reply larger than {reply_cap(153600)} bytes" in failure.reason
    assert peak < 4 * 1024 * 1024, f"{peak} bytes of Python memory for one hostile host"
    assert elapsed < HOST_SECONDS + SLACK


def test_a_reply_refused_while_read_never_goes_back_to_the_pool(hosts, tls_dir):
    """What is left of a reply refused mid-read (too large) must never be read as a later reply. Here the
    server sends one byte more than the cap and then nothing, so no byte waits on the socket when the next
    request wants a connection: urllib3 would take it for a good idle one (it drops only one with bytes
    waiting) and the Delete would wait for a reply that never comes. The refused connection is closed
    instead (urllib3 closes a connection whose read failed, and _Direct._read does too), and the Delete
    logs on a new one (whose first reply is good)."""
    with HostileServer("overflow-stall", tls_dir, after=1, overflow=reply_cap(153600) + 1) as server:
        failure, _, _ = attack(target(hosts, "logged-on"), server)
    assert failure.kind is ErrorKind.PROTOCOL and "reply larger than" in failure.reason, failure
    assert server.connections == 3, server.connections  # the bare connect, the session's, the Delete's


@pytest.mark.parametrize("name", NAMES)
def test_garbage_is_a_protocol_failure(hosts, tls_dir, name):
    with serve("garbage", name, tls_dir) as server:
        failure, _, _ = attack(target(hosts, name), server)
    assert failure.kind in (ErrorKind.PROTOCOL, ErrorKind.TLS), failure


def test_nonsense_soap_is_never_an_internal_failure(hosts, tls_dir):
    """Well-formed SOAP without WS-Man meaning: the command never reports Done, so the deadline ends it."""
    with serve("soap-nonsense", "basic-https", tls_dir) as server:
        failure, elapsed, _ = attack(hosts["basic-https"], server)
    assert failure.kind in (ErrorKind.PROTOCOL, ErrorKind.TIMEOUT), failure
    assert elapsed <= HOST_SECONDS + SLACK


@pytest.mark.parametrize("behaviour", ["deep-xml", "deep-fault"])
@pytest.mark.parametrize("name", ["basic-https", "logged-on"])  # NTLM: a 200 before a logon is refused first
def test_a_reply_of_too_many_elements_is_refused_before_a_tree_is_built(hosts, tls_dir, behaviour, name):
    """120 KB of nested <a>, well within the size cap, would be a 40,000-element tree (about 11 MB):
    refused on its tag count instead, in a 200 or in a fault."""
    with serve(behaviour, name, tls_dir) as server:
        failure, _, peak = attack(target(hosts, name), server)
    assert failure.kind is ErrorKind.PROTOCOL, failure
    assert "more than 16384 XML tags" in failure.reason
    assert peak < 4 * 1024 * 1024, f"{peak} bytes of Python memory for one hostile host"


@pytest.mark.parametrize("name", ["basic-https", "logged-on"])
def test_a_reply_declaring_a_document_type_is_refused_before_it_is_parsed(hosts, tls_dir, name):
    """SOAP forbids a DTD; its entities would turn a few hundred tags into millions of elements."""
    with serve("entity-xml", name, tls_dir) as server:
        failure, _, peak = attack(target(hosts, name), server)
    assert failure.kind is ErrorKind.PROTOCOL, failure
    assert "declares a document type" in failure.reason
    assert peak < 4 * 1024 * 1024, f"{peak} bytes of Python memory for one hostile host"


def test_a_server_s_fault_text_is_one_bounded_line(hosts, tls_dir):
    """The fault text reaches the console, --json and the run record: no line break, terminal control
    or bidirectional override survives, and it is cut, whatever the server sends (200 KB here)."""
    with serve("forged-fault", "logged-on", tls_dir) as server:
        failure, _, _ = attack(target(hosts, "logged-on"), server)
    reason = failure.reason
    assert reason.startswith("Command: WS-Man fault (HTTP 500): Access is fine. prod-ms01 ok 0.1s"), reason
    assert reason.isprintable() and len(reason) <= 400 and reason.endswith("..."), reason
    assert str(failure).isprintable()


def test_a_server_that_does_not_authenticate_is_an_auth_failure(hosts):
    with HostileServer("no-challenge") as server:
        failure, _, _ = attack(hosts["ntlm-http"], server)
    assert failure.kind is ErrorKind.AUTH, failure
    assert "the server did not authenticate" in failure.reason


@pytest.mark.parametrize("name", ["ntlm-http", "ntlm-https", "negotiate-http", "negotiate-https"])
def test_a_server_that_never_asks_for_a_logon_gets_nothing_more(hosts, tls_dir, name):
    """A server that answers 200 at once (a good Create reply, no 401, no challenge) authenticated nothing,
    itself least of all: kind auth after its first reply, and no other message (the Send carries the
    backup password) goes to it. Over https the first message, Create, goes out before any logon, as
    requests_ntlm sends it; it holds nothing secret."""
    https = name.endswith("https")
    with HostileServer("harvest", tls_dir if https else None) as server:
        failure, _, _ = attack(hosts[name], server)
    assert failure.kind is ErrorKind.AUTH, failure
    assert "the server did not authenticate" in failure.reason
    assert server.requests == 1, server.requests


def _certificate_of_unknown_signature(folder: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA certificate whose signature algorithm reads 1.2.840.10045.4.3.9, an OID
    cryptography does not know (ecdsa-with-SHA256, 4.3.2, with its last arc changed): OpenSSL serves it,
    and RFC 5929 leaves its channel bindings undefined."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hostile")])
    now = datetime.datetime.now(datetime.UTC)
    builder = x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
    builder = builder.serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
    der = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    sha256_oid = bytes.fromhex("06082a8648ce3d040302")
    assert der.count(sha256_oid) == 2  # the signature algorithm inside the signed part and outside it
    cert_path, key_path = folder / "odd.pem", folder / "odd.key"
    cert_path.write_bytes(ssl.DER_cert_to_PEM_cert(der.replace(sha256_oid, sha256_oid[:-1] + b"\x09")).encode())
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_a_certificate_of_unknown_signature_logs_on_without_channel_bindings(hosts, tmp_path):
    """Negotiate over https binds the logon to the server's certificate, hashed with the hash of its
    signature (RFC 5929 4.1). For an algorithm that names none keyfleet does as requests_ntlm does for NTLM:
    no bindings (here the server then gives no challenge: kind auth, never internal)."""
    with HostileServer("no-ntlm-challenge", tmp_path, cert=_certificate_of_unknown_signature(tmp_path)) as server:
        failure, _, _ = attack(hosts["negotiate-https"], server)
    assert failure.kind is ErrorKind.AUTH, failure
    assert server.requests >= 2  # the Negotiate token went out: the logon went on without bindings


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [("basic-only", "credentials rejected"), ("no-ntlm-challenge", "NTLM logon refused")],
)
def test_a_server_that_offers_no_ntlm_logon_is_an_auth_failure(hosts, behaviour, reason):
    with HostileServer(behaviour) as server:
        failure, _, _ = attack(hosts["ntlm-http"], server)
    assert failure.kind is ErrorKind.AUTH, failure
    assert reason in failure.reason


def test_the_worker_is_freed_and_the_connection_closed(hosts):
    """One worker: a dripping host times out, its socket is closed, and the next host still runs."""
    with HostileServer("drip-body") as first, HostileServer("drip-headers") as second:
        targets = [
            dataclasses.replace(hosts["ntlm-http"], name=f"h{i}", address="127.0.0.1", port=server.port, retries=0)
            for i, server in enumerate((first, second))
        ]
        open_before = threading.active_count()

        def task(ctx: HostContext) -> None:
            with WinRMSession(ctx.host, PASSWORD) as session:
                session.run("hostname", b"", deadline=ctx.deadline, cancel=ctx.cancel)

        started = time.monotonic()
        summary = Runner(task, forks=1).run(targets)
        elapsed = time.monotonic() - started
        sent_after_first = first.sent
        time.sleep(1.0)
        assert first.sent - sent_after_first <= 5  # a closed socket: the server can no longer drip into it
    assert [r.status for r in summary.results] == [Status.FAILED, Status.FAILED]
    assert [r.kind for r in summary.results] == [ErrorKind.TIMEOUT, ErrorKind.TIMEOUT]
    assert elapsed <= 2 * (HOST_SECONDS + SLACK)
    assert threading.active_count() <= open_before + 3  # the watchdog and the two servers' threads at most


def test_no_transport_leaves_the_proxy_environment_touched(hosts, monkeypatch):
    """pywinrm's proxy=None path would write os.environ['no_proxy'] around every request."""
    writes: list[str] = []
    original = os.environ.__class__.__setitem__

    def setitem(self, key, value):
        writes.append(key)
        original(self, key, value)

    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # a proxy that would fail every request
    monkeypatch.setattr(os.environ.__class__, "__setitem__", setitem)
    with HostileServer("no-challenge") as server:
        failure, _, _ = attack(hosts["ntlm-http"], server)
    assert failure.kind is ErrorKind.AUTH  # reached the server directly, not through the proxy
    assert writes == []


def test_the_proxy_setting_is_used(tmp_path: Path):
    fleet = {"P": {"p1": {"role": "management_server", "proxy": "http://127.0.0.1:9"}}}
    inv = load_inventory(make_lab_inventory(tmp_path, fleet=fleet).inventory)
    host = inv.hosts["p1"]
    assert host.proxy == "http://127.0.0.1:9"
    with WinRMSession(host, PASSWORD) as session, pytest.raises(HostFailure) as raised:
        session.run("hostname", b"", deadline=time.monotonic() + 5)
    assert raised.value.kind is ErrorKind.UNREACHABLE  # the proxy port is closed


def test_the_proxy_is_what_the_session_connects_to(tmp_path: Path):
    """The server is not served at all: only a proxy that takes the connection and closes it."""
    proxy = socket.create_server(("127.0.0.1", 0))
    proxy.settimeout(5)
    accepted: list[bytes] = []

    def take() -> None:
        with contextlib.suppress(OSError):
            conn, _ = proxy.accept()
            with conn:
                conn.settimeout(5)
                accepted.append(conn.recv(4096))

    taker = threading.Thread(target=take, daemon=True)
    taker.start()
    url = f"http://127.0.0.1:{proxy.getsockname()[1]}"
    fleet = {"P": {"p1": {"role": "management_server", "proxy": url}}}
    host = load_inventory(make_lab_inventory(tmp_path, fleet=fleet).inventory).hosts["p1"]
    with proxy, WinRMSession(host, PASSWORD) as session, pytest.raises(HostFailure):
        session.run("hostname", b"", deadline=time.monotonic() + 5)
    taker.join(5)
    assert accepted and accepted[0].startswith(b"POST http://"), accepted  # a proxy request, to the server
