"""The settings table: every inventory setting with its type, default, scopes and description.

The loader validates, applies defaults and inherits (defaults -> management group -> host) from
these declarations; ``inventory.reference`` renders the README's settings reference from them.
The two ``lab`` mappings are hooks for the lab plug-in: it declares and reads their keys itself
(``orchestrator.lab.settings``, through ``orchestrator.emulation``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from orchestrator.inventory.model import Role
from orchestrator.inventory.values import (
    check_address,
    check_keytab,
    check_not_empty,
    check_operation_timeout,
    check_port,
    check_positive,
    check_proxy,
    check_public_key,
    check_realm,
    check_retries,
    check_thumbprint,
)


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
    FILE = "path of an existing file"
    STR_LIST = "list of strings"
    MAPPING = "mapping"
    GROUPS = "mapping of management groups"
    HOSTS = "mapping of hosts"


HOST_SCOPES = (Scope.DEFAULTS, Scope.GROUP, Scope.HOST)
TOOL_INPUTS = ("auto", "stdin", "console")


@dataclass(frozen=True)
class Setting:
    """One setting: its YAML shape, where it may appear, its default and its rule."""

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
    plugin: bool = False  # MAPPING: opaque here, its keys declared and read by the lab plug-in (emulation.Lab)


ROLES = tuple(r.value for r in Role)
SCHEMES = ("https", "http")
TRANSPORTS = ("ntlm", "kerberos", "negotiate", "credssp", "basic", "certificate")
UNENCRYPTED_TRANSPORTS = ("basic", "certificate")  # cannot seal messages over plain HTTP
LAB_CA = "lab"  # ca_bundle: the lab CA at <lab.state_dir>/ca.pem, written when the lab starts

SETTINGS: tuple[Setting, ...] = (
    # top level
    Setting(
        "lab",
        Kind.MAPPING,
        (Scope.TOP,),
        "Present only in lab inventories: an emulated fleet. Plaintext secrets are allowed only when it is "
        "present and every host address (and an smb share's server) is a loopback IPv4 address (127.0.0.0/8).",
        section=Scope.LAB,
        plugin=True,
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
        "Reference to the backup password; none: a hidden prompt, asked twice. `KEYFLEET_BACKUP_PASSWORD` "
        "(the value) or `KEYFLEET_BACKUP_PASSWORD_FILE` (a 0600 file holding it) overrides it.",
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
        "WinRM `{username, password}` or `{username, keytab}`; required for ntlm, basic and credssp; for kerberos "
        "and negotiate without one, the user's own Kerberos tickets are used. Inherited mappings merge key by key.",
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
    Setting(
        "password",
        Kind.SECRET,
        (Scope.CREDENTIAL,),
        "Secret reference to the password (kerberos, negotiate: keyfleet gets its own ticket into a private "
        "credential cache removed after the run; none: the user's existing tickets).",
    ),
    Setting(
        "keytab",
        Kind.STR,
        (Scope.CREDENTIAL,),
        "`file:PATH` of a Kerberos keytab for unattended runs (kerberos, negotiate); never read by keyfleet itself.",
        check=check_keytab,
    ),
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
        "WinRM authentication. `basic` and `certificate` need https; `negotiate` is SPNEGO (Kerberos, else NTLM).",
        "ntlm",
        choices=TRANSPORTS,
    ),
    Setting(
        "domain",
        Kind.STR,
        HOST_SCOPES,
        "DNS domain of the servers: a host name without a dot gets it for its Kerberos service principal.",
        check=check_address,
    ),
    Setting(
        "kerberos_hostname",
        Kind.STR,
        HOST_SCOPES,
        "Host part of the service principal `HTTP/<kerberos_hostname>` (kerberos, negotiate).",
        default_doc="the host name, in `domain` if set",
        check=check_address,
    ),
    Setting(
        "realm",
        Kind.STR,
        HOST_SCOPES,
        "Kerberos realm of the credential's user (`user@REALM`).",
        default_doc="the realm in the username, else krb5.conf's default_realm",
        check=check_realm,
    ),
    Setting("cert_validation", Kind.BOOL, HOST_SCOPES, "Validate the listener certificate (https).", True),
    Setting(
        "ca_bundle",
        Kind.FILE,
        HOST_SCOPES,
        "CA file for https; the word `lab` means the lab CA at `<lab.state_dir>/ca.pem` (written when the lab starts).",
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
    Setting("client_cert", Kind.FILE, HOST_SCOPES, "Client certificate PEM (certificate transport)."),
    Setting("client_key", Kind.FILE, HOST_SCOPES, "Client key PEM (certificate transport)."),
    Setting("connect_timeout", Kind.DURATION, HOST_SCOPES, "TCP/TLS connect timeout.", "10s", check=check_positive),
    Setting(
        "operation_timeout",
        Kind.DURATION,
        HOST_SCOPES,
        "WS-Man OperationTimeout of one Receive (at most 60s, Windows' default MaxTimeoutms).",
        "20s",
        check=check_operation_timeout,
    ),
    Setting(
        "host_timeout",
        Kind.DURATION,
        HOST_SCOPES,
        "Deadline of all work on one host in one run.",
        "300s",
        check=check_positive,
    ),
    Setting(
        "proxy",
        Kind.STR,
        HOST_SCOPES,
        "HTTP proxy URL for WinRM, e.g. `http://proxy:3128`. Proxy environment variables are never read.",
        default_doc="none",
        check=check_proxy,
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
        "tool_input",
        Kind.CHOICE,
        HOST_SCOPES,
        "How the password reaches SecureStorageBackup.exe: `stdin`, `console` (a pseudo console, "
        "Windows Server 2019+), or `auto` (stdin, then the console if the tool reads masked keys).",
        "auto",
        choices=TOOL_INPUTS,
    ),
    Setting(
        "lab",
        Kind.MAPPING,
        HOST_SCOPES,
        "Lab simulation of this server (lab inventories only).",
        section=Scope.HOST_LAB,
        plugin=True,
    ),
)


@functools.cache
def settings_for(scope: Scope) -> dict[str, Setting]:
    """The settings allowed in one scope, by name."""
    return {s.name: s for s in SETTINGS if scope in s.scopes}
