"""The lab's WS-Management server against bare pywinrm over real loopback sockets (no client mocks)."""

from __future__ import annotations

import base64
import os
import socket
import stat
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import requests
import xmltodict
from cryptography import x509
from winrm.exceptions import InvalidCredentialsError, WinRMOperationTimeoutError, WinRMTransportError, WSManFaultError
from winrm.protocol import Protocol

from orchestrator.errors import KeyfleetError
from orchestrator.inventory.model import Role
from orchestrator.lab.config import LabHostSettings
from orchestrator.lab.fleet import LabFleet, LabHostSpec
from orchestrator.lab.journal import Journal
from orchestrator.lab.pki import LabPKI
from orchestrator.lab.wsman import ServiceLimits
from tests.loopback import ALLOCATOR

SUBNET = ALLOCATOR.subnet()  # this module's hosts: .1, .2, ... (ports chosen by the kernel)
USER, PASSWORD = "LAB\\svc-test", "Correct-Horse-7"
USERS = {USER: (PASSWORD, True)}
NS_S = "http://www.w3.org/2003/05/soap-envelope"
NS_A = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
NS_F = "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault"
NS_RSP = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
SHELL_CMD = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"


def _host(
    name: str,
    last: int,
    scheme: str = "http",
    auth: str = "ntlm",
    faults: tuple[str, ...] = (),
    limits: ServiceLimits | None = None,
) -> LabHostSpec:
    return LabHostSpec(
        name=name,
        group="TEST",
        role=Role.MANAGEMENT_SERVER,
        address=str(SUBNET.network_address + last),
        port=0,
        scheme=scheme,
        auth=auth,
        users=USERS,
        settings=LabHostSettings(faults=faults),
        limits=limits or ServiceLimits(),
    )


SPECS = [
    _host("ntlm-http", 1),
    _host("basic-https", 2, "https", "basic"),
    _host("ntlm-https", 3, "https", "ntlm"),
    _host("limits", 4, limits=ServiceLimits(max_envelope_kb=64, max_shells_per_user=2, max_timeout_ms=1000)),
    _host("f-down", 10, faults=("down",)),
    _host("f-latency", 12, faults=("latency:0.3",)),
    _host("f-authfail", 13, faults=("auth-failure",)),
    _host("f-authfail-b", 14, "https", "basic", faults=("auth-failure",)),
    _host("f-http500", 15, faults=("http500:Receive",)),
    _host("f-drop", 16, "https", "basic", faults=("drop-receive",)),
]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabFleet]:
    state = tmp_path_factory.mktemp("lab-state")
    with LabFleet(SPECS, state, seed=1, journal_path=state / "journal.jsonl") as running:
        yield running


def client(fleet: LabFleet, name: str, *, password: str = PASSWORD, op_timeout: int = 5, **kw: object) -> Protocol:
    spec = fleet.spec(name)
    return Protocol(
        spec.endpoint,
        transport="basic" if spec.auth == "basic" else "ntlm",
        username=USER,
        password=password,
        ca_trust_path=str(fleet.ca_path),
        proxy=None,
        operation_timeout_sec=op_timeout,
        read_timeout_sec=op_timeout + 2,
        **kw,  # type: ignore[arg-type]
    )


def run(p: Protocol, command: str, stdin: bytes | None = None, *, console: bool = False) -> tuple[bytes, bytes, int]:
    """One command; stdin in pipe mode unless ``console`` (pywinrm's default: console-mode stdin)."""
    shell = p.open_shell()
    cmd = p.run_command(shell, command, console_mode_stdin=console)
    if stdin is not None:
        p.send_command_input(shell, cmd, stdin, end=True)
    result = p.get_command_output(shell, cmd)
    p.cleanup_command(shell, cmd)
    p.close_shell(shell)
    return result


def raw(
    p: Protocol,
    action: str,
    shell_id: str | None,
    body: Mapping[str, object] | None = None,
    message_id: uuid.UUID | None = None,
) -> ET.Element:
    req = {
        "env:Envelope": p.build_wsman_header(
            action=action, resource_uri=SHELL_CMD, shell_id=shell_id, message_id=message_id
        )
    }
    req["env:Envelope"]["env:Body"] = body or {}
    return ET.fromstring(p.transport.send_message(xmltodict.unparse(req)))


