"""Value checkers of inventory settings: names, addresses, ports, pins, keys, files and durations.

Each checker returns the (normalised) value or raises :class:`Invalid`; the loader adds the file,
line and key. Other layers reuse :func:`parse_duration` for command-line durations.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from urllib.parse import urlsplit


class Invalid(Exception):
    """A value breaks a setting's rule; the loader adds file, line and key."""


LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")

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


def is_loopback(address: str) -> bool:
    """Whether ``address`` is an IPv4 literal in 127.0.0.0/8 (names are not resolved: they do not count)."""
    try:
        return ipaddress.ip_address(address) in LOOPBACK
    except ValueError:
        return False


def check_file(path: str, *, relative: bool = False) -> str:
    """An existing, readable regular file; ``path`` is already resolved (``relative``: against the
    inventory's folder, which the error then says)."""
    shown = path if path.isprintable() else repr(path)  # the error stays one line
    if not os.path.exists(path):
        hint = " (relative paths start at the inventory's folder)" if relative else ""
        raise Invalid(f"file {shown} does not exist{hint}")
    if not os.path.isfile(path):
        raise Invalid(f"{shown} is not a file")
    if not os.access(path, os.R_OK):
        raise Invalid(f"file {shown} cannot be read (permission denied)")
    return path


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


MAX_OPERATION_TIMEOUT = 60.0  # Windows' default MaxTimeoutms (60000): the server caps a larger OperationTimeout


def check_operation_timeout(value: float) -> float:
    """A WS-Man OperationTimeout Windows will honour: over MaxTimeoutms the server uses MaxTimeoutms instead
    (MS-WSMV 3.1.4.1.6), so a larger setting only stretches the client's read timeout."""
    check_positive(value)
    if value > MAX_OPERATION_TIMEOUT:
        raise Invalid(
            f"{value:g}s is above 60s, Windows' default MaxTimeoutms; the server would not wait longer "
            "(raise host_timeout or tool_timeout for slow servers instead)"
        )
    return value


def check_thumbprint(value: str) -> str:
    """Normalise a certificate pin: strip colons and spaces, lower case, 40 (SHA-1) or 64 (SHA-256) hex."""
    hexed = re.sub(r"[\s:]", "", value).lower()
    if not _HEX.match(hexed) or len(hexed) not in (40, 64):
        raise Invalid("must be a SHA-1 (40 hex digits) or SHA-256 (64 hex digits) thumbprint")
    return hexed


def check_proxy(value: str) -> str:
    """An http(s) proxy URL with a host (credentials belong in no inventory value)."""
    parsed = urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise Invalid("must be an http:// or https:// URL with a host")
    if parsed.username or parsed.password:
        raise Invalid("must not carry credentials")
    return value


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


_REALM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,254}$")


def check_realm(value: str) -> str:
    """A Kerberos realm (upper-cased, as Active Directory names them)."""
    if not _REALM.match(value):
        raise Invalid(f"invalid realm {value!r}: letters, digits, dots and hyphens, e.g. CONTOSO.COM")
    return value.upper()


def check_keytab(value: str) -> str:
    """``file:PATH`` of a keytab: the path (resolved later against the inventory's folder)."""
    scheme, sep, path = value.partition(":")
    if scheme != "file" or not sep or not path.strip() or "\0" in path:
        raise Invalid("a keytab is given as file:PATH (the keytab file itself is never read by keyfleet)")
    return path
