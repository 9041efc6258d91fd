"""SOAP 1.2 / WS-Management envelopes of the lab server: request parsing by namespace URI, replies, faults."""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

NS_S = "http://www.w3.org/2003/05/soap-envelope"
NS_A = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
NS_W = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
NS_X = "http://schemas.xmlsoap.org/ws/2004/09/transfer"
NS_RSP = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
NS_F = "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault"
ANONYMOUS = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
FAULT_ACTION = "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault"

# Action URI -> the operation name used by the journal and the fault specs.
ACTIONS = {
    f"{NS_X}/Create": "Create",
    f"{NS_X}/Delete": "Delete",
    f"{NS_RSP}/Command": "Command",
    f"{NS_RSP}/Send": "Send",
    f"{NS_RSP}/Receive": "Receive",
    f"{NS_RSP}/Signal": "Signal",
}
RESPONSE_ACTIONS = {
    "Create": f"{NS_X}/CreateResponse",
    "Delete": f"{NS_X}/DeleteResponse",
    "Command": f"{NS_RSP}/CommandResponse",
    "Send": f"{NS_RSP}/SendResponse",
    "Receive": f"{NS_RSP}/ReceiveResponse",
    "Signal": f"{NS_RSP}/SignalResponse",
}

_NUM = r"\d+(?:\.\d+)?"
_DURATION = re.compile(rf"^P(?:T(?:(?P<h>{_NUM})H)?(?:(?P<m>{_NUM})M)?(?:(?P<s>{_NUM})S)?)$")


def q(ns: str, name: str) -> str:
    """ElementTree's qualified name ``{ns}name``."""
    return f"{{{ns}}}{name}"


@dataclass(frozen=True)
class WSManError:
    """A Windows WS-Management fault: HTTP status, SOAP code/subcode, WSManFault code and message."""

    status: int
    code: str  # s:Sender | s:Receiver
    subcode: str  # e.g. w:TimedOut
    wsman_code: int
    message: str


def operation_timeout_fault() -> WSManError:
    msg = "The WS-Management service cannot complete the operation within the time specified in OperationTimeout.  "
    return WSManError(500, "s:Receiver", "w:TimedOut", 2150858793, msg)


def file_not_found_fault() -> WSManError:
    """Command without cmd.exe (WINRS_SKIP_CMD_SHELL) naming no program on disk: Win32 ERROR_FILE_NOT_FOUND."""
    return WSManError(500, "s:Receiver", "w:InternalError", 2, "The system cannot find the file specified. ")


def pipe_ended_fault() -> WSManError:
    """A Send to a process that has already ended: Win32 ERROR_BROKEN_PIPE (ansible/ansible#69595)."""
    return WSManError(500, "s:Receiver", "w:InternalError", 109, "The pipe has been ended. ")


def remote_shell_disabled_fault() -> WSManError:
    """Create when Group Policy "Allow Remote Shell Access" is disabled. The message is the one
    public reports quote; the fault code is not documented (keyfleet matches the text)."""
    msg = (
        "The WS-Management service cannot process the request. The service is configured to not accept any "
        "remote shell requests. "
    )
    return WSManError(500, "s:Receiver", "w:AccessDenied", 2150859173, msg)


def invalid_timeout_fault() -> WSManError:
    # ERROR_WSMAN_INVALID_TIMEOUT_HEADER (2150858881, winerror.h / the windows crate's RemoteManagement constants)
    return WSManError(
        400,
        "s:Sender",
        "w:InvalidHeader",
        2150858881,
        "The WS-Management service cannot process the request because the OperationTimeout header is not a "
        "valid xs:duration. ",
    )


def shells_quota_fault(limit: int) -> WSManError:
    return WSManError(
        500,
        "s:Receiver",
        "w:InternalError",
        2150859173,
        f"The WS-Management service cannot process the request. This user is allowed a maximum number of "
        f"{limit} concurrent shells, which has been exceeded. Close existing shells or raise the quota for "
        f"this user. ",
    )


def envelope_too_large_fault(limit_kb: int) -> WSManError:
    # HTTP 413 is what the WinRM service answers; Windows clients report it as HRESULT 0x80338111.
    return WSManError(
        413,
        "s:Sender",
        "w:EncodingLimit",
        2150859025,
        "The WinRM client sent a request to the remote WS-Management service and was notified that the "
        f"request size exceeded the configured MaxEnvelopeSize quota ({limit_kb} KB).",
    )


def shell_not_found_fault(shell_id: str) -> WSManError:
    return WSManError(
        500,
        "s:Sender",
        "w:InvalidSelectors",
        2150858843,
        f"The request for the Windows Remote Shell with ShellId {shell_id} failed because the shell was not "
        "found on the server. Possible causes are: the specified ShellId is incorrect or the shell no longer "
        "exists on the server. Provide the correct ShellId or create a new shell and retry the operation. ",
    )


