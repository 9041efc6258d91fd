"""NTLM for the lab server: per-host user files for pyspnego's acceptor, and TLS channel bindings."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from spnego.channel_bindings import GssChannelBindings

from orchestrator.privatefile import write_private

# pyspnego's acceptor reads its users from the file named by NTLM_USER_FILE, a process-wide variable,
# when it is created and when it checks the Authenticate message. Each host has its own user file, so
# both steps run under this lock with the variable pointing at that host's file.
_ENV_LOCK = threading.Lock()


def write_user_file(path: Path, users: dict[str, str]) -> None:
    """Write ``DOMAIN:USER:PASSWORD`` lines (0600) for ``users`` (name -> password)."""
    lines = []
    for name, password in users.items():
        domain, _, user = name.rpartition("\\")
        lines.append(f"{domain}:{user}:{password}\n")
    write_private(path, "".join(lines).encode())


@contextmanager
def user_file_env(path: Path) -> Iterator[None]:
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
