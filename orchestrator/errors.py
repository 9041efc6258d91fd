"""Error types shared by every layer: one base class, exit codes, and per-host error kinds."""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    """What went wrong on one host; the summary, --json and run records group by it."""

    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    AUTH = "auth"
    TLS = "tls"
    PROTOCOL = "protocol"
    HTTP = "http"
    REMOTE = "remote"
    NOT_ADMIN = "not-admin"
    TOOL_MISSING = "tool-missing"
    TOOL_FAILED = "tool-failed"
    TOOL_TIMEOUT = "tool-timeout"
    DISK_FULL = "disk-full"
    CONSTRAINED_LANGUAGE = "constrained-language"
    REMOTE_SHELL_DISABLED = "remote-shell-disabled"
    CONSOLE_UNAVAILABLE = "console-unavailable"
    TOOL_INTERACTIVE = "tool-interactive"
    INTEGRITY = "integrity"
    ROLE_MISMATCH = "role-mismatch"
    NAME_MISMATCH = "name-mismatch"
    SHARE = "share"
    CONFIG = "config"
    INTERRUPTED = "interrupted"
    INTERNAL = "internal"

    @property
    def transient(self) -> bool:
        """Whether a retry may help (never for auth, role or integrity failures)."""
        return self in _TRANSIENT


_TRANSIENT = frozenset({ErrorKind.UNREACHABLE, ErrorKind.TIMEOUT, ErrorKind.HTTP})


class KeyfleetError(Exception):
    """Base of every error keyfleet raises on purpose; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class ConfigError(KeyfleetError):
    """Bad input: inventory, playbook, command line. Rendered as one line, exit code 2."""

    exit_code = 2

    def __init__(
        self, message: str, *, file: str | None = None, line: int | None = None, key: str | None = None
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.key = key
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file if self.line is None else f"{self.file}:{self.line}"
            where += ": "
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}"


class IntegrityError(KeyfleetError):
    """A stored backup or the manifest is not what it should be. Exit code 3."""

    exit_code = 3


class ShareError(KeyfleetError):
    """The backup share cannot be reached, read or written."""

    exit_code = 1


class ShareExistsError(ShareError):
    """A file that must never be overwritten already exists."""


class HostFailure(KeyfleetError):
    """One host's failure, as data: the kind, the host and a short reason (never a secret)."""

    def __init__(
        self,
        kind: ErrorKind,
        host: str,
        reason: str,
        *,
        scsm_version: str | None = None,
    ) -> None:
        self.kind = kind
        self.host = host
        self.reason = reason
        self.scsm_version = scsm_version  # what the server reported before it failed, if it got that far
        super().__init__(f"{host}: {kind}: {reason}")
