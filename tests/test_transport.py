"""The adapter over requests', urllib3's and pywinrm's internals: fails loudly when an upgrade changes them."""

from __future__ import annotations

import http.client
import inspect
import socket
import time

import requests
import urllib3.connection
import winrm
import winrm.transport

from orchestrator import transport


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
