"""The adapter over requests', urllib3's and pywinrm's internals: fails loudly when an upgrade changes them."""

from __future__ import annotations

import ast
import http.client
import inspect
import pathlib
import socket
import ssl
import time
from pathlib import Path

import certifi
import requests
import requests.adapters
import urllib3.connection
import winrm
import winrm.encryption
import winrm.transport
from spnego._ntlm_raw.crypto import is_ntlm_hash

import orchestrator
from orchestrator.secret import mask
from orchestrator.session import transport


def protocol() -> winrm.Protocol:
    """Basic over https: building its session sends nothing (NTLM over http would set up sealing)."""
    return winrm.Protocol(
        endpoint="https://127.0.0.1:9/wsman",
        transport="basic",
        username="u",
        password="p",
        server_cert_validation="ignore",
        proxy=None,
    )


def test_the_internals_the_adapter_relies_on_are_there():
    assert "_new_conn" in vars(urllib3.connection.HTTPConnection)  # where sockets are made
    assert urllib3.connection.HTTPConnection.response_class is http.client.HTTPResponse
    assert set(urllib3.PoolManager().pool_classes_by_scheme) == {"http", "https"}
    for name in ("build_session", "setup_encryption", "_send_message_request"):
        assert name in vars(winrm.transport.Transport)
    assert "proxy" in inspect.signature(winrm.transport.Transport).parameters
    assert hasattr(requests.Session(), "trust_env")
    # what _Direct sends logged-on messages with: requests' pool choice and retry policy, pywinrm's sealing
    adapter = requests.adapters.HTTPAdapter()
    assert callable(adapter.get_connection_with_tls_context) and adapter.max_retries.total == 0
    for name in ("_encrypt_message", "parse_encrypted_response", "MIME_BOUNDARY"):
        assert hasattr(winrm.encryption.Encryption, name), f"pywinrm's Encryption has no {name!r} any more"
    assert "read_timeout_sec" in vars(protocol().transport)
    # what authenticate_with (Negotiate and Kerberos) reads and sets on pywinrm's Transport
    for name in ("session", "server_cert_validation", "ca_trust_path", "default_headers", "endpoint"):
        assert hasattr(protocol().transport, name), f"pywinrm's Transport has no {name!r} any more"


# the libraries whose internals only the adapters may touch, and the pywinrm attributes they use
_LIBRARIES = ("winrm", "spnego", "requests", "urllib3", "requests_ntlm", "smbclient", "smbprotocol")
_PYWINRM_INTERNALS = {"build_session", "setup_encryption", "server_cert_validation", "ca_trust_path", "default_headers"}
_ADAPTERS = {Path("session/transport.py"), Path("share/smbadapter.py")}


def test_only_the_adapters_touch_library_internals():
    package = Path(orchestrator.__file__).parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if relative in _ADAPTERS or relative.parts[0] == "lab":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            modules = []
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            for module in modules:
                parts = module.split(".")
                if parts[0] in _LIBRARIES and any(part.startswith("_") for part in parts[1:]):
                    offenders.append(f"{relative}:{node.lineno}: imports {module}")
            if isinstance(node, ast.Attribute) and node.attr in _PYWINRM_INTERNALS:
                offenders.append(f"{relative}:{node.lineno}: uses pywinrm's {node.attr}")
    assert not offenders, "library internals belong in the adapters:\n" + "\n".join(offenders)


def test_bound_turns_the_transport_into_a_bounded_one_before_any_request():
    proto = protocol()
    watch = transport.bound(proto, proxy=None, thumbprint=None)
    assert isinstance(proto.transport, transport.BoundedTransport)
    assert watch.max_reply == transport.reply_cap(proto.max_env_sz) >= 512 * 1024
    session = proto.transport.build_session()
    assert session.trust_env is False and session.proxies == {}
    adapter = session.get_adapter("https://127.0.0.1:9/wsman")
    assert isinstance(adapter, transport.BoundedAdapter)
    connection = adapter.poolmanager.pool_classes_by_scheme["https"].ConnectionCls
    assert connection.response_class.__name__ == "_CappedResponse"


def test_an_explicit_proxy_is_the_only_proxy():
    proto = protocol()
    transport.bound(proto, proxy="http://proxy.example:3128", thumbprint=None)
    session = proto.transport.build_session()
    assert session.proxies == {"http": "http://proxy.example:3128", "https": "http://proxy.example:3128"}


def test_the_watchdog_shuts_a_blocked_socket_at_the_deadline():
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    watch = transport.SocketWatch(1024)
    started = time.monotonic()
    with watch.armed(started + 0.5):
        watch.track(client)
        assert client.recv(1) == b""  # blocked until the watchdog shut the connection down
    assert watch.expired
    assert 0.4 < time.monotonic() - started < 2.0
    watch.close()
    client.close()
    listener.close()


