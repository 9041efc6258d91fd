"""The resolved inventory: what every other layer reads. Built only by ``inventory.loader``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any


class Role(StrEnum):
    MANAGEMENT_SERVER = "management_server"
    DW_MANAGEMENT_SERVER = "dw_management_server"
    SELF_SERVICE_PORTAL = "self_service_portal"


@dataclass(frozen=True)
class Location:
    """Where a value came from, for error messages: file, 1-based line, dotted key."""

    file: str
    line: int | None = None
    key: str | None = None


@dataclass(frozen=True)
class SecretRef:
    """A reference to a secret (``env:``, ``file:``, ``prompt``, ``command:``, ``vault:``) or,
    in a lab inventory only, a plaintext value (``scheme == "plain"``).

    Resolution lives in ``orchestrator.secretrefs.resolve``; this is only the parsed reference.
    ``repr`` never shows a plaintext value.
    """

    scheme: str  # env | file | prompt | command | vault | plain
    target: str = field(repr=False)  # env var name, path, argv string, "FILE#key", or plaintext
    location: Location | None = None

    def describe(self) -> str:
        """A safe label for messages and run records: never the plaintext."""
        if self.scheme == "plain":
            return "plain (lab)"
        if self.scheme == "prompt":
            return "prompt"
        return f"{self.scheme}:{self.target}"


@dataclass(frozen=True)
class Credential:
    username: str
    password: SecretRef | None  # None: Kerberos with a keytab, or the user's own tickets
    keytab: str | None = None  # Kerberos keytab file (resolved path); its contents are never read by keyfleet


@dataclass(frozen=True)
class Section:
    """A settings mapping the inventory carries for the optional part that owns it (the lab's ``lab:``
    sections) without reading it: the values the schema converted, defaults filled in, and where each stands."""

    values: tuple[tuple[str, Any], ...]
    where: Location  # the mapping itself (a host's: the host)
    locations: tuple[tuple[str, Location], ...] = ()  # the keys given in the file

    def get(self, name: str) -> Any:
        return dict(self.values)[name]

    def location(self, name: str) -> Location:
        """Where ``name`` is set (file, line, dotted key); the mapping's place when it is a default."""
        return dict(self.locations).get(name, Location(self.where.file, self.where.line, f"{self.where.key}.{name}"))


@dataclass(frozen=True)
class HostConfig:
    """One server with every setting resolved (defaults -> management group -> host)."""

    name: str
    group: str
    role: Role
    address: str
    port: int
    scheme: str  # https | http
    transport: str  # ntlm | kerberos | negotiate | credssp | basic | certificate
    cert_validation: bool
    ca_bundle: str | None  # a file path (the lab's CA already substituted)
    cert_thumbprint: str | None  # hex, SHA-256 (64) or SHA-1 (40), no separators, lower case
    allow_insecure: bool
    credential: Credential | None
    client_cert: str | None  # certificate transport: PEM paths
    client_key: str | None
    connect_timeout: float  # seconds
    operation_timeout: float  # seconds, WS-Man OperationTimeout of one Receive
    host_timeout: float  # seconds, the deadline of all work on this host in one run
    retries: int
    tool_path: str | None  # SecureStorageBackup.exe on the server; None: search known locations
    tool_timeout: float  # seconds
    tool_input: str  # auto | stdin | console: how the password reaches SecureStorageBackup.exe
    lab: Section | None  # the host's lab settings (lab inventories only), read by the lab
    location: Location
    kerberos_hostname: str = ""  # host part of the service principal HTTP/<kerberos_hostname>
    realm: str | None = None  # Kerberos realm of the credential's user; None: krb5.conf's default
    proxy: str | None = None  # HTTP proxy URL for WinRM; None: no proxy (the environment is never read)

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{self.address}:{self.port}/wsman"

    @property
    def computer_name(self) -> str:
        """The server's computer name as Windows reports it (``$env:COMPUTERNAME``, its NetBIOS name): the
        first label of the host name, upper-case. The inventory refuses a first label of more than 15
        characters, the NetBIOS limit, so no name needs cutting."""
        return netbios_name(self.name)


def netbios_name(name: str) -> str:
    """``name``'s NetBIOS form (HostConfig.computer_name)."""
    return name.split(".")[0].upper()


@dataclass(frozen=True)
class ManagementGroup:
    name: str
    description: str
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class ShareConfig:
    url: str  # local path (resolved against the inventory's folder) or smb://server[:port]/share/path
    credential: Credential | None = None
    require_encryption: bool = False


@dataclass(frozen=True)
class BackupPolicy:
    password: SecretRef | None  # None: ask (hidden prompt, twice)
    password_id: str
    max_age: timedelta


@dataclass(frozen=True)
class SigningConfig:
    private_key: SecretRef | None  # Ed25519, PEM or base64 of the 32 raw bytes
    public_key: str  # PEM or base64 of the 32 raw bytes; kept in the inventory, not on the share


@dataclass(frozen=True)
class Inventory:
    path: Path
    groups: dict[str, ManagementGroup]
    hosts: dict[str, HostConfig]  # in file order
    share: ShareConfig | None
    backup: BackupPolicy
    signing: SigningConfig | None
    lab: Section | None  # present in a lab inventory: an emulated fleet (orchestrator.emulation)
