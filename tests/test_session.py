"""The WinRM session layer against the lab fleet: every auth mode, every transport fault, TLS pinning."""

from __future__ import annotations

import dataclasses
import hashlib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from orchestrator.errors import ErrorKind, HostFailure
from orchestrator.helpers import remote
from orchestrator.inventory.loader import load_inventory
from orchestrator.inventory.model import HostConfig, Inventory
from orchestrator.lab.fleet import LabFleet, serving
from orchestrator.secret import Secret
from orchestrator.session.winrm import WinRMSession
from tests.conftest import make_lab_inventory

pytestmark = pytest.mark.lab

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
        "clm": {"role": "management_server", "lab": {"faults": ["constrained-language"]}},
        "noshell": {"role": "management_server", "lab": {"faults": ["remote-shell-disabled"]}},
        "dropped-https": {
            "role": "management_server",
            "scheme": "https",
            "transport": "ntlm",
            "ca_bundle": "lab",
            "lab": {"faults": ["drop-receive"]},
        },
        "unsealed": {"role": "management_server", "lab": {"faults": ["unsealed-reply"]}},
        "timed-command": {"role": "management_server", "lab": {"faults": ["timed-out:Command"]}},
        "timed-receive": {"role": "management_server", "lab": {"faults": ["timed-out:Receive", "timed-out:Delete"]}},
        **{
            f"garbled-{how}": {"role": "management_server", "lab": {"faults": [f"garbled-seal:{how}"]}}
            for how in ("payload", "short", "stub")
        },
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


# requests' Session.send calls per command: NTLM over http (sealed) logs on with one empty message, whose
# handshake requests_ntlm sends on the same connection; NTLM over https logs on with Create itself; Basic
# needs no handshake. Every other message goes straight to urllib3 (session/transport.py's _Direct).
@pytest.mark.parametrize(("name", "through_requests"), [("ntlm-http", 1), ("ntlm-https", 1), ("basic-https", 0)])
def test_once_logged_on_messages_bypass_requests_session(lab, monkeypatch, name, through_requests):
    inv, _ = lab
    calls = []
    real_send = requests.Session.send

    def counted(self, request, **kwargs):  # instruments the real client: the request still goes out
        calls.append(request.url)
        return real_send(self, request, **kwargs)

    monkeypatch.setattr(requests.Session, "send", counted)
    assert run_hostname(inv.hosts[name]).strip() == name.encode()
    assert len(calls) == through_requests, calls


def test_a_connection_logon_is_made_again_on_a_new_connection(lab):
    """NTLM over https authenticates the connection. The lab drops it during Receive; the shell's Delete
    goes out on a new connection, where requests_ntlm logs on again (a 401 to a message sent directly),
    so the server's shell is deleted, not left behind."""
    inv, fleet = lab
    with pytest.raises(HostFailure) as failure:
        run_hostname(inv.hosts["dropped-https"])
    assert failure.value.kind is ErrorKind.UNREACHABLE
    deletes = fleet.journal.entries("dropped-https", "Delete")
    assert deletes and deletes[-1].status == 200, deletes


def test_a_sealed_session_refuses_a_reply_in_the_clear(lab):
    inv, _ = lab
    with pytest.raises(HostFailure) as failure:
        run_hostname(inv.hosts["unsealed"])
    assert failure.value.kind is ErrorKind.PROTOCOL
    assert "unsealed reply" in failure.value.reason


@pytest.mark.parametrize("how", ["payload", "short", "stub"])
def test_a_sealed_reply_that_cannot_be_unsealed_is_a_protocol_failure(lab, how):
    """A flipped byte (the signature check fails in pyspnego), a one-byte body (pywinrm indexes the parts
    it split) and a part cut inside its signature length (pywinrm unpacks it): never kind internal."""
    inv, _ = lab
    with pytest.raises(HostFailure) as failure:
        run_hostname(inv.hosts[f"garbled-{how}"])
    assert failure.value.kind is ErrorKind.PROTOCOL, failure.value
    assert "the sealed reply cannot be unsealed" in failure.value.reason


def test_only_a_receive_may_time_out(lab):
    """The OperationTimeout fault means "no output yet" only for Receive (MS-WSMV 3.1.4.14); from any
    other operation it is the server's failure, kind timeout, never internal."""
    inv, fleet = lab
    with pytest.raises(HostFailure) as failure:
        run_hostname(inv.hosts["timed-command"])
    assert failure.value.kind is ErrorKind.TIMEOUT, failure.value
    assert "Command: the WS-Management service timed out" in failure.value.reason
    assert fleet.journal.entries("timed-command", "Delete"), "the shell is still deleted"


