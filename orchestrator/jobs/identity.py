"""Password identity: one password per ``password_id``, proven by an scrypt verifier in the share's history.

The first backup (or collect) under an id records ``scrypt(password, salt)``, with its own random salt
and parameters, in the signed segment of its first key file; every later backup, restore and collect
under that id derives it again and compares, before any host is contacted. scrypt is memory-hard
(RFC 7914), at one of OWASP's equivalent minimum costs (N=2^14, r=8, p=5: the work of N=2^17, p=1 in
16 MiB instead of 128): an offline guess against it is no easier than against the key files on the same share.
"""

from __future__ import annotations

import base64
import hmac
import os
import threading
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from orchestrator.errors import ConfigError, IntegrityError
from orchestrator.secret import Secret
from orchestrator.share.store import BackupStore

KDF = "scrypt"
# OWASP Password Storage Cheat Sheet lists N=2^17, r=8, p=1 and N=2^14, r=8, p=5 as equivalent minimums;
# the second needs 16 MiB, not 128 (memory is 128 * N * r bytes, the p lanes run one after another)
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 5
LENGTH = 32
SALT_BYTES = 16
# what a verifier read from the share may ask for: bounds the memory and time one check can cost
_MAX_N, _MAX_R, _MAX_P = 2**20, 16, 16
_MAX_WORK = 2**24  # N * r * p: 16 times OWASP's minimum
_MAX_MEMORY = 2**20  # N * r, times 128 bytes: 128 MiB, what OWASP's N=2^17, r=8 needs


class PasswordMismatch(ConfigError):
    """The password given is not the one recorded for its ``password_id`` (exit 2)."""


def make_verifier(password: Secret, *, rotated_from: str | None = None) -> dict[str, Any]:
    """A new verifier of ``password``: scrypt with a fresh random salt, its parameters recorded.
    ``rotated_from``: the id this one replaces (``keyfleet password rotate``), so the audit can name
    the servers still on it."""
    salt = os.urandom(SALT_BYTES)
    derived = Scrypt(salt=salt, length=LENGTH, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(_bytes(password))
    verifier: dict[str, Any] = {
        "kdf": KDF,
        "n": SCRYPT_N,
        "r": SCRYPT_R,
        "p": SCRYPT_P,
        "salt": base64.b64encode(salt).decode("ascii"),
        "hash": base64.b64encode(derived).decode("ascii"),
    }
    if rotated_from is not None:
        verifier["rotated_from"] = rotated_from
    return verifier


def matches(password: Secret, verifier: dict[str, Any], password_id: str) -> bool:
    """Whether ``password`` derives to the verifier's hash; IntegrityError for a verifier keyfleet would
    not write (unknown KDF, parameters out of bounds), which no signed history should hold."""
    try:
        n, r, p = verifier["n"], verifier["r"], verifier["p"]
        salt = base64.b64decode(verifier["salt"], validate=True)
        expected = base64.b64decode(verifier["hash"], validate=True)
        sound = (
            verifier["kdf"] == KDF
            and all(isinstance(v, int) for v in (n, r, p))
            and 2 <= n <= _MAX_N
            and n & (n - 1) == 0
            and 1 <= r <= _MAX_R
            and 1 <= p <= _MAX_P
            and n * r * p <= _MAX_WORK
            and n * r <= _MAX_MEMORY
            and len(salt) >= SALT_BYTES
            and 16 <= len(expected) <= 64
        )
    except (KeyError, TypeError, ValueError):
        sound = False
    if not sound:
        raise IntegrityError(f"the password verifier of password_id {password_id!r} is malformed")
    derived = Scrypt(salt=salt, length=len(expected), n=n, r=r, p=p).derive(_bytes(password))
    return hmac.compare_digest(derived, expected)


def check_password(store: BackupStore, password_id: str, password: Secret) -> dict[str, Any] | None:
    """Refuse (PasswordMismatch, exit 2) a password that is not the one recorded for ``password_id``;
    return the verifier it matched, None when the share holds none of that id yet."""
    verifier = store.password_verifier(password_id)
    if verifier is None:
        return None
    if not matches(password, verifier, password_id):
        raise PasswordMismatch(
            f"password does not match password_id {password_id!r}: the share's history recorded another password "
            "for it (use that id's password, or give the new one its own id: `keyfleet password rotate`)",
            key="backup.password",
        )
    return verifier


def claim_identity(store: BackupStore, password_id: str, password: Secret, *, rotated_from: str | None = None) -> None:
    """Check the password (exit 2 on a mismatch); when ``password_id`` has no verifier yet, make one, which
    the run's first commit records with its key file (``rotated_from``: see make_verifier)."""
    verifier = check_password(store, password_id, password)
    store.expect_verifier(
        password_id,
        verifier or make_verifier(password, rotated_from=rotated_from),
        lambda recorded: matches(password, recorded, password_id),
    )


def claim_identity_while(store: BackupStore, password_id: str, password: Secret, meanwhile: Callable[[], None]) -> None:
    """claim_identity on a thread while ``meanwhile`` runs on this one: scrypt releases the GIL, so the check
    costs no wall time beside work that needs it (loading the WinRM stack). Its errors are raised here,
    after ``meanwhile``, and before anything that contacts a host."""
    failure: list[BaseException] = []

    def claim() -> None:
        try:
            claim_identity(store, password_id, password)
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=claim, name="keyfleet-verifier", daemon=True)
    worker.start()
    meanwhile()
    worker.join()
    if failure:
        raise failure[0]


def rotated_ids(verifiers: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Old id -> the id that replaced it, from the verifiers ``keyfleet password rotate`` recorded."""
    return {str(v["rotated_from"]): new for new, v in verifiers.items() if isinstance(v.get("rotated_from"), str)}


def _bytes(password: Secret) -> bytes:
    return password.reveal().encode("utf-8")