@pytest.mark.lab
@pytest.mark.parametrize("name", ["ntlm-http", "basic-https", "ntlm-https"])
def test_every_auth_mode_runs_commands_with_stdin(fleet: LabFleet, name: str) -> None:
    p = client(fleet, name)
    assert run(p, "hostname") == (f"{name}\r\n".encode(), b"", 0)
    assert run(p, "more", b"line one\r\nline two\r\n") == (b"line one\r\nline two\r\n", b"", 0)
    # console-mode stdin is typed into a console that echoes it (winrs -noecho turns that off)
    echoed = b"line one\r\nline two\r\n" * 2
    assert run(p, "more", b"line one\r\nline two\r\n", console=True) == (echoed, b"", 0)
    _, err, code = run(p, "nosuchtool", None)
    assert code == 1 and b"is not recognized" in err
    ops = [e.operation for e in fleet.journal.entries(name)]
    if name == "ntlm-http":
        assert "encryption-init" in ops  # pywinrm's empty POST set up sealing
    assert {"Create", "Command", "Send", "Receive", "Signal", "Delete"} <= set(ops)


@pytest.mark.lab
def test_ntlm_over_http_refuses_unencrypted_soap(fleet: LabFleet) -> None:
    p = client(fleet, "ntlm-http", message_encryption="never")
    with pytest.raises(WinRMTransportError) as info:
        p.open_shell()
    assert info.value.code == 500
    last = fleet.journal.entries("ntlm-http")[-1]
    assert (last.operation, last.status, last.detail) == ("rejected", 500, "unencrypted message refused")


@pytest.mark.lab
@pytest.mark.parametrize("name", ["ntlm-http", "basic-https", "ntlm-https"])
def test_wrong_password_is_401(fleet: LabFleet, name: str) -> None:
    with pytest.raises(InvalidCredentialsError):
        client(fleet, name, password="wrong-password").open_shell()
    assert fleet.journal.entries(name)[-1].status == 401


@pytest.mark.lab
def test_ntlm_over_https_requires_channel_binding(fleet: LabFleet) -> None:
    with pytest.raises(InvalidCredentialsError):
        client(fleet, "ntlm-https", send_cbt=False).open_shell()


@pytest.mark.lab
def test_https_certificate_is_issued_by_the_lab_ca(fleet: LabFleet) -> None:
    spec = fleet.spec("basic-https")
    with pytest.raises(requests.exceptions.SSLError):
        Protocol(
            spec.endpoint,
            transport="basic",
            username=USER,
            password=PASSWORD,
            ca_trust_path=None,  # type: ignore[arg-type]
            proxy=None,
        ).open_shell()


@pytest.mark.lab
def test_operation_timeout_is_the_windows_fault(fleet: LabFleet) -> None:
    p = client(fleet, "basic-https", op_timeout=1)
    shell = p.open_shell()
    cmd = p.run_command(shell, "more", console_mode_stdin=False)  # waits for stdin that never ends
    started = time.monotonic()
    with pytest.raises(WinRMOperationTimeoutError):
        p.get_command_output_raw(shell, cmd)
    assert 0.9 < time.monotonic() - started < 3
    req = {"env:Envelope": p.build_wsman_header(action=f"{NS_RSP}/Receive", resource_uri=SHELL_CMD, shell_id=shell)}
    req["env:Envelope"]["env:Body"] = {"rsp:Receive": {"rsp:DesiredStream": {"@CommandId": cmd, "#text": "stdout"}}}
    with pytest.raises(WinRMTransportError) as info:
        p.transport.send_message(xmltodict.unparse(req))
    assert info.value.code == 500
    root = ET.fromstring(info.value.response_text)
    assert root.tag == f"{{{NS_S}}}Envelope"
    fault = root.find(f"{{{NS_S}}}Body/{{{NS_S}}}Fault/{{{NS_S}}}Detail/{{{NS_F}}}WSManFault")
    assert fault is not None and fault.get("Code") == "2150858793"
    p.send_command_input(shell, cmd, b"late", end=True)
    assert p.get_command_output(shell, cmd) == (b"late", b"", 0)
    p.close_shell(shell)


@pytest.mark.lab
def test_operation_timeout_above_max_timeoutms_is_capped_to_it(fleet: LabFleet) -> None:
    """MS-WSMV 3.1.4.1.6: a larger OperationTimeout than MaxTimeoutms gets MaxTimeoutms (here 1 s, asked 5 s)."""
    p = client(fleet, "limits", op_timeout=5)
    shell = p.open_shell()
    cmd = p.run_command(shell, "more")  # waits for stdin that never ends
    started = time.monotonic()
    with pytest.raises(WinRMOperationTimeoutError):
        p.get_command_output_raw(shell, cmd)
    assert 0.9 < time.monotonic() - started < 2.5
    p.close_shell(shell)


