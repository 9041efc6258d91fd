"""The one inventory schema: every setting with its type, default, scopes and description.

The loader validates, applies defaults and inherits (defaults -> management group -> host) from
these declarations, and the README's settings reference is rendered from them.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from orchestrator.inventory.model import Role


class Invalid(Exception):
    """A value breaks a setting's rule; the loader adds file, line and key."""


class Scope(StrEnum):
    """Where a setting may appear."""

    TOP = "top level"
    LAB = "lab"
    SHARE = "share"
    BACKUP = "backup"
    SIGNING = "signing"
    DEFAULTS = "defaults"
    GROUP = "group"
    HOST = "host"
    CREDENTIAL = "credential"
    HOST_LAB = "host lab"


class Kind(StrEnum):
    """The YAML shape of a value and how the loader converts it."""

    STR = "string"
    BOOL = "boolean"
    INT = "integer"
    DURATION = "duration"
    SECRET = "secret reference"
    CHOICE = "choice"
    PATH = "path"
    STR_LIST = "list of strings"
    MAPPING = "mapping"
    GROUPS = "mapping of management groups"
    HOSTS = "mapping of hosts"


HOST_SCOPES = (Scope.DEFAULTS, Scope.GROUP, Scope.HOST)


@dataclass(frozen=True)
class Setting:
    name: str
    kind: Kind
    scopes: tuple[Scope, ...]
    description: str
    default: Any = None
    default_doc: str | None = None  # how a computed default reads in the reference
    required: bool = False
    choices: tuple[str, ...] = ()
    check: Callable[[Any], Any] | None = None  # normalises the converted value or raises Invalid
    section: Scope | None = None  # MAPPING: the scope of its keys


# -- validators ---------------------------------------------------------------------------------

_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_GROUP_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_WINDOWS_DEVICES = frozenset(
    ["con", "prn", "aux", "nul"] + [f"com{i}" for i in range(1, 10)] + [f"lpt{i}" for i in range(1, 10)]
)
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_HEX = re.compile(r"^[0-9a-f]+$")
MAX_DURATION = 3650 * 86400.0


def check_dns_name(value: str, *, netbios: bool = True) -> str:
    """A DNS name whose labels are [A-Za-z0-9-]; host names' first label must also fit NetBIOS (15)."""
    if not value:
        raise Invalid("must not be empty")
    if len(value) > 253:
        raise Invalid(f"is {len(value)} characters long; a DNS name has at most 253")
    labels = value.split(".")
    for label in labels:
        if not label:
            raise Invalid(f"{value!r} has an empty label (two dots or a leading/trailing dot)")
        if len(label) > 63:
            raise Invalid(f"label {label[:20]!r}... is longer than 63 characters")
        if not _LABEL.match(label):
            raise Invalid(
                f"{value!r} is not a DNS name: labels use A-Z, a-z, 0-9 and '-', and do not start or end with '-'"
            )
    if netbios and len(labels[0]) > 15:
        raise Invalid(f"{labels[0]!r} is longer than 15 characters, the NetBIOS computer name limit")
    if netbios and labels[0].lower() in _WINDOWS_DEVICES:
        raise Invalid(f"{value!r} is a reserved Windows device name")
    return value


def check_group_name(value: str) -> str:
    """Group names become folder names on the share: [A-Za-z0-9_.-]+, not only dots."""
    if not _GROUP_NAME.match(value):
        raise Invalid(
            f"{value!r} is not a valid management group name: use A-Z, a-z, 0-9, '_', '.', '-' "
            "(it becomes a folder on the share: no separators or drive letters)"
        )
    if set(value) == {"."} or value.endswith("."):
        raise Invalid(f"{value!r} is not a safe folder name (no '..', no trailing dot)")
    if value.split(".")[0].lower() in _WINDOWS_DEVICES:
        raise Invalid(f"{value!r} is a reserved Windows device name")
    return value


