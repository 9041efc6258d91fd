"""Asking the operator before a restore replaces a server's key (restore and runbooks)."""

from __future__ import annotations

import sys

from orchestrator.console import Ui
from orchestrator.errors import ConfigError
from orchestrator.jobs import restore
from orchestrator.share.manifest import format_iso


def require_terminal(how_to_skip: str) -> None:
    """A restore replaces a server's key: without a terminal to ask on, it needs explicit consent."""
    if not sys.stdin.isatty():
        raise ConfigError(
            f"a restore replaces the server's encryption key and must be confirmed, but there is no "
            f"terminal to ask on; {how_to_skip}"
        )


def ask_confirmation(ui: Ui, request: restore.RestoreRequest) -> bool:
    """Describe the restore and ask for ``yes`` on the terminal."""
    entry, host = request.entry, request.host
    ui.line(
        f"About to restore the encryption key of {host.name} ({host.role}, {host.endpoint}) from backup "
        f"{entry.id} taken {format_iso(entry.created)} (SCSM {entry.scsm_version or 'version unknown'}, "
        f"password label {entry.password_id}). The server's current key is replaced.",
        "bold",
    )
    print("Type yes to restore: ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() == "yes"