@pytest.mark.lab
@pytest.mark.parametrize("value", ["PT-5S", "60", "forever", ""])
def test_malformed_operation_timeout_is_a_fault(fleet: LabFleet, value: str) -> None:
    p = client(fleet, "basic-https")
    create = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create"
    header = p.build_wsman_header(action=create, resource_uri=SHELL_CMD)
    assert "w:OperationTimeout" in header["env:Header"]
    header["env:Header"]["w:OperationTimeout"] = value
    with pytest.raises(WSManFaultError) as info:
        p.send_message(xmltodict.unparse({"env:Envelope": {**header, "env:Body": {}}}))
    assert info.value.wsman_fault_code == 2150858881 and info.value.code == 400


@pytest.mark.lab
def test_large_output_spans_several_receives_within_max_envelope(fleet: LabFleet) -> None:
    p = client(fleet, "ntlm-http")
    data = os.urandom(300_000)
    shell = p.open_shell()
    cmd = p.run_command(shell, "more", console_mode_stdin=False)
    for i in range(0, len(data), 100_000):
        p.send_command_input(shell, cmd, data[i : i + 100_000], end=i + 100_000 >= len(data))
    received, replies, done = b"", 0, False
    while not done:
        req = {"env:Envelope": p.build_wsman_header(action=f"{NS_RSP}/Receive", resource_uri=SHELL_CMD, shell_id=shell)}
        req["env:Envelope"]["env:Body"] = {
            "rsp:Receive": {"rsp:DesiredStream": {"@CommandId": cmd, "#text": "stdout stderr"}}
        }
        reply = p.transport.send_message(xmltodict.unparse(req))
        assert len(reply) <= 153600  # pywinrm's MaxEnvelopeSize
        replies += 1
        root = ET.fromstring(reply)
        for stream in root.iter(f"{{{NS_RSP}}}Stream"):
            received += base64.b64decode(stream.text or "")
        state = next(root.iter(f"{{{NS_RSP}}}CommandState"))
        done = state.get("State", "").endswith("/Done")
    assert received == data and replies >= 3
    p.close_shell(shell)


@pytest.mark.lab
def test_signal_and_delete_relate_to_the_request(fleet: LabFleet) -> None:
    p = client(fleet, "ntlm-https")
    shell = p.open_shell()
    cmd = p.run_command(shell, "more", console_mode_stdin=False)
    mid = uuid.uuid4()
    body = {
        "rsp:Signal": {
            "@CommandId": cmd,
            "rsp:Code": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/terminate",
        }
    }
    root = raw(p, f"{NS_RSP}/Signal", shell, body, mid)
    assert root.findtext(f".//{{{NS_A}}}RelatesTo") == f"uuid:{mid}"
    mid = uuid.uuid4()
    root = raw(p, "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete", shell, None, mid)
    assert root.findtext(f".//{{{NS_A}}}RelatesTo") == f"uuid:{mid}"
    with pytest.raises(WSManFaultError) as info:  # the shell is gone
        p.run_command(shell, "hostname")
    assert info.value.wsman_fault_code == 2150858843


@pytest.mark.lab
def test_max_envelope_size_is_enforced_and_the_session_survives(fleet: LabFleet) -> None:
    p = client(fleet, "limits")
    shell = p.open_shell()
    cmd = p.run_command(shell, "more", console_mode_stdin=False)
    with pytest.raises(WSManFaultError) as info:
        p.send_command_input(shell, cmd, b"x" * 60_000)  # 80 KB of base64 > 64 KB
    assert info.value.code == 413 and info.value.wsman_fault_code == 2150859025
    assert "MaxEnvelopeSize" in info.value.reason
    p.send_command_input(shell, cmd, b"fits", end=True)  # sealing state is still in step
    assert p.get_command_output(shell, cmd) == (b"fits", b"", 0)
    p.close_shell(shell)


@pytest.mark.lab
def test_shells_per_user_quota(fleet: LabFleet) -> None:
    p = client(fleet, "limits")
    shells = [p.open_shell(), p.open_shell()]
    with pytest.raises(WSManFaultError) as info:
        p.open_shell()
    assert info.value.code == 500 and info.value.wsman_fault_code == 2150859173
    assert "maximum number of 2 concurrent shells" in info.value.reason
    p.close_shell(shells.pop(), close_session=False)
    shells.append(p.open_shell())
    for shell in shells:
        p.close_shell(shell, close_session=False)


