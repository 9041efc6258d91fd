"""NTLM for the lab server: a pyspnego acceptor per connection, and MS-WSMV message sealing."""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import spnego
from spnego.channel_bindings import GssChannelBindings
from spnego.exceptions import SpnegoError

from orchestrator.privatefile import write_private

PROTOCOL = "application/HTTP-SPNEGO-session-encrypted"
BOUNDARY = b"--Encrypted Boundary"
SEALED_CONTENT_TYPE = f'multipart/encrypted;protocol="{PROTOCOL}";boundary="Encrypted Boundary"'
_OCTET = b"\tContent-Type: application/octet-stream\r\n"

# pyspnego's acceptor reads its users from the file named by NTLM_USER_FILE, a process-wide variable,
# when it is created and when it checks the Authenticate message. Each host has its own user file, so
# both steps run under this lock with the variable pointing at that host's file.
_ENV_LOCK = threading.Lock()


class NTLMUnavailableError(Exception):
    """An NTLM token was malformed or the credentials did not match (answer 401)."""


class NTLMSetupError(Exception):
    """The server could not set up an NTLM context, e.g. its user file is gone (answer 401, as Windows does)."""


def write_user_file(path: Path, users: dict[str, str]) -> None:
    """Write ``DOMAIN:USER:PASSWORD`` lines (0600) for ``users`` (name -> password)."""
    lines = []
    for name, password in users.items():
        domain, _, user = name.rpartition("\\")
        lines.append(f"{domain}:{user}:{password}\n")
    write_private(path, "".join(lines).encode())


@contextmanager
def _user_file(path: Path) -> Iterator[None]:
    with _ENV_LOCK:
        previous = os.environ.get("NTLM_USER_FILE")
        os.environ["NTLM_USER_FILE"] = str(path)
        try:
            yield
        finally:
            if previous is None:
                del os.environ["NTLM_USER_FILE"]
            else:
                os.environ["NTLM_USER_FILE"] = previous


def tls_server_end_point(cert_der: bytes, hash_name: str) -> GssChannelBindings:
    """RFC 5929 channel bindings of a server certificate (hash: the certificate's signature hash)."""
    from cryptography.hazmat.primitives import hashes

    names: dict[str, hashes.HashAlgorithm] = {"sha384": hashes.SHA384(), "sha512": hashes.SHA512()}
    algorithm = names.get(hash_name.lower(), hashes.SHA256())  # RFC 5929: MD5/SHA-1 become SHA-256
    digest = hashes.Hash(algorithm)
    digest.update(cert_der)
    return GssChannelBindings(application_data=b"tls-server-end-point:" + digest.finalize())


class NTLMAcceptor:
    """One connection's NTLM server context: the handshake, then wrap/unwrap of sealed messages."""

    def __init__(self, user_file: Path, channel_bindings: GssChannelBindings | None) -> None:
        self._user_file = user_file
        try:
            with _user_file(user_file):
                self._ctx = spnego.server(
                    protocol="ntlm",
                    options=spnego.NegotiateOptions.use_ntlm,
                    channel_bindings=channel_bindings,
                )
        except SpnegoError as exc:
            raise NTLMSetupError(type(exc).__name__) from None

    def step(self, token: bytes) -> bytes | None:
        """Process one token from the client; return the reply token (the challenge) if any."""
        try:
            with _user_file(self._user_file):
                return self._ctx.step(token)
        except (SpnegoError, ValueError, struct.error) as exc:
            raise NTLMUnavailableError(type(exc).__name__) from None

    @property
    def complete(self) -> bool:
        return bool(self._ctx.complete)

    @property
    def client_principal(self) -> str | None:
        return self._ctx.client_principal

    def seal(self, message: bytes) -> bytes:
        """The MS-WSMV multipart body carrying ``message`` sealed."""
        wrapped = self._ctx.wrap(message, encrypt=True).data
        signature, sealed = wrapped[:16], wrapped[16:]
        return (
            BOUNDARY + b"\r\n"
            b"\tContent-Type: " + PROTOCOL.encode() + b"\r\n"
            b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length="
            + str(len(message)).encode()
            + b"\r\n"
            + BOUNDARY
            + b"\r\n"
            + _OCTET
            + struct.pack("<I", len(signature))
            + signature
            + sealed
            + BOUNDARY
            + b"--\r\n"
        )

    def unseal(self, body: bytes) -> bytes:
        """The SOAP message inside a sealed multipart body; raise NTLMUnavailableError if it is not one."""
        head, sep, rest = body.partition(_OCTET)
        marker = b"Length="
        if not sep or marker not in head or not rest.endswith(BOUNDARY + b"--\r\n"):
            raise NTLMUnavailableError("not an encrypted multipart body")
        try:
            length = int(head.split(marker, 1)[1].split(b"\r\n", 1)[0])
            payload = rest[: -len(BOUNDARY + b"--\r\n")]
            sig_len = struct.unpack("<I", payload[:4])[0]
            signature, sealed = payload[4 : 4 + sig_len], payload[4 + sig_len :]
            message = self._ctx.unwrap(signature + sealed).data
        except (SpnegoError, ValueError, struct.error) as exc:
            raise NTLMUnavailableError(type(exc).__name__) from None
        if len(message) != length:
            raise NTLMUnavailableError("sealed length does not match OriginalContent")
        return message
