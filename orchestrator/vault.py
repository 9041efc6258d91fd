"""The ansible-vault 1.1 file format (``$ANSIBLE_VAULT;1.1;AES256``), with ``cryptography`` only.

Body: hexlify(hexlify(salt) "\\n" hex(HMAC-SHA256(ciphertext)) "\\n" hexlify(ciphertext)), in lines
of 80 characters. Keys: PBKDF2-HMAC-SHA256, 10000 iterations, 80 bytes = AES key, HMAC key, CTR IV.
"""

from __future__ import annotations

import binascii
import hmac
import os

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from orchestrator.secret import Secret

HEADER = b"$ANSIBLE_VAULT"
VERSION_HEADER = b"$ANSIBLE_VAULT;1.1;AES256"
ITERATIONS = 10000
KEY_LENGTH = 32
IV_LENGTH = 16
SALT_LENGTH = 32
LINE_WIDTH = 80


class VaultError(Exception):
    """A vault file cannot be read: not a vault, unsupported, damaged or the wrong password."""


def is_vault(data: bytes) -> bool:
    return data.lstrip().startswith(HEADER)


def _derive(password: Secret, salt: bytes) -> tuple[bytes, bytes, bytes]:
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=2 * KEY_LENGTH + IV_LENGTH, salt=salt, iterations=ITERATIONS)
    derived = kdf.derive(password.reveal().encode("utf-8"))
    return derived[:KEY_LENGTH], derived[KEY_LENGTH : 2 * KEY_LENGTH], derived[2 * KEY_LENGTH :]


def encrypt(plaintext: bytes, password: Secret) -> bytes:
    """A complete vault file (header, 80-column body, trailing newline) with a fresh random salt."""
    if not len(password):
        raise VaultError("the vault password must not be empty")
    salt = os.urandom(SALT_LENGTH)
    aes_key, hmac_key, iv = _derive(password, salt)
    padder = padding.PKCS7(algorithms.AES.block_size).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(aes_key), modes.CTR(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    mac = crypto_hmac.HMAC(hmac_key, hashes.SHA256())
    mac.update(ciphertext)
    inner = b"\n".join([binascii.hexlify(salt), binascii.hexlify(mac.finalize()), binascii.hexlify(ciphertext)])
    body = binascii.hexlify(inner)
    lines = [VERSION_HEADER] + [body[i : i + LINE_WIDTH] for i in range(0, len(body), LINE_WIDTH)]
    return b"\n".join(lines) + b"\n"


def decrypt(vaulttext: bytes, password: Secret) -> bytes:
    """The plaintext of a vault file; VaultError when it is not a 1.1/1.2 AES256 vault or the HMAC fails."""
    lines = vaulttext.strip().splitlines()
    if not lines or not lines[0].strip().startswith(HEADER):
        raise VaultError("not an ansible-vault file")
    header = [part.strip() for part in lines[0].strip().split(b";")]
    if len(header) < 3 or header[1] not in (b"1.1", b"1.2") or header[2] != b"AES256":
        raise VaultError("unsupported vault format (expected $ANSIBLE_VAULT;1.1;AES256)")
    try:
        inner = binascii.unhexlify(b"".join(line.strip() for line in lines[1:]))
        salt_hex, mac_hex, ciphertext_hex = inner.split(b"\n", 2)
        salt = binascii.unhexlify(salt_hex)
        expected_mac = binascii.unhexlify(mac_hex)
        ciphertext = binascii.unhexlify(ciphertext_hex)
    except (binascii.Error, ValueError):
        raise VaultError("the vault file is damaged (bad hex body)") from None
    aes_key, hmac_key, iv = _derive(password, salt)
    mac = crypto_hmac.HMAC(hmac_key, hashes.SHA256())
    mac.update(ciphertext)
    if not hmac.compare_digest(mac.finalize(), expected_mac):
        raise VaultError("wrong vault password, or the file was altered (HMAC mismatch)")
    decryptor = Cipher(algorithms.AES(aes_key), modes.CTR(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(algorithms.AES.block_size).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise VaultError("the vault file is damaged (bad padding)") from None