@pytest.mark.lab
def test_unknown_action_is_a_soap_fault(fleet: LabFleet) -> None:
    p = client(fleet, "basic-https")
    with pytest.raises(WSManFaultError) as info:
        p.send_message(
            xmltodict.unparse(
                {
                    "env:Envelope": {
                        **p.build_wsman_header(
                            action="http://schemas.xmlsoap.org/ws/2004/09/transfer/Get", resource_uri=SHELL_CMD
                        ),
                        "env:Body": {},
                    }
                }
            )
        )
    assert info.value.wsman_fault_code == 2150858771 and info.value.fault_subcode == "a:ActionNotSupported"


@pytest.mark.lab
def test_fault_down_refuses_connections(fleet: LabFleet) -> None:
    with pytest.raises(requests.exceptions.ConnectionError):
        client(fleet, "f-down").open_shell()


@pytest.mark.lab
def test_fault_latency_delays_every_request(fleet: LabFleet) -> None:
    p = client(fleet, "f-latency")
    started = time.monotonic()
    assert run(p, "hostname")[0] == b"f-latency\r\n"
    requests_made = len(fleet.journal.entries("f-latency"))
    assert requests_made >= 8 and time.monotonic() - started >= 0.3 * requests_made


@pytest.mark.lab
@pytest.mark.parametrize("name", ["f-authfail", "f-authfail-b"])
def test_fault_auth_failure_rejects_good_credentials(fleet: LabFleet, name: str) -> None:
    with pytest.raises(InvalidCredentialsError):
        client(fleet, name).open_shell()


@pytest.mark.lab
def test_fault_http500_on_receive(fleet: LabFleet) -> None:
    p = client(fleet, "f-http500")
    shell = p.open_shell()
    cmd = p.run_command(shell, "hostname")
    with pytest.raises(WSManFaultError) as info:
        p.get_command_output_raw(shell, cmd)
    assert info.value.code == 500 and "http500:Receive" in info.value.reason
    p.close_shell(shell)


@pytest.mark.lab
def test_fault_drop_receive_closes_the_connection(fleet: LabFleet) -> None:
    p = client(fleet, "f-drop")
    shell = p.open_shell()
    cmd = p.run_command(shell, "hostname")
    with pytest.raises(requests.exceptions.ConnectionError):
        p.get_command_output_raw(shell, cmd)
    last = fleet.journal.entries("f-drop")[-1]
    assert (last.operation, last.status) == ("Receive", 0)


@pytest.mark.lab
def test_journal_records_requests_but_never_stdin_or_passwords(fleet: LabFleet) -> None:
    marker = b"stdin-content-" + uuid.uuid4().hex.encode()
    p = client(fleet, "ntlm-http")
    before = fleet.journal.connections("ntlm-http")
    run(p, "more", marker)
    assert len(fleet.journal.connections("ntlm-http") - before) == 1  # one TCP connection for the whole run
    sends = fleet.journal.entries("ntlm-http", "Send")
    assert sends[-1].stdin_bytes == len(marker) and sends[-1].user == USER
    assert fleet.journal.entries("ntlm-http", "Command")[-1].command_line == "more"
    assert fleet.journal.path is not None
    text = fleet.journal.path.read_text()
    assert marker.decode() not in text and PASSWORD not in text
    on_disk = Journal.read(fleet.journal.path)
    assert [e.operation for e in on_disk][-6:] == [e.operation for e in fleet.journal.entries()][-6:]


@pytest.mark.lab
def test_concurrent_clients_on_one_host(fleet: LabFleet) -> None:
    results: list[bytes] = []

    def work() -> None:
        results.append(run(client(fleet, "ntlm-http"), "more", b"x" * 1000)[0])

    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [b"x" * 1000] * 16


