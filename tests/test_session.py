"""The WinRM session layer against the lab fleet: every auth mode, every transport fault, TLS pinning."""

from __future__ import annotations

import dataclasses
import hashlib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import remote
from orchestrator.errors import ErrorKind, HostFailure
from orchestrator.inventory.loader import load_inventory
from orchestrator.inventory.model import HostConfig, Inventory
from orchestrator.lab.fleet import LabFleet, serving
from orchestrator.secret import Secret
from orchestrator.session import WinRMSession
from tests.conftest import make_lab_inventory

PASSWORD = Secret("Lab-Test-Pw-1")
FLEET = {
    "S": {
        "ntlm-http": {"role": "management_server"},
        "basic-https": {"role": "management_server", "scheme": "https", "transport": "basic", "ca_bundle": "lab"},
        "ntlm-https": {"role": "management_server", "scheme": "https", "transport": "ntlm", "ca_bundle": "lab"},
        "down": {"role": "management_server", "lab": {"faults": ["down"]}},
        "blackhole": {"role": "management_server", "lab": {"faults": ["blackhole"]}},
        "authfail": {"role": "management_server", "lab": {"faults": ["auth-failure"]}},
        "http500": {"role": "management_server", "lab": {"faults": ["http500:Command"]}},
        "dropped": {"role": "management_server", "lab": {"faults": ["drop-receive"]}},
        "hanging": {"role": "management_server", "lab": {"faults": ["tool-hanging"]}},
        "slow": {"role": "management_server", "lab": {"faults": ["latency:0.2"]}},
    }
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Inventory, LabFleet]]:
    files = make_lab_inventory(tmp_path_factory.mktemp("session"), fleet=FLEET)
    inv = load_inventory(files.inventory)
    with serving(inv) as fleet:
        assert fleet is not None
        yield inv, fleet


def deadline(seconds: float = 15) -> float:
    return time.monotonic() + seconds


def run_hostname(host: HostConfig, seconds: float = 15) -> bytes:
    with WinRMSession(host, PASSWORD) as session:
        result = session.run("hostname", b"", deadline=deadline(seconds))
    assert result.exit_code == 0
    assert result.requests == 5
    return result.stdout


@pytest.mark.parametrize("name", ["ntlm-http", "basic-https", "ntlm-https"])
def test_every_auth_mode_runs_a_command_in_five_requests(lab, name):
    inv, _ = lab
    assert run_hostname(inv.hosts[name]).strip() == name.encode()


def test_stdin_reaches_the_command(lab):
    inv, _ = lab
    with WinRMSession(inv.hosts["ntlm-http"], PASSWORD) as session:
        result = session.run("more", b"line one\r\nline two\r\n", deadline=deadline())
    assert b"line two" in result.stdout


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("down", ErrorKind.UNREACHABLE),
        ("authfail", ErrorKind.AUTH),
        ("http500", ErrorKind.HTTP),
        ("dropped", ErrorKind.UNREACHABLE),
    ],
)
def test_transport_faults_have_their_kind(lab, name, kind):
    inv, _ = lab
    with pytest.raises(HostFailure) as raised:
        run_hostname(inv.hosts[name])
    assert raised.value.kind is kind, raised.value
    assert raised.value.host == name
    assert "Lab-Test-Pw-1" not in str(raised.value)


def test_blackhole_times_out_within_the_deadline(lab):
    inv, _ = lab
    started = time.monotonic()
    with pytest.raises(HostFailure) as raised:
        run_hostname(inv.hosts["blackhole"], seconds=3)
    assert raised.value.kind is ErrorKind.TIMEOUT  # the TCP connection is accepted, no reply comes
    assert time.monotonic() - started < 30


def test_a_command_that_never_finishes_is_abandoned_at_the_deadline(lab):
    inv, _ = lab
    host = inv.hosts["hanging"]
    stdin = remote.build_stdin("export", remote.export_params(None, 60), Secret("Backup-Pw-123"))
    started = time.monotonic()
    with WinRMSession(host, PASSWORD) as session, pytest.raises(HostFailure) as raised:
        session.run(remote.bootstrap_command_line(), stdin, deadline=deadline(4))
    assert raised.value.kind is ErrorKind.TIMEOUT
    assert time.monotonic() - started < 30  # abandoned near the 4 s deadline, not after the 60 s tool timeout


def test_output_cap(lab):
    inv, _ = lab
    with WinRMSession(inv.hosts["ntlm-http"], PASSWORD) as session, pytest.raises(HostFailure) as raised:
        session.run("more", b"x" * 5000, deadline=deadline(), max_output=100)
    assert raised.value.kind is ErrorKind.PROTOCOL


def test_latency_is_tolerated(lab):
    inv, _ = lab
    assert run_hostname(inv.hosts["slow"]).strip() == b"slow"


def listener_thumbprints(host: HostConfig) -> tuple[str, str]:
    pem = ssl.get_server_certificate((host.address, host.port))
    der = ssl.PEM_cert_to_DER_cert(pem)
    return hashlib.sha256(der).hexdigest(), hashlib.sha1(der).hexdigest()


def test_pinned_thumbprint_sha256_and_sha1_are_accepted(lab):
    inv, _ = lab
    host = inv.hosts["basic-https"]
    sha256, sha1 = listener_thumbprints(host)
    for pin in (sha256, sha1):
        pinned = dataclasses.replace(host, ca_bundle=None, cert_thumbprint=pin)
        assert run_hostname(pinned).strip() == b"basic-https"


def test_wrong_thumbprint_is_refused_showing_both(lab):
    inv, _ = lab
    host = inv.hosts["basic-https"]
    actual, _ = listener_thumbprints(host)
    wrong = "ab" * 32
    pinned = dataclasses.replace(host, ca_bundle=None, cert_thumbprint=wrong)
    with pytest.raises(HostFailure) as raised:
        run_hostname(pinned)
    assert raised.value.kind is ErrorKind.TLS
    assert wrong in raised.value.reason and actual in raised.value.reason


def test_untrusted_certificate_is_refused_by_default(lab):
    inv, _ = lab
    host = dataclasses.replace(inv.hosts["basic-https"], ca_bundle=None)
    with pytest.raises(HostFailure) as raised:
        run_hostname(host)
    assert raised.value.kind is ErrorKind.TLS
    assert "not trusted" in raised.value.reason


def test_a_missing_ca_bundle_is_a_tls_failure(lab):
    inv, _ = lab
    host = dataclasses.replace(inv.hosts["basic-https"], ca_bundle="/nonexistent/ca.pem")
    with pytest.raises(HostFailure) as raised:
        run_hostname(host)
    assert raised.value.kind is ErrorKind.TLS


def test_environment_ca_bundle_is_not_used(lab, monkeypatch):
    inv, fleet = lab
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(Path(fleet.ca_path)))
    monkeypatch.setenv("SSL_CERT_FILE", str(Path(fleet.ca_path)))
    host = dataclasses.replace(inv.hosts["basic-https"], ca_bundle=None)
    with pytest.raises(HostFailure) as raised:
        run_hostname(host)
    assert raised.value.kind is ErrorKind.TLS