def https_connection(**kwargs) -> urllib3.connection.HTTPSConnection:
    pool = transport._POOLS["https"]("127.0.0.1", 9)
    return pool.ConnectionCls("127.0.0.1", 9, **kwargs)


def test_connections_that_trust_one_ca_bundle_share_one_tls_context():
    bundle = certifi.where()  # some 150 certificates: loading them per connection costs about 15 ms
    first = transport._shared_context(https_connection(cert_reqs="CERT_REQUIRED", ca_certs=bundle))
    second = transport._shared_context(https_connection(cert_reqs="CERT_REQUIRED", ca_certs=bundle))
    assert first is second is not None
    assert first.verify_mode == ssl.CERT_REQUIRED and first.check_hostname  # verified as urllib3 would
    assert first.minimum_version == ssl.TLSVersion.TLSv1_2
    assert first.cert_store_stats()["x509_ca"] > 100


def test_a_connection_that_needs_its_own_tls_settings_gets_no_shared_context(tmp_path):
    client_cert = https_connection(cert_reqs="CERT_REQUIRED", ca_certs=certifi.where(), cert_file="c.pem")
    assert transport._shared_context(client_cert) is None  # urllib3 loads the client's certificate into it
    missing = https_connection(cert_reqs="CERT_REQUIRED", ca_certs=str(tmp_path / "none"))
    assert transport._shared_context(missing) is None  # urllib3 reports it as before
    unverified = transport._shared_context(https_connection(cert_reqs="CERT_NONE"))
    assert unverified is not None and unverified.verify_mode == ssl.CERT_NONE
    assert unverified.cert_store_stats()["x509_ca"] == 0  # a context that checks nothing loads no CA store


def test_a_changed_ca_bundle_gets_a_new_context(tmp_path):
    bundle = tmp_path / "ca.pem"
    pems = pathlib.Path(certifi.where()).read_text().split("-----END CERTIFICATE-----\n")
    bundle.write_text(pems[0] + "-----END CERTIFICATE-----\n")
    before = transport._shared_context(https_connection(cert_reqs="CERT_REQUIRED", ca_certs=str(bundle)))
    bundle.write_text("-----END CERTIFICATE-----\n".join(pems[:2]) + "-----END CERTIFICATE-----\n")
    after = transport._shared_context(https_connection(cert_reqs="CERT_REQUIRED", ca_certs=str(bundle)))
    assert before is not after
    assert (before.cert_store_stats()["x509_ca"], after.cert_store_stats()["x509_ca"]) == (1, 2)


def test_ntlm_passwords_become_the_hashes_pyspnego_accepts_in_their_place():
    # MS-NLMP 4.2.2.1.1 and 4.2.2.1.2: LMOWFv1 and NTOWFv1 of "Password"
    assert transport.ntlm_password("Password") == "e52cac67419a9a224a3b108f3fa6cb6d:a4f49c406510bdcab6824ee7c30fd852"
    assert is_ntlm_hash(transport.ntlm_password("Password"))
    # the hashes log on as the password does: masked like any secret
    assert mask(f"auth {transport.ntlm_password('Password')} failed") == "auth ******** failed"


def test_logged_on_reads_each_handler_s_own_state() -> None:
    """The rule behind "a server that never asks for a logon gets nothing more", per auth handler: what
    each keeps once its handshake ran, and what forget_logon drops before a new connection logs on.
    requests_credssp is not installed here (the lab has no CredSSP): its shape, a ``contexts`` dict per
    host that pywinrm's Encryption reads, stands in for it."""
    from requests_ntlm import HttpNtlmAuth

    from orchestrator.session.kerberos import NegotiateAuth

    assert transport.logged_on(None) and transport.logged_on(requests.auth.HTTPBasicAuth("u", "p"))
    ntlm = HttpNtlmAuth("u", "p")
    assert not transport.logged_on(ntlm)
    ntlm.session_security = object()  # what requests_ntlm keeps from the server's challenge
    assert transport.logged_on(ntlm)
    transport.forget_logon(ntlm)
    assert not transport.logged_on(ntlm)
    negotiate = NegotiateAuth("negotiate", None, "host.example")
    assert not transport.logged_on(negotiate)

    class Context:
        complete = True
        negotiated_protocol = "kerberos"

    negotiate._context = Context()
    assert transport.logged_on(negotiate)
    transport.forget_logon(negotiate)
    assert not transport.logged_on(negotiate)

    class CredSSPShape:
        def __init__(self) -> None:
            self.contexts: dict[str, object] = {}

    credssp = CredSSPShape()
    assert not transport.logged_on(credssp)
    credssp.contexts["host.example"] = object()
    assert transport.logged_on(credssp)
