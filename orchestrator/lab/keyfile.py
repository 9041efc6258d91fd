"""The lab's key file format: a registry key sealed with a password (scrypt, then AES-256-GCM).

Layout: MAGIC, format version (1 byte), computer name and role (each a 2-byte big-endian length
and UTF-8 text), scrypt salt (16), GCM nonce (12), ciphertext with its 16-byte tag. Everything
before the ciphertext is the associated data, so the name and role cannot be altered either.
This is the lab's own format; the real SecureStorageBackup.exe format is Microsoft's.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

MAGIC = b"KEYFLEET-LAB-KEY"
FORMAT_VERSION = 1
SCRYPT_N = 2**14  # fast enough for tests, still a real KDF
# Format version 2 is version 1 sealed with a cheap scrypt cost (`keyfleet lab bench --kdf cheap`), so a
# bench of 1,000 hosts measures keyfleet rather than the lab's KDF. The version names the cost.
CHEAP_FORMAT_VERSION = 2
_SCRYPT_N_OF_VERSION = {FORMAT_VERSION: SCRYPT_N, CHEAP_FORMAT_VERSION: 2**4}
_seal_version = [FORMAT_VERSION]
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
NONCE_BYTES = 12


class KeyFileError(Exception):
    """The data is not a lab key file, or the password does not open it (or it was altered)."""


@dataclass(frozen=True)
class KeyFileHeader:
    computer_name: str
    role: str


def use_cheap_kdf() -> None:
    """Seal every key file this process makes from now on with the cheap cost (lab bench only)."""
    _seal_version[0] = CHEAP_FORMAT_VERSION


def _derive(password: str, salt: bytes, version: int) -> bytes:
    kdf = Scrypt(salt=salt, length=32, n=_SCRYPT_N_OF_VERSION[version], r=SCRYPT_R, p=SCRYPT_P)
    return kdf.derive(password.encode("utf-8"))


def _field(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("key file header field too long")
    return struct.pack(">H", len(raw)) + raw


def seal(key: bytes, password: str, computer_name: str, role: str) -> bytes:
    """A new key file holding ``key``, openable only with ``password``."""
    salt, nonce = os.urandom(SALT_BYTES), os.urandom(NONCE_BYTES)
    version = _seal_version[0]
    header = MAGIC + bytes([version]) + _field(computer_name) + _field(role) + salt + nonce
    return header + AESGCM(_derive(password, salt, version)).encrypt(nonce, key, header)


def _parse(data: bytes) -> tuple[KeyFileHeader, bytes, bytes, int]:
    """Header, salt, nonce and the offset of the ciphertext."""
    if not data.startswith(MAGIC) or len(data) <= len(MAGIC):
        raise KeyFileError("not a keyfleet lab key file")
    if data[len(MAGIC)] not in _SCRYPT_N_OF_VERSION:
        raise KeyFileError(f"unsupported key file format version {data[len(MAGIC)]}")
    offset = len(MAGIC) + 1
    texts: list[str] = []
    try:
        for _ in range(2):
            (size,) = struct.unpack_from(">H", data, offset)
            texts.append(data[offset + 2 : offset + 2 + size].decode("utf-8"))
            offset += 2 + size
    except (struct.error, UnicodeDecodeError):
        raise KeyFileError("the key file header is damaged") from None
    salt = data[offset : offset + SALT_BYTES]
    nonce = data[offset + SALT_BYTES : offset + SALT_BYTES + NONCE_BYTES]
    offset += SALT_BYTES + NONCE_BYTES
    if len(data) < offset + 16:
        raise KeyFileError("the key file is truncated")
    return KeyFileHeader(texts[0], texts[1]), salt, nonce, offset


def read_header(data: bytes) -> KeyFileHeader:
    """The computer name and role a key file was made for (readable without the password)."""
    return _parse(data)[0]


def unseal(data: bytes, password: str) -> bytes:
    """The key inside a key file; KeyFileError if the password is wrong or the file was altered."""
    _, salt, nonce, offset = _parse(data)
    try:
        return AESGCM(_derive(password, salt, data[len(MAGIC)])).decrypt(nonce, data[offset:], data[:offset])
    except InvalidTag:
        raise KeyFileError("the password is incorrect or the key file is damaged") from None


# What the simulated SecureStorageBackup.exe does once it has read the password (lab/tool.py reads it).

MIN_PASSWORD_LENGTH = 8  # the wizard's rule


@dataclass(frozen=True)
class ToolRun:
    """One run of the simulated tool: exit code, console output, and what it produced."""

    exit_code: int
    output: str
    file: bytes | None = None  # Backup: the key file written
    key: bytes | None = None  # Restore: the key to put into the registry
    method: str | None = None  # how the password reached the tool: stdin or console


def _password_refused(password: str) -> ToolRun | None:
    if len(password) < MIN_PASSWORD_LENGTH:
        return ToolRun(1, f"The password must contain at least {MIN_PASSWORD_LENGTH} characters.")
    return None


def tool_backup(key: bytes, password: str, computer_name: str, role: str) -> ToolRun:
    """``SecureStorageBackup.exe Backup <file>`` once the password was typed twice."""
    return _password_refused(password) or ToolRun(
        0, "Secure Storage Backup Complete", file=seal(key, password, computer_name, role)
    )


def tool_restore(data: bytes, password: str, computer_name: str) -> ToolRun:
    """``SecureStorageBackup.exe Restore <file>``: the key to install, or a failure (key unchanged)."""
    refused = _password_refused(password)
    if refused:
        return refused
    try:
        header = read_header(data)
        if header.computer_name.upper() != computer_name.upper():
            return ToolRun(
                1,
                f"This key file was made on {header.computer_name}; it can only be restored "
                "on a server with that computer name.",
            )
        key = unseal(data, password)
    except KeyFileError as exc:
        return ToolRun(1, f"Secure Storage Key Restore failed: {exc}.")
    return ToolRun(0, "Secure Storage Key Restore Complete", key=key)
