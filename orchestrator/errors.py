"""Error types shared by every layer: one base class, exit codes, and per-host error kinds."""

from __future__ import annotations

from enum import StrEnum

from orchestrator.secret import mask

REASON_LIMIT = 400  # characters of a host's failure reason: the console, --json and run records show it whole


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
    NO_KEY_FILE = "no-key-file"  # collect: no key file made with the wizard is waiting in the outbox
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
        # often a server's words (a WS-Man fault, a helper's error): one line, bounded, no secret
        self.reason = one_line(mask(reason), REASON_LIMIT)
        # what the server reported before it failed, if it got that far
        self.scsm_version = None if scsm_version is None else one_line(mask(scsm_version), 64)
        super().__init__(f"{host}: {kind}: {self.reason}")


def one_line(text: str, limit: int) -> str:
    """``text`` as one printable line of at most ``limit`` characters: a server's text can hold line
    breaks, terminal escapes (C0 and C1 controls) and bidirectional overrides that would forge or hide
    console lines, and be of any length. Controls, format characters and separators become spaces;
    runs of spaces one."""
    head = text[: limit * 2]  # bounded work whatever the server sent
    # str.isprintable: false for Unicode's "Other" (Cc, Cf: U+202E, ...) and "Separator" classes but space
    cleaned = head if head.isprintable() else "".join(c if c.isprintable() else " " for c in head)
    cleaned = " ".join(cleaned.split())
    return cleaned if len(cleaned) <= limit and len(text) <= limit * 2 else cleaned[: limit - 3] + "..."