def test_a_receive_timing_out_at_once_is_not_asked_again_at_once(lab):
    """A server that answers every Receive at once with the OperationTimeout fault, and the Delete too:
    the host ends at its deadline as a timeout (the Delete's fault does not replace it), and Receive is
    asked again only after half the operation timeout, not in a tight loop."""
    inv, fleet = lab
    started = time.monotonic()
    with pytest.raises(HostFailure) as failure:
        run_hostname(inv.hosts["timed-receive"], seconds=4)
    assert failure.value.kind is ErrorKind.TIMEOUT, failure.value
    assert time.monotonic() - started < 4 + 2
    receives = fleet.journal.entries("timed-receive", "Receive")
    assert 2 <= len(receives) <= 8, len(receives)  # about one in 1.5 s; thousands when spinning


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


def test_commands_run_in_pipe_mode_without_cmd_in_utf8(lab):
    """WINRS_CONSOLEMODE_STDIN=FALSE (pipe mode, as Ansible streams stdin), WINRS_SKIP_CMD_SHELL=TRUE,
    and the shell's code page set explicitly to UTF-8: what the lab journal saw on the wire."""
    inv, fleet = lab
    run_hostname(inv.hosts["ntlm-https"])
    create = fleet.journal.entries("ntlm-https", "Create")[-1]
    command = fleet.journal.entries("ntlm-https", "Command")[-1]
    assert create.options is not None and "WINRS_CODEPAGE=65001" in create.options.split()
    assert command.options is not None
    assert {"WINRS_CONSOLEMODE_STDIN=FALSE", "WINRS_SKIP_CMD_SHELL=TRUE"} <= set(command.options.split())


def test_stdin_goes_in_chunks_that_fit_the_envelope(lab):
    inv, fleet = lab
    data = bytes(range(256)) * 2000  # 512,000 bytes: three Sends of at most 200,000
    before = len(fleet.journal.entries("ntlm-http", "Send"))
    with WinRMSession(inv.hosts["ntlm-http"], PASSWORD) as session:
        result = session.run("more", data, deadline=deadline())
    sends = fleet.journal.entries("ntlm-http", "Send")[before:]
    assert result.stdout == data and [e.stdin_bytes for e in sends] == [200_000, 200_000, 112_000]


def test_a_command_that_ended_before_its_stdin_reports_its_own_error(lab):
    """powershell.exe stopped by Constrained Language Mode before reading stdin: Windows faults the
    Send; keyfleet reports the process's own CLIXML error, once, not an HTTP failure to retry."""
    inv, fleet = lab
    with WinRMSession(inv.hosts["clm"], PASSWORD) as session:
        result = session.run(
            remote.bootstrap_command_line(), remote.build_stdin("probe", {}, None), deadline=deadline()
        )
    assert [e.status for e in fleet.journal.entries("clm", "Send")] == [500]
    with pytest.raises(HostFailure) as caught:
        remote.parse_probe("clm", result.stdout, result.stderr, result.exit_code)
    assert caught.value.kind is ErrorKind.CONSTRAINED_LANGUAGE


def test_remote_shell_access_disabled_has_its_own_kind(lab):
    inv, _ = lab
    with pytest.raises(HostFailure) as caught, WinRMSession(inv.hosts["noshell"], PASSWORD) as session:
        session.run("hostname", b"", deadline=deadline())
    assert caught.value.kind is ErrorKind.REMOTE_SHELL_DISABLED and not caught.value.kind.transient
    assert "remote shell requests" in caught.value.reason


def test_without_cmd_exe_a_builtin_cannot_start(lab):
    """WINRS_SKIP_CMD_SHELL=TRUE: keyfleet's commands start without cmd.exe, so cmd's built-ins
    such as echo are no program at all (the lab faults Command as Windows does, ERROR_FILE_NOT_FOUND)."""
    inv, _ = lab
    with pytest.raises(HostFailure) as caught, WinRMSession(inv.hosts["ntlm-http"], PASSWORD) as session:
        session.run("echo hello", b"", deadline=deadline())
    assert "cannot find the file specified" in caught.value.reason
