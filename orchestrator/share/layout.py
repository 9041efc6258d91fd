"""Where things live on a backup share: key file and run record paths, entry ids, name validation."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from orchestrator.errors import ConfigError
from orchestrator.privatefile import temporary_name as temporary_name  # the one writer names them

MANIFEST = "manifest.json"
RUNS_DIR = "runs"
LOCK_NAME = ".keyfleet.lock"
KEY_SUFFIX = ".bin"
MARKER_SUFFIX = ".running"

_STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_RUN_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")
_KEY_FILE = re.compile(r"(?P<stamp>\d{8}T\d{6}Z)-(?P<sha12>[0-9a-f]{12})\.bin")
_TEMPORARY = re.compile(r"\..+\.tmp-[0-9a-f]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def validate_name(value: str, what: str) -> str:
    """Return ``value`` if it is safe as one path component on every backend, else raise ConfigError.

    ``what`` names the value in the message (e.g. ``host name``). Rejected: empty names, path
    separators, ``..``, drive letters and other ``:``, control characters, a leading dot or dash,
    and anything outside ``[A-Za-z0-9_.-]``.
    """
    problem = None
    if not value:
        problem = "is empty"
    elif _CONTROL.search(value):
        problem = "contains a control character"
    elif "/" in value or "\\" in value:
        problem = "contains a path separator"
    elif ":" in value:
        problem = "contains ':' (a drive letter or stream name)"
    elif ".." in value:
        problem = "contains '..'"
    elif not _SAFE_NAME.fullmatch(value):
        problem = "must start with a letter or digit and contain only letters, digits, '_', '.', '-'"
    if problem:
        raise ConfigError(f"{what} {value!r} {problem}; it cannot be used as a name on the share")
    return value


def validate_path(path: str) -> str:
    """Check a share-relative, '/'-separated path: every component valid, nothing absolute."""
    if not path or path.startswith("/"):
        raise ConfigError(f"share path {path!r} must be relative")
    for part in path.split("/"):
        validate_name(part, "share path component")
    return path


def format_time(moment: datetime) -> str:
    """``yyyymmddTHHMMSSZ`` in UTC, as used in key file names and run ids."""
    return moment.astimezone(UTC).strftime(_STAMP_FORMAT)


def parse_time(stamp: str) -> datetime:
    return datetime.strptime(stamp, _STAMP_FORMAT).replace(tzinfo=UTC)


def _check_sha256(sha256: str) -> str:
    if not _SHA256.fullmatch(sha256):
        raise ConfigError(f"{sha256!r} is not a lower-case hex SHA-256")
    return sha256


def key_file_path(group: str, role: str, host: str, created: datetime, sha256: str) -> str:
    """``<group>/<role>/<host>/<UTC yyyymmddTHHMMSSZ>-<sha256[:12]>.bin``."""
    name = f"{format_time(created)}-{_check_sha256(sha256)[:12]}{KEY_SUFFIX}"
    group = validate_name(group, "management group")
    return f"{group}/{validate_name(role, 'role')}/{validate_name(host, 'host name')}/{name}"


def entry_id(host: str, created: datetime, sha256: str) -> str:
    """``<host>-<yyyymmddTHHMMSSZ>-<sha256[:12]>``: unique per host, time and content."""
    return f"{validate_name(host, 'host name')}-{format_time(created)}-{_check_sha256(sha256)[:12]}"


@dataclass(frozen=True)
class KeyFileName:
    """The parts of a key file path that follows the layout."""

    group: str
    role: str
    host: str
    created: datetime
    sha12: str


def parse_key_file_path(path: str) -> KeyFileName | None:
    """The parts of ``path`` if it is a key file path of the layout, else None."""
    parts = path.split("/")
    if len(parts) != 4:
        return None
    match = _KEY_FILE.fullmatch(parts[3])
    if not match or not all(_SAFE_NAME.fullmatch(p) and ".." not in p for p in parts[:3]):
        return None
    try:
        created = parse_time(match["stamp"])
    except ValueError:
        return None
    return KeyFileName(parts[0], parts[1], parts[2], created, match["sha12"])


def run_record_path(run_id: str) -> str:
    if not _RUN_ID.fullmatch(run_id):
        raise ConfigError(f"run id {run_id!r} is not of the form YYYYmmddTHHMMSSZ-xxxxxx")
    return f"{RUNS_DIR}/{run_id}.json"


def run_marker_path(run_id: str) -> str:
    """Where a run under way says so (share/runrecord.py RunMarker): beside its record-to-be."""
    return run_record_path(run_id).removesuffix(".json") + MARKER_SUFFIX


def marker_run_id(path: str) -> str | None:
    """The run id of a run marker's path, None for any other path."""
    name = path.removeprefix(f"{RUNS_DIR}/")
    run_id = name.removesuffix(MARKER_SUFFIX)
    return run_id if name != path and run_id != name and _RUN_ID.fullmatch(run_id) else None


def is_run_record_path(path: str) -> bool:
    name = path.removeprefix(f"{RUNS_DIR}/")
    return name != path and name.endswith(".json") and bool(_RUN_ID.fullmatch(name[: -len(".json")]))


def is_temporary(name: str) -> bool:
    """Whether a file name (last path component) is a writer's temporary name."""
    return bool(_TEMPORARY.fullmatch(name))