@pytest.mark.lab
def test_blackhole_accepts_never_answers_and_stops_cleanly(tmp_path: Path) -> None:
    fleet = LabFleet([_host("f-blackhole", 11, faults=("blackhole",))], tmp_path).start()
    spec = fleet.spec("f-blackhole")
    with pytest.raises(requests.exceptions.ReadTimeout):
        client(fleet, "f-blackhole", op_timeout=1).open_shell()
    sock = socket.create_connection((spec.address, spec.port), timeout=5)
    sock.sendall(b"POST /wsman HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    started = time.monotonic()
    fleet.stop()
    assert time.monotonic() - started < 2
    try:
        assert sock.recv(10) == b""  # the server cut the connection on stop...
    except ConnectionResetError:
        pass  # ...possibly with a reset, as it never read the request
    finally:
        sock.close()


def test_certificates_are_private_cached_and_carry_ip_and_name(tmp_path: Path) -> None:
    pki = LabPKI(tmp_path)
    first = pki.host_certificate("scsm-ms01", "127.0.77.50")
    for path in (pki.ca_path, first.cert_path, first.key_path, tmp_path / "ca.key"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = LabPKI(tmp_path).host_certificate("scsm-ms01", "127.0.77.50")
    assert again.der == first.der  # reused, not re-issued
    san = (
        x509.load_der_x509_certificate(first.der).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    )
    assert "scsm-ms01" in san.get_values_for_type(x509.DNSName)
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.77.50"]
    moved = LabPKI(tmp_path).host_certificate("scsm-ms01", "127.0.77.51")
    assert moved.der != first.der


@pytest.mark.lab
def test_a_restarted_fleet_reuses_its_certificates_and_every_host_accepts(tmp_path: Path) -> None:
    # No clock here: start-up speed is measured by `keyfleet lab bench`, never by a timed test. What makes
    # a restart cheap is checked instead: no certificate or key is issued again.
    specs = [
        _host(f"fast{i:02d}", 100 + i, "https" if i % 2 else "http", "basic" if i % 2 else "ntlm") for i in range(12)
    ]
    LabFleet(specs, tmp_path).start().stop()  # first start issues certificates
    issued = {p.name: p.read_bytes() for p in tmp_path.glob("*.*") if p.suffix in (".pem", ".key")}
    assert len(issued) == 2 + 2 * 6  # the CA and the six https hosts, certificate and key each
    fleet = LabFleet(specs, tmp_path).start()
    try:
        assert {name: (tmp_path / name).read_bytes() for name in issued} == issued
        for spec in fleet.specs:
            socket.create_connection((spec.address, spec.port), timeout=5).close()
        assert run(client(fleet, "fast01"), "hostname")[0] == b"fast01\r\n"
    finally:
        fleet.stop()


@pytest.mark.lab
def test_a_second_fleet_on_the_same_state_fails_to_bind_without_breaking_the_first(tmp_path: Path) -> None:
    first = LabFleet([_host("twin-http", 200), _host("twin-https", 201, "https", "ntlm")], tmp_path).start()
    try:
        # Same addresses, ports and state_dir: what a second `keyfleet backup` on one lab inventory starts.
        with pytest.raises(KeyfleetError) as info:
            LabFleet(first.specs, tmp_path).start()
        message = str(info.value)
        assert "\n" not in message and "another lab fleet" in message
        assert f"cannot listen on {first.specs[0].address}" in message
        assert len(list(tmp_path.glob(".ntlm-users-*/*"))) == 2  # the first fleet's user files are intact
        for name in ("twin-http", "twin-https"):  # new connections: new NTLM acceptors read the user files
            assert run(client(first, name), "hostname") == (f"{name}\r\n".encode(), b"", 0)
    finally:
        first.stop()
    assert not list(tmp_path.glob(".ntlm-users-*"))


@pytest.mark.lab
def test_ntlm_set_up_failure_is_a_refused_logon_in_the_journal_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crashed: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", crashed.append)
    with LabFleet([_host("lost-users", 202)], tmp_path, journal_path=tmp_path / "journal.jsonl") as fleet:
        for user_file in tmp_path.glob(".ntlm-users-*/*"):
            user_file.unlink()  # what another process could do to the acceptor's credential store
        # a bare 401 to the Negotiate message: requests_ntlm reports it as access denied, no challenge
        with pytest.raises(PermissionError, match="did not respond with NTLM challenge"):
            client(fleet, "lost-users").open_shell()
        last = fleet.journal.entries("lost-users")[-1]
    assert (last.operation, last.status) == ("auth-handshake", 401)
    assert last.detail == "NTLM acceptor unavailable: OperationNotAvailableError"
    assert crashed == []


def test_requests_are_parsed_by_namespace_not_prefix() -> None:
    from orchestrator.lab.soap import SoapRequest

    doc = (
        f'<E:Envelope xmlns:E="{NS_S}" xmlns:X="{NS_A}" xmlns:M="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd">'
        f"<E:Header><X:Action>{NS_RSP}/Receive</X:Action><X:MessageID>uuid:1</X:MessageID>"
        "<M:OperationTimeout>PT1.5S</M:OperationTimeout><M:MaxEnvelopeSize>8192</M:MaxEnvelopeSize>"
        '<M:SelectorSet><M:Selector Name="ShellId">abc</M:Selector></M:SelectorSet></E:Header>'
        "<E:Body/></E:Envelope>"
    )
    req = SoapRequest.parse(doc.encode())
    assert (req.operation, req.message_id, req.shell_id) == ("Receive", "uuid:1", "abc")
    assert (req.operation_timeout, req.max_envelope_size) == (1.5, 8192)