def action_not_supported_fault(action: str) -> WSManError:
    return WSManError(
        500,
        "s:Sender",
        "a:ActionNotSupported",
        2150858771,
        f"The WS-Management service does not support the action specified in the request: {action}",
    )


def invalid_request_fault(reason: str) -> WSManError:
    return WSManError(
        400,
        "s:Sender",
        "w:InvalidBody",
        2150858791,
        f"The WS-Management service cannot process the request because the request packet does not have a "
        f"valid SOAP body. {reason}",
    )


def injected_fault(operation: str) -> WSManError:
    return WSManError(
        500,
        "s:Receiver",
        "w:InternalError",
        2150858755,
        f"An error was encountered inside the plugin. (lab fault http500:{operation})",
    )


class SoapFaultError(Exception):
    """Raised by request handling to answer with ``fault`` instead of a normal reply."""

    def __init__(self, fault: WSManError) -> None:
        super().__init__(fault.message)
        self.fault = fault


def parse_duration(text: str | None) -> float | None:
    """Seconds of an xs:duration such as ``PT20S`` or ``PT0.5S`` (None when absent or unparsable)."""
    m = _DURATION.match((text or "").strip())
    if not m:
        return None
    return sum(float(m.group(k) or 0) * f for k, f in (("h", 3600), ("m", 60), ("s", 1)))


@dataclass
class SoapRequest:
    action: str
    operation: str  # a key of RESPONSE_ACTIONS, or "unknown"
    message_id: str
    shell_id: str | None
    operation_timeout: float | None
    max_envelope_size: int | None
    options: dict[str, str]
    body: ET.Element = field(repr=False)

    @classmethod
    def parse(cls, data: bytes) -> SoapRequest:
        try:
            root = ET.fromstring(data)
        except ET.ParseError as exc:
            raise SoapFaultError(invalid_request_fault(f"XML error: {exc}")) from None
        header, body = root.find(q(NS_S, "Header")), root.find(q(NS_S, "Body"))
        if root.tag != q(NS_S, "Envelope") or header is None or body is None:
            raise SoapFaultError(invalid_request_fault("Not a SOAP 1.2 envelope with Header and Body."))
        action = (header.findtext(q(NS_A, "Action")) or "").strip()
        selector = next((s for s in header.iter(q(NS_W, "Selector")) if s.get("Name") == "ShellId"), None)
        max_env = (header.findtext(q(NS_W, "MaxEnvelopeSize")) or "").strip()
        options = {o.get("Name", ""): (o.text or "").strip() for o in header.iter(q(NS_W, "Option"))}
        timeout_text = header.findtext(q(NS_W, "OperationTimeout"))
        operation_timeout = parse_duration(timeout_text)
        if timeout_text is not None and operation_timeout is None:
            raise SoapFaultError(invalid_timeout_fault())
        return cls(
            action=action,
            operation=ACTIONS.get(action, "unknown"),
            message_id=(header.findtext(q(NS_A, "MessageID")) or "").strip(),
            shell_id=(selector.text or "").strip() if selector is not None else None,
            operation_timeout=operation_timeout,
            max_envelope_size=int(max_env) if max_env.isdigit() else None,
            options=options,
            body=body,
        )


_NAMESPACES = f'xmlns:s="{NS_S}" xmlns:a="{NS_A}" xmlns:x="{NS_X}" xmlns:w="{NS_W}" xmlns:rsp="{NS_RSP}"'


def envelope(action: str, relates_to: str, body_xml: str) -> bytes:
    """A reply envelope; ``body_xml`` is already-escaped XML using the s/a/x/w/rsp prefixes."""
    header = (
        f"<s:Header><a:Action>{escape(action)}</a:Action>"
        f"<a:MessageID>uuid:{str(uuid.uuid4()).upper()}</a:MessageID>"
        f"<a:To>{ANONYMOUS}</a:To>"
        f"<a:RelatesTo>{escape(relates_to)}</a:RelatesTo></s:Header>"
    )
    return (f'<s:Envelope xml:lang="en-US" {_NAMESPACES}>{header}<s:Body>{body_xml}</s:Body></s:Envelope>').encode()


def fault_envelope(fault: WSManError, relates_to: str, machine: str) -> bytes:
    """A Windows-shaped fault: s:Fault with s:Detail/f:WSManFault carrying the decimal code."""
    body = (
        f"<s:Fault><s:Code><s:Value>{fault.code}</s:Value>"
        f"<s:Subcode><s:Value>{fault.subcode}</s:Value></s:Subcode></s:Code>"
        f'<s:Reason><s:Text xml:lang="en-US">{escape(fault.message)}</s:Text></s:Reason>'
        f'<s:Detail><f:WSManFault xmlns:f="{NS_F}" Code="{fault.wsman_code}" Machine={quoteattr(machine)}>'
        f"<f:Message>{escape(fault.message)}</f:Message></f:WSManFault></s:Detail></s:Fault>"
    )
    return envelope(FAULT_ACTION, relates_to, body)