def check_address(value: str) -> str:
    """A DNS name or an IPv4 address."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return check_dns_name(value, netbios=False)
    if ip.version == 6:
        raise Invalid("IPv6 literal addresses are not supported; use a DNS name")
    return value


def check_port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise Invalid(f"port {value} is outside 1-65535")
    return value


def check_retries(value: int) -> int:
    if not 0 <= value <= 10:
        raise Invalid(f"retries {value} is outside 0-10")
    return value


def check_positive(value: float) -> float:
    if value <= 0:
        raise Invalid("must be greater than 0s")
    return value


def check_thumbprint(value: str) -> str:
    """Normalise a certificate pin: strip colons and spaces, lower case, 40 (SHA-1) or 64 (SHA-256) hex."""
    hexed = re.sub(r"[\s:]", "", value).lower()
    if not _HEX.match(hexed) or len(hexed) not in (40, 64):
        raise Invalid("must be a SHA-1 (40 hex digits) or SHA-256 (64 hex digits) thumbprint")
    return hexed


def check_not_empty(value: str) -> str:
    if not value.strip():
        raise Invalid("must not be empty")
    return value


def check_public_key(value: str) -> str:
    """An Ed25519 public key: PEM, or base64 of the 32 raw bytes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    text = value.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise Invalid("is not an Ed25519 public key")
            return text
        raw = base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error, UnicodeEncodeError):
        raise Invalid("is not a PEM or base64 Ed25519 public key") from None
    if len(raw) == 32:
        return text
    try:
        key = serialization.load_der_public_key(raw)
    except ValueError:
        raise Invalid("base64 must hold the 32 raw bytes of an Ed25519 public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise Invalid("is not an Ed25519 public key")
    return text


def parse_duration(value: object) -> float:
    """``30d``, ``12h``, ``90m``, ``45s``, ``0s`` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise Invalid("must be a duration such as 30d, 12h, 90m, 45s or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value.strip().lower())):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise Invalid("must be a duration such as 30d, 12h, 90m, 45s or a number of seconds")
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        raise Invalid("must be a finite duration of 0s or more")
    if seconds > MAX_DURATION:
        raise Invalid("must be at most 3650d")
    return seconds


# -- the schema -------------------------------------------------------------------------------

ROLES = tuple(r.value for r in Role)
SCHEMES = ("https", "http")
TRANSPORTS = ("ntlm", "kerberos", "credssp", "basic", "certificate")
UNENCRYPTED_TRANSPORTS = ("basic", "certificate")  # cannot seal messages over plain HTTP

SETTINGS: tuple[Setting, ...] = (
    # top level
    Setting(
        "lab",
        Kind.MAPPING,
        (Scope.TOP,),
        "Present only in lab inventories: an emulated fleet. Plaintext secrets are allowed only when it is present.",
        section=Scope.LAB,
    ),
    Setting("share", Kind.MAPPING, (Scope.TOP,), "The backup share.", section=Scope.SHARE),
    Setting("backup", Kind.MAPPING, (Scope.TOP,), "The backup policy.", section=Scope.BACKUP),
    Setting("signing", Kind.MAPPING, (Scope.TOP,), "The manifest signing key pair.", section=Scope.SIGNING),
    Setting("defaults", Kind.MAPPING, (Scope.TOP,), "Host settings inherited by every host.", section=Scope.DEFAULTS),
    Setting(
        "management_groups",
        Kind.GROUPS,
        (Scope.TOP,),
        "SCSM management groups by name ([A-Za-z0-9_.-]+), each with its hosts.",
        required=True,
    ),
    # lab
    Setting("serve", Kind.BOOL, (Scope.LAB,), "Start the embedded lab fleet for each command.", True),
    Setting(
        "state_dir",
        Kind.PATH,
        (Scope.LAB,),
        "Lab CA, certificates and simulated registries (relative to the inventory's folder).",
        "lab-state",
    ),
    Setting("seed", Kind.INT, (Scope.LAB,), "Seed of the simulated keys.", 0),
    # share
    Setting(
        "url",
        Kind.STR,
        (Scope.SHARE,),
        "Local path (relative to the inventory's folder), "
        "`smb://server[:port]/share/path` or `\\\\server\\share\\path`.",
        required=True,
        check=check_not_empty,
    ),
    Setting(
        "credential",
        Kind.MAPPING,
        (Scope.SHARE,),
        "`{username, password}` for an smb share. `KEYFLEET_SHARE_USER` and `KEYFLEET_SHARE_PASSWORD` override it.",
        section=Scope.CREDENTIAL,
    ),
    Setting("require_encryption", Kind.BOOL, (Scope.SHARE,), "Require SMB 3 encryption.", False),
    # backup
    Setting(
        "password",
        Kind.SECRET,
        (Scope.BACKUP,),
        "Reference to the backup password; none: a hidden "
        "prompt, asked twice. `KEYFLEET_BACKUP_PASSWORD` overrides it.",
    ),
    Setting(
        "password_id",
        Kind.STR,
        (Scope.BACKUP,),
        "Label of which password opens the key files.",
        "default",
        check=check_not_empty,
    ),
    Setting("max_age", Kind.DURATION, (Scope.BACKUP,), "A backup older than this is stale.", "30d"),
    # signing
    Setting(
        "private_key",
        Kind.SECRET,
        (Scope.SIGNING,),
        "Reference to the Ed25519 manifest signing key "
        "(PEM or base64 of the 32 raw bytes); none: the manifest cannot be signed.",
    ),
    Setting(
        "public_key",
        Kind.STR,
        (Scope.SIGNING,),
        "The Ed25519 public key (PEM or base64 of the 32 raw bytes) the audit verifies the manifest with.",
        required=True,
        check=check_public_key,
    ),
    # group only
    Setting("description", Kind.STR, (Scope.GROUP,), "Free text.", ""),
    Setting(
        "hosts",
        Kind.HOSTS,
        (Scope.GROUP,),
        "The group's servers by host name (a DNS name whose first label has at most 15 characters).",
        required=True,
    ),
    # host settings
    Setting(
        "credential",
        Kind.MAPPING,
        HOST_SCOPES,
        "WinRM `{username, password}`; required for ntlm, basic and credssp. Inherited mappings merge key by key.",
        section=Scope.CREDENTIAL,
    ),
    Setting(
        "username",
        Kind.STR,
        (Scope.CREDENTIAL,),
        "User name, e.g. `CONTOSO\\svc-keyfleet`.",
        required=True,
        check=check_not_empty,
    ),
    Setting("password", Kind.SECRET, (Scope.CREDENTIAL,), "Secret reference to the password.", required=True),
    Setting("role", Kind.CHOICE, HOST_SCOPES, "SCSM role of the server.", required=True, choices=ROLES),
    Setting(
        "address",
        Kind.STR,
        HOST_SCOPES,
        "DNS name or IPv4 address to connect to.",
        default_doc="the host name",
        check=check_address,
    ),
    Setting(
        "port", Kind.INT, HOST_SCOPES, "WinRM listener port.", default_doc="5985 (http), 5986 (https)", check=check_port
    ),
    Setting("scheme", Kind.CHOICE, HOST_SCOPES, "WinRM listener scheme.", "http", choices=SCHEMES),
    Setting(
        "transport",
        Kind.CHOICE,
        HOST_SCOPES,
        "WinRM authentication. `basic` and `certificate` need https.",
        "ntlm",
        choices=TRANSPORTS,
    ),
    Setting("cert_validation", Kind.BOOL, HOST_SCOPES, "Validate the listener certificate (https).", True),
    Setting(
        "ca_bundle",
        Kind.PATH,
        HOST_SCOPES,
        "CA file for https; the word `lab` means the lab CA at `<lab.state_dir>/ca.pem`.",
        default_doc="the system store",
    ),
    Setting(
        "cert_thumbprint",
        Kind.STR,
        HOST_SCOPES,
        "Pin of the listener certificate: SHA-256 or SHA-1 hex (colons and spaces allowed).",
        check=check_thumbprint,
    ),
    Setting(
        "allow_insecure",
        Kind.BOOL,
        HOST_SCOPES,
        "Allow Basic or certificate auth over plain http (warned on every run).",
        False,
    ),
    Setting("client_cert", Kind.PATH, HOST_SCOPES, "Client certificate PEM (certificate transport)."),
    Setting("client_key", Kind.PATH, HOST_SCOPES, "Client key PEM (certificate transport)."),
    Setting("connect_timeout", Kind.DURATION, HOST_SCOPES, "TCP/TLS connect timeout.", "10s", check=check_positive),
    Setting(
        "operation_timeout",
        Kind.DURATION,
        HOST_SCOPES,
        "WS-Man OperationTimeout of one Receive.",
        "20s",
        check=check_positive,
    ),
    Setting(
        "host_timeout",
        Kind.DURATION,
        HOST_SCOPES,
        "Deadline of all work on one host in one run.",
        "300s",
        check=check_positive,
    ),
    Setting("retries", Kind.INT, HOST_SCOPES, "Retries of transient failures (0-10).", 2, check=check_retries),
    Setting(
        "tool_path",
        Kind.STR,
        HOST_SCOPES,
        "Path of SecureStorageBackup.exe on the server.",
        default_doc="known install locations",
        check=check_not_empty,
    ),
    Setting(
        "tool_timeout",
        Kind.DURATION,
        HOST_SCOPES,
        "Hard timeout of SecureStorageBackup.exe.",
        "120s",
        check=check_positive,
    ),
    Setting(
        "lab",
        Kind.MAPPING,
        HOST_SCOPES,
        "Lab simulation of this server (lab inventories only).",
        section=Scope.HOST_LAB,
    ),
    # host lab
    Setting("version", Kind.STR, (Scope.HOST_LAB,), "Simulated SCSM version.", "10.22.1068.0", check=check_not_empty),
    Setting("admin", Kind.BOOL, (Scope.HOST_LAB,), "Whether the WinRM user is an administrator.", True),
    Setting("tool_installed", Kind.BOOL, (Scope.HOST_LAB,), "Whether SecureStorageBackup.exe exists.", True),
    Setting(
        "tool_path",
        Kind.STR,
        (Scope.HOST_LAB,),
        "Where the simulated tool lives.",
        default_doc="the SCSM install folder",
    ),
    Setting(
        "faults",
        Kind.STR_LIST,
        (Scope.HOST_LAB,),
        "Fault specs, e.g. `latency:0.5`, `http500:Receive`, `tool-hanging`.",
        (),
    ),
)


@functools.cache
def settings_for(scope: Scope) -> dict[str, Setting]:
    """The settings allowed in one scope, by name."""
    return {s.name: s for s in SETTINGS if scope in s.scopes}


_SECTION_TITLES = {
    Scope.TOP: "",
    Scope.LAB: "lab.",
    Scope.SHARE: "share.",
    Scope.BACKUP: "backup.",
    Scope.SIGNING: "signing.",
    Scope.CREDENTIAL: "credential.",
    Scope.HOST_LAB: "lab.",
}


def _default_text(setting: Setting) -> str:
    if setting.default_doc is not None:
        return setting.default_doc
    if setting.required:
        return "required"
    if setting.default is None:
        return "none"
    if isinstance(setting.default, bool):
        return str(setting.default).lower()
    if setting.default == ():
        return "[]"
    return f"`{setting.default}`" if setting.default != "" else '""'


def settings_reference_markdown() -> str:
    """The README's settings reference, rendered from the schema."""
    lines = [
        "| Setting | Where | Type | Default | Description |",
        "|---|---|---|---|---|",
    ]
    seen: set[tuple[str, Scope]] = set()
    for setting in SETTINGS:
        scope = setting.scopes[0]
        if (setting.name, scope) in seen:
            continue
        seen.add((setting.name, scope))
        if scope in HOST_SCOPES and scope is not Scope.GROUP:
            where, prefix = "defaults, group, host", ""
        elif scope is Scope.GROUP:
            where, prefix = "group", ""
        elif scope is Scope.HOST_LAB:
            where, prefix = "defaults, group, host", "lab."
        elif scope is Scope.CREDENTIAL:
            where, prefix = "share, defaults, group, host", "credential."
        else:
            where, prefix = "top level" if scope is Scope.TOP else scope.value, _SECTION_TITLES[scope]
        kind = setting.kind.value
        if setting.choices:
            kind = " \\| ".join(f"`{c}`" for c in setting.choices)
        description = setting.description.replace("|", "\\|")
        default = _default_text(setting)
        lines.append(f"| `{prefix}{setting.name}` | {where} | {kind} | {default} | {description} |")
    lines.append("")
    lines.append(
        "Durations: `30d`, `12h`, `90m`, `45s`, `0s` or a number of seconds. Secret references: "
        "`env:NAME`, `file:PATH` (mode 0600), `prompt`, `command:ARGV...`, `vault:FILE#key`; any other "
        "string in a secret position is plaintext, allowed only in a lab inventory. Top-level keys "
        "starting with `x-` are ignored (a place for YAML anchors); `<<` merge keys work."
    )
    return "\n".join(lines) + "\n"
