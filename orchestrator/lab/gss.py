"""The lab's server-side authentication: pyspnego/gssapi acceptors for raw NTLM, raw Kerberos and SPNEGO
(NTLM or Kerberos inside), each host with its own keytab and NTLM user file, and MS-WSMV message sealing.

pyspnego takes an acceptor credential only on Windows, so the per-host keytab credential (gssapi's
credential store) reaches it through two private arguments, ``_gssapi_credential`` and
``_negotiate_contexts``: both are used here only, and tests/test_kerberos_lab.py fails when they change.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import spnego
from spnego._context import GSSMech
from spnego.channel_bindings import GssChannelBindings
from spnego.exceptions import SpnegoError

from orchestrator.lab.ntlm import user_file_env

SPNEGO_PROTOCOL = "application/HTTP-SPNEGO-session-encrypted"
KERBEROS_PROTOCOL = "application/HTTP-Kerberos-session-encrypted"  # MS-WSMV 2.2.9.1.2, the Kerberos scheme
BOUNDARY = b"--Encrypted Boundary"
_OCTET = b"\tContent-Type: application/octet-stream\r\n"
_SPNEGO_OID = bytes.fromhex("06062b0601050502")  # 1.3.6.1.5.5.2
_KRB5_OIDS = (bytes.fromhex("06092a864886f712010202"), bytes.fromhex("06092a864882f712010202"))  # std, MS
_NTLM_OID = bytes.fromhex("060a2b0601040182370202 0a".replace(" ", ""))  # 1.3.6.1.4.1.311.2.2.10


class AuthRejectedError(Exception):
    """A token was malformed or refused (answer 401); ``token`` is an error token for the client, if any."""

    def __init__(self, reason: str, token: bytes | None = None) -> None:
        super().__init__(reason)
        self.token = token


class AuthSetupError(Exception):
    """The server could not set up a context, e.g. its user file or keytab is gone (answer 401)."""


def token_mechanism(scheme: str, token: bytes) -> str | None:
    """Which acceptor a first token needs (ntlm, kerberos, negotiate), None for a continuation token."""
    if token.startswith(b"NTLMSSP\x00"):
        return "ntlm" if int.from_bytes(token[8:12], "little") == 1 else None
    if token[:1] == b"\x60":  # a GSS-API InitialContextToken: its mechanism OID comes first
        head = token[:24]
        if _SPNEGO_OID in head:
            return "negotiate"
        if any(oid in head for oid in _KRB5_OIDS):
            return "kerberos"
        return "unknown"
    if scheme == "kerberos" and token:
        return "unknown"
    return None


@dataclass(frozen=True)
class HostKeys:
    """What one host authenticates with: its NTLM user file and, in a Kerberos lab, its keytab."""

    ntlm_user_file: Path
    keytab: Path | None = None
    channel_bindings: GssChannelBindings | None = None


def _keytab_credential(keytab: Path, *, replay_cache: bool = True) -> Any:
    import gssapi

    # MIT's credential store: accept with any key of this host's own keytab, no process-wide KRB5_KTNAME
    store: dict[bytes | str, bytes | str] = {"keytab": f"FILE:{keytab}"}
    if not replay_cache:
        store["rcache"] = "none:"
    return gssapi.Credentials(usage="accept", store=store)


class Acceptor:
    """One connection's server context: the handshake, then wrap/unwrap of sealed messages."""

    def __init__(self, mechanism: str, keys: HostKeys, first_token: bytes = b"") -> None:
        self.mechanism = mechanism  # ntlm | kerberos | negotiate
        self._keys = keys
        cbt = keys.channel_bindings
        try:
            with user_file_env(keys.ntlm_user_file):
                if mechanism == "ntlm":
                    self._ctx = spnego.server(
                        protocol="ntlm", options=spnego.NegotiateOptions.use_ntlm, channel_bindings=cbt
                    )
                    return
                if mechanism == "kerberos":
                    if keys.keytab is None:
                        raise AuthSetupError("Kerberos is not enabled on this listener")
                    self._ctx = self._kerberos(keys.keytab, cbt)
                    return
                # pyspnego's acceptor picks the first of the contexts it is given: offer only what the
                # client's NegTokenInit lists, in the client's order (RFC 4178: the initiator's preference)
                contexts: dict[Any, Any] = {}
                for mech in _offered(first_token, kerberos=keys.keytab is not None):
                    if mech is GSSMech.kerberos:
                        assert keys.keytab is not None
                        contexts[mech] = self._kerberos(keys.keytab, cbt)
                    else:
                        contexts[mech] = spnego.server(
                            protocol="ntlm", options=spnego.NegotiateOptions.use_ntlm, channel_bindings=cbt
                        )
                if not contexts:
                    raise AuthSetupError("no common mechanism")
                self._ctx = spnego.server(
                    protocol="negotiate",
                    options=spnego.NegotiateOptions.use_negotiate,
                    channel_bindings=cbt,
                    _negotiate_contexts=contexts,
                )
        except (SpnegoError, OSError) as exc:
            raise AuthSetupError(type(exc).__name__) from None
        except Exception as exc:  # gssapi.exceptions.GSSError: the keytab is missing or unreadable
            if type(exc).__module__.startswith("gssapi"):
                raise AuthSetupError(f"keytab: {exc}") from None
            raise

    @staticmethod
    def _kerberos(keytab: Path, cbt: GssChannelBindings | None) -> Any:
        return spnego.server(
            protocol="kerberos",
            options=spnego.NegotiateOptions.use_gssapi,
            channel_bindings=cbt,
            _gssapi_credential=_keytab_credential(keytab),
        )

    def step(self, token: bytes) -> bytes | None:
        """Process one token from the client; return the reply token (a challenge, or the mutual-auth proof)."""
        try:
            with user_file_env(self._keys.ntlm_user_file):
                return self._ctx.step(token)
        except SpnegoError as exc:
            base = exc.base_error
            raise AuthRejectedError(_reason(exc), getattr(base, "token", None)) from None
        except AttributeError:
            # pyspnego reads the flags of a context MIT left unestablished: MIT refused the AP-REQ (e.g.
            # KRB_AP_ERR_SKEW) and made a KRB-ERROR for the client, which pyspnego drops
            raise AuthRejectedError("Kerberos AP-REQ refused", self._error_token(token)) from None
        except (ValueError, struct.error, IndexError, KeyError, StopIteration) as exc:  # a malformed token
            raise AuthRejectedError(type(exc).__name__) from None

    def _error_token(self, token: bytes) -> bytes | None:
        """The KRB-ERROR MIT answers a refused raw Kerberos token with (SPNEGO: none, a bare 401)."""
        if self.mechanism != "kerberos" or self._keys.keytab is None:
            return None
        import gssapi

        # the same check again, without the replay cache that now holds this authenticator
        credential = _keytab_credential(self._keys.keytab, replay_cache=False)
        retry = gssapi.SecurityContext(creds=credential, usage="accept")
        try:
            answer = retry.step(token)
        except gssapi.raw.GSSError:
            return None
        return None if answer is None else bytes(answer)

    @property
    def complete(self) -> bool:
        return bool(self._ctx.complete)

    @property
    def client_principal(self) -> str | None:
        return self._ctx.client_principal

    @property
    def negotiated(self) -> str:
        """ntlm or kerberos: the mechanism in use (inside SPNEGO too)."""
        return str(self._ctx.negotiated_protocol or self.mechanism)

    def seal(self, message: bytes, protocol: str, *, garble: str | None = None) -> bytes:
        """The MS-WSMV multipart body carrying ``message`` sealed. ``garble`` damages it as the lab fault
        ``garbled-seal`` asks: ``payload``, the last byte of the sealed message flipped (its signature no
        longer matches); ``short``, one byte in all; ``stub``, the binary part cut inside its 4-byte
        signature length."""
        wrapped = self._ctx.wrap_winrm(message)
        head = (
            BOUNDARY + b"\r\n"
            b"\tContent-Type: " + protocol.encode() + b"\r\n"
            b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length="
            + str(len(message)).encode()
            + b"\r\n"
            + BOUNDARY
            + b"\r\n"
            + _OCTET
        )
        sealed = struct.pack("<I", len(wrapped.header)) + wrapped.header + wrapped.data
        if garble == "short":
            return head[:1]
        if garble == "stub":
            sealed = sealed[:2]
        elif garble == "payload":
            sealed = sealed[:-1] + bytes([sealed[-1] ^ 0xFF])
        return head + sealed + BOUNDARY + b"--\r\n"

    def unseal(self, body: bytes) -> bytes:
        """The SOAP message inside a sealed multipart body; raise AuthRejectedError if it is not one."""
        head, sep, rest = body.partition(_OCTET)
        marker = b"Length="
        if not sep or marker not in head or not rest.endswith(BOUNDARY + b"--\r\n"):
            raise AuthRejectedError("not an encrypted multipart body")
        try:
            length = int(head.split(marker, 1)[1].split(b"\r\n", 1)[0])
            payload = rest[: -len(BOUNDARY + b"--\r\n")]
            header_len = struct.unpack("<I", payload[:4])[0]
            header, sealed = payload[4 : 4 + header_len], payload[4 + header_len :]
            message = self._ctx.unwrap_winrm(header, sealed)
        except (SpnegoError, ValueError, struct.error) as exc:
            raise AuthRejectedError(type(exc).__name__) from None
        if len(message) != length:
            raise AuthRejectedError("sealed length does not match OriginalContent")
        return message


def _offered(token: bytes, *, kerberos: bool) -> list[Any]:
    """The mechanisms a SPNEGO NegTokenInit offers that this host serves, in the client's order."""
    found = {GSSMech.ntlm: token.find(_NTLM_OID)}
    if kerberos:
        positions = [p for p in (token.find(oid) for oid in _KRB5_OIDS) if p >= 0]
        found[GSSMech.kerberos] = min(positions, default=-1)
    return [mech for mech, at in sorted(found.items(), key=lambda item: item[1]) if at >= 0]


def sealed_content_type(protocol: str) -> str:
    return f'multipart/encrypted;protocol="{protocol}";boundary="Encrypted Boundary"'


def _reason(exc: SpnegoError) -> str:
    base = exc.base_error
    return f"{type(exc).__name__}: {base}" if base is not None else type(exc).__name__
