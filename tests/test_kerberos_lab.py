"""The lab's Kerberos and SPNEGO acceptor against outside clients and raw tokens: pypsrp's WinRS client
(Negotiate with NTLM and with Kerberos), pywinrm's own Kerberos transport (pykerberos, messages sealed),
the Kerberos scheme, mutual authentication, channel binding over HTTPS and per-host keys."""

from __future__ import annotations

import base64
import os
import struct

import pytest
import requests
import spnego
import urllib3
from spnego.channel_bindings import GssChannelBindings

from tests.krb import WINRM_PASSWORD, kerberos_lab, kinit, require, served

pytestmark = pytest.mark.lab

FLEET = {
    "KRB": {
        "k-ms01": {"role": "management_server"},
        "k-dw01": {"role": "dw_management_server", "scheme": "https", "ca_bundle": "lab"},
        "k-portal01": {"role": "self_service_portal", "lab": {"faults": ["no-spn"]}},
    }
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    require()
    lab = kerberos_lab(tmp_path_factory.mktemp("krb-lab") / "lab", FLEET)
    with served(lab) as fleet:
        yield fleet


def last_auth(fleet, host: str) -> str | None:
    return next(e.auth for e in reversed(fleet.journal.entries(host)) if e.auth)


@pytest.mark.parametrize(
    ("username", "host", "mechanism"),
    [
        ("keyfleet@LAB.TEST", "k-ms01", "kerberos"),  # pyspnego gets a ticket with the password
        ("LAB\\keyfleet", "k-portal01", "ntlm"),  # no SPN for this server: SPNEGO falls back to NTLM
    ],
)
def test_pypsrp_winrs_with_negotiate(fleet, username, host, mechanism):
    from pypsrp.shell import Process, WinRS
    from pypsrp.wsman import WSMan

    spec = fleet.spec(host)
    wsman = WSMan(
        spec.address,
        port=spec.port,
        ssl=False,
        auth="negotiate",
        username=username,
        password=WINRM_PASSWORD,
        encryption="always",
        negotiate_hostname_override=f"{host}.lab.test",  # pypsrp asks for host/<name>, as against Windows
        operation_timeout=10,
        connection_timeout=10,
    )
    with wsman, WinRS(wsman) as shell:
        process = Process(shell, "hostname")
        process.invoke()
    assert process.rc == 0
    assert process.stdout.strip() == host.encode()
    assert last_auth(fleet, host) == mechanism


def test_pywinrm_kerberos_transport_with_sealed_messages(fleet, tmp_path, monkeypatch):
    import winrm

    ccache = tmp_path / "ccache"
    kinit(fleet, "keyfleet@LAB.TEST", WINRM_PASSWORD, ccache)
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{ccache}")
    spec = fleet.spec("k-ms01")
    protocol = winrm.Protocol(
        spec.endpoint,
        transport="kerberos",
        kerberos_hostname_override="k-ms01.lab.test",
        message_encryption="always",  # HTTP: the lab refuses unsealed SOAP as Windows does
        server_cert_validation="ignore",
        proxy=None,
    )
    shell = protocol.open_shell()
    command = protocol.run_command(shell, "hostname")
    out, _err, code = protocol.get_command_output(shell, command)
    protocol.cleanup_command(shell, command)
    protocol.close_shell(shell)
    assert (out, code) == (b"k-ms01\r\n", 0)
    assert last_auth(fleet, "k-ms01") == "kerberos"


def _kerberos_token(host: str, cbt: GssChannelBindings | None = None) -> tuple[object, bytes]:
    ctx = spnego.client(
        "keyfleet@LAB.TEST",
        WINRM_PASSWORD,
        hostname=f"{host}.lab.test",
        service="HTTP",
        protocol="kerberos",
        channel_bindings=cbt,
    )
    return ctx, ctx.step() or b""


def _post(fleet, host: str, scheme: str, token: bytes) -> requests.Response:
    with urllib3.warnings.catch_warnings():
        urllib3.disable_warnings()
        return requests.post(
            fleet.spec(host).endpoint,
            headers={"Authorization": f"{scheme} {base64.b64encode(token).decode()}"},
            data=b"",
            verify=False,
            timeout=10,
        )


def test_kerberos_scheme_and_mutual_authentication(fleet):
    ctx, token = _kerberos_token("k-ms01")
    reply = _post(fleet, "k-ms01", "Kerberos", token)
    assert reply.status_code == 200
    scheme, _, proof = reply.headers["WWW-Authenticate"].partition(" ")
    assert scheme == "Kerberos"
    ctx.step(base64.b64decode(proof))  # the AP-REP: the server proved it holds HTTP/k-ms01's key
    assert ctx.complete


def test_unauthenticated_request_is_offered_negotiate_and_kerberos(fleet):
    reply = requests.post(fleet.spec("k-ms01").endpoint, data=b"", timeout=10)
    assert reply.status_code == 401
    assert reply.headers["WWW-Authenticate"] == "Negotiate, Kerberos"


def test_each_host_accepts_only_tickets_for_its_own_principal(fleet):
    # a ticket for HTTP/k-ms01 presented to k-dw01's listener: its keytab cannot decrypt it
    _ctx, token = _kerberos_token("k-ms01")
    assert _post(fleet, "k-dw01", "Negotiate", token).status_code == 401


def test_https_channel_binding_must_match_the_certificate(fleet):
    wrong = GssChannelBindings(application_data=b"tls-server-end-point:" + b"\0" * 32)
    _ctx, token = _kerberos_token("k-dw01", wrong)
    assert _post(fleet, "k-dw01", "Negotiate", token).status_code == 401
    entry = fleet.journal.entries("k-dw01")[-1]
    assert entry.status == 401 and "rejected" in (entry.detail or "")


def test_lab_krb5_conf_has_no_dns(fleet):
    conf = fleet.kdc.krb5_conf_path.read_text()
    for line in ("dns_lookup_kdc = false", "dns_lookup_realm = false", "rdns = false"):
        assert line in conf
    assert "127.0.0.1:" in conf
    assert os.environ["KRB5_CONFIG"] == str(fleet.kdc.krb5_conf_path)


def _sealed(ctx, message: bytes) -> bytes:
    """An MS-WSMV multipart body with the Kerberos protocol (as the Kerberos scheme asks for), built here."""
    wrapped = ctx.wrap_winrm(message)
    boundary = b"--Encrypted Boundary"
    return (
        boundary + b"\r\n\tContent-Type: application/HTTP-Kerberos-session-encrypted\r\n"
        b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length="
        + str(len(message)).encode()
        + b"\r\n"
        + boundary
        + b"\r\n\tContent-Type: application/octet-stream\r\n"
        + struct.pack("<I", len(wrapped.header))
        + wrapped.header
        + wrapped.data
        + boundary
        + b"--\r\n"
    )


def test_kerberos_scheme_message_encryption_both_ways(fleet):
    ctx, token = _kerberos_token("k-ms01")
    endpoint = fleet.spec("k-ms01").endpoint
    with requests.Session() as http:  # one connection: the logon holds for it, as on Windows
        auth = {"Authorization": f"Kerberos {base64.b64encode(token).decode()}"}
        first = http.post(endpoint, headers=auth, data=b"", timeout=10)
        assert first.status_code == 200
        ctx.step(base64.b64decode(first.headers["WWW-Authenticate"].partition(" ")[2]))
        content_type = (
            'multipart/encrypted;protocol="application/HTTP-Kerberos-session-encrypted";boundary="Encrypted Boundary"'
        )
        reply = http.post(
            endpoint, headers={"Content-Type": content_type}, data=_sealed(ctx, b"<not-soap/>"), timeout=10
        )
    assert 'protocol="application/HTTP-Kerberos-session-encrypted"' in reply.headers["Content-Type"]
    payload = reply.content.split(b"\tContent-Type: application/octet-stream\r\n", 1)[1][
        : -len(b"--Encrypted Boundary--\r\n")
    ]
    header_length = struct.unpack("<I", payload[:4])[0]
    fault = ctx.unwrap_winrm(payload[4 : 4 + header_length], payload[4 + header_length :])
    assert reply.status_code in (400, 500) and b"Fault" in fault
