"""NTLM for the lab server: per-host user files for pyspnego's acceptor."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
