"""The signed manifest of a backup share: entries, canonical JSON, Ed25519 signing and verification."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from orchestrator.errors import ConfigError, IntegrityError
from orchestrator.secret import Secret

FORMAT = "keyfleet-manifest/1"
ALGORITHM = "ed25519"
_TEXT_FIELDS = ("id", "host", "group", "role", "path", "sha256", "password_id")
_OPTIONAL_TEXT_FIELDS = ("scsm_version", "helper_version", "run_id", "method")
# The signature as signed_bytes() appends it: the last member of the canonical JSON it signs.
_SIGNATURE_MEMBER = b',"signature":'
_SIGNATURE_TAIL = re.compile(
    rb',"signature":\{"alg":"([a-z0-9-]{1,32})","public_key_sha256":"([0-9a-f]{64})",'
    rb'"value":"([A-Za-z0-9+/]{1,200}={0,2})"\}\}\n?'
)
_HEX = re.compile(r"[0-9a-f]{16}")


def format_iso(moment: datetime) -> str:
    """ISO 8601 UTC with a ``Z`` and whole seconds, the only time format on the share."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no time zone")
    return moment.astimezone(UTC)


def canonical_json(document: dict[str, Any]) -> bytes:
    """What is signed: sort_keys, separators (",", ":"), non-ASCII kept as UTF-8."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class ManifestEntry:
    """One stored key file: who it belongs to, where it is, what its bytes hash to."""

    id: str
    host: str
    group: str
    role: str
    path: str
    sha256: str
    size: int
    created: datetime
    password_id: str
    scsm_version: str | None
    helper_version: str | None
    run_id: str | None
    method: str | None = None  # stdin | console | wizard: how the password reached the tool

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "host": self.host,
            "group": self.group,
            "role": self.role,
            "path": self.path,
            "sha256": self.sha256,
            "size": self.size,
            "created": format_iso(self.created),
            "password_id": self.password_id,
            "scsm_version": self.scsm_version,
            "helper_version": self.helper_version,
            "run_id": self.run_id,
        }
        if self.method is not None:  # entries written before the field existed read back unchanged
            data["method"] = self.method
        return data

    @classmethod
    def from_json(cls, data: object) -> ManifestEntry:
        # Read once per entry of the history by every command: exact type checks (json makes no
        # subclasses; bool is not int here) and no per-field dataclass __init__ (see below).
        if type(data) is not dict:
            raise ValueError("an entry is not an object")
        fields = {key: data.get(key) for key in _TEXT_FIELDS}
        for key, value in fields.items():
            if type(value) is not str:
                raise ValueError(f"entry field {key!r} is missing or not a string")
        for key in _OPTIONAL_TEXT_FIELDS:
            value = fields[key] = data.get(key)
            if value is not None and type(value) is not str:
                raise ValueError(f"entry field {key!r} is not a string")
        size, created = data.get("size"), data.get("created")
        if type(size) is not int or size < 0:
            raise ValueError("entry field 'size' is not a non-negative integer")
        if type(created) is not str:
            raise ValueError("entry field 'created' is missing")
        fields["size"], fields["created"] = size, parse_iso(created)
        # Every field is checked; set them in one step: the frozen dataclass's __init__ assigns each one
        # through object.__setattr__, which cost half of building the entries of a 10,000-entry history.
        entry = object.__new__(cls)
        entry.__dict__.update(fields)
        return entry


@dataclass(frozen=True)
class Signature:
    alg: str
    public_key_sha256: str
    value: str  # base64


@dataclass(frozen=True)
class Manifest:
    """The share's current entries. ``signed_bytes`` is exactly what the signature covers as read from
    disk (the ``keyfleet-manifest/1`` format). ``generation`` and ``head`` (the digest of the newest log
    segment) are 0 and None for a share still in that old format (``legacy``) or a new one."""

    entries: tuple[ManifestEntry, ...] = ()
    updated: datetime | None = None
    signature: Signature | None = None
    signed_bytes: bytes | None = field(default=None, repr=False, compare=False)
    generation: int = 0
    head: str | None = None
    share_id: str | None = None
    legacy: bool = False

    @cached_property
    def _by_host(self) -> dict[str, list[ManifestEntry]]:
        index: dict[str, list[tuple[datetime, int, ManifestEntry]]] = {}
        for position, entry in enumerate(self.entries):
            index.setdefault(entry.host, []).append((entry.created, position, entry))
        return {
            host: [e for _c, _i, e in sorted(mine, key=lambda t: (t[0], t[1]), reverse=True)]
            for host, mine in index.items()
        }

    def entries_for(self, host: str) -> list[ManifestEntry]:
        """``host``'s entries, newest first (of two in one second, the one added later)."""
        return list(self._by_host.get(host, ()))

    def document(self) -> dict[str, Any]:
        """The JSON document without its signature."""
        return {
            "format": FORMAT,
            "updated": format_iso(self.updated) if self.updated else None,
            "entries": [entry.to_json() for entry in self.entries],
        }

    def signed(self, key: Ed25519PrivateKey) -> Manifest:
        payload = canonical_json(self.document())
        return replace(self, signature=_signature(payload, key), signed_bytes=payload)

    def to_bytes(self) -> bytes:
        document = self.document()
        document["signature"] = asdict(self.signature) if self.signature else None
        return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    def verify(self, key: Ed25519PublicKey) -> None:
        """Raise IntegrityError unless the manifest carries a valid signature made by ``key``."""
        if self.signature is None:
            raise IntegrityError("manifest.json is not signed")
        payload = self.signed_bytes if self.signed_bytes is not None else canonical_json(self.document())
        sig = self.signature
        _verify_signature(sig.alg, sig.public_key_sha256, sig.value, payload, key, "manifest.json")

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse a manifest; IntegrityError if it is not a complete, well-formed manifest."""
        try:
            document = json.loads(data.decode("utf-8"))
            if not isinstance(document, dict) or document.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} document")
            raw_signature = document.pop("signature", None)
            entries = document.get("entries")
            if not isinstance(entries, list):
                raise ValueError("'entries' is not a list")
            updated = document.get("updated")
            signature = None
            if raw_signature is not None:
                if not isinstance(raw_signature, dict) or not all(
                    isinstance(raw_signature.get(k), str) for k in ("alg", "public_key_sha256", "value")
                ):
                    raise ValueError("'signature' is malformed")
                signature = Signature(raw_signature["alg"], raw_signature["public_key_sha256"], raw_signature["value"])
            return cls(
                entries=tuple(ManifestEntry.from_json(entry) for entry in entries),
                updated=parse_iso(updated) if isinstance(updated, str) else None,
                signature=signature,
                signed_bytes=canonical_json(document),
            )
        except (UnicodeDecodeError, ValueError, TypeError, RecursionError) as exc:
            raise IntegrityError(f"manifest.json is not a valid manifest: {exc}") from None


def sign_document(document: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """``document`` with a ``signature`` over its canonical JSON (every other field is signed)."""
    body = {k: v for k, v in document.items() if k != "signature"}
    return {**body, "signature": asdict(_signature(canonical_json(body), key))}


def signed_bytes(document: dict[str, Any], key: Ed25519PrivateKey) -> bytes:
    """``document`` signed, as a file: the canonical JSON it signs with the ``signature`` added as its last
    member, so that a reader verifies the exact bytes it read (verified_bytes) instead of re-serialising.
    Any JSON reader reads the same document as sign_document's (member order is not significant)."""
    payload = canonical_json({k: v for k, v in document.items() if k != "signature"})
    signature = canonical_json(asdict(_signature(payload, key)))
    return payload[:-1] + _SIGNATURE_MEMBER + signature + b"}\n"


def verified_bytes(data: bytes, key: Ed25519PublicKey) -> tuple[dict[str, Any], str] | None:
    """The document and digest of a file laid out as signed_bytes() writes it, when its signature by ``key``
    verifies over the exact bytes it signed; None otherwise (another layout, or a problem: the caller then
    reads it the general way, verify_document, which names the problem). Only signed bytes are parsed."""
    start = data.rfind(_SIGNATURE_MEMBER)
    match = _SIGNATURE_TAIL.fullmatch(data, start) if start > 0 else None
    if match is None or match[1] != ALGORITHM.encode() or match[2].decode() != public_key_sha256(key):
        return None
    payload = data[:start] + b"}"
    try:
        key.verify(base64.b64decode(match[3], validate=True), payload)
        document = json.loads(payload.decode("utf-8"))
    except (InvalidSignature, binascii.Error, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(document, dict) or "signature" in document:
        return None
    return document, hashlib.sha256(payload).hexdigest()


def _signature(payload: bytes, key: Ed25519PrivateKey) -> Signature:
    return Signature(
        alg=ALGORITHM,
        public_key_sha256=public_key_sha256(key.public_key()),
        value=base64.b64encode(key.sign(payload)).decode("ascii"),
    )


def verify_document(document: dict[str, Any], key: Ed25519PublicKey, name: str) -> str:
    """Check ``document``'s signature (made by ``key`` over every other field); return the hex
    SHA-256 of the signed bytes, the digest its successor names. IntegrityError naming ``name``."""
    raw = document.get("signature")
    if raw is None:
        raise IntegrityError(f"{name} is not signed")
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k), str) for k in ("alg", "public_key_sha256", "value")):
        raise IntegrityError(f"{name} has a malformed signature")
    payload = canonical_json({k: v for k, v in document.items() if k != "signature"})
    _verify_signature(raw["alg"], raw["public_key_sha256"], raw["value"], payload, key, name)
    return hashlib.sha256(payload).hexdigest()


def _verify_signature(alg: str, signer: str, value: str, payload: bytes, key: Ed25519PublicKey, name: str) -> None:
    """IntegrityError naming ``name`` unless ``value`` is ``key``'s Ed25519 signature of ``payload``."""
    if alg != ALGORITHM:
        raise IntegrityError(f"{name} is signed with an unknown algorithm {alg[:40]!r}")
    expected = public_key_sha256(key)
    if signer != expected:
        shown = f"{signer[:16]}..." if _HEX.fullmatch(signer[:16]) else "(not a key digest)"  # the share's text
        raise IntegrityError(f"{name} is signed by key {shown}, not by the inventory's public key {expected[:16]}...")
    try:
        key.verify(base64.b64decode(value, validate=True), payload)
    except (InvalidSignature, ValueError):  # binascii.Error, and the ValueError of a value that is not ASCII
        raise IntegrityError(f"{name} signature does not verify: it was changed after signing") from None


def public_key_sha256(key: Ed25519PublicKey) -> str:
    """Hex SHA-256 of the 32 raw public key bytes: how manifests and reports name a key."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _decode_key_text(text: str) -> bytes | None:
    """Base64 of raw or DER key bytes, or None when ``text`` is PEM."""
    if text.lstrip().startswith("-----BEGIN"):
        return None
    return base64.b64decode("".join(text.split()), validate=True)


def load_private_key(secret: Secret) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM (PKCS#8), base64 of 32 raw bytes, or base64 of PKCS#8 DER."""
    try:
        text = secret.reveal()
        raw = _decode_key_text(text)
        if raw is not None and len(raw) == 32:
            return Ed25519PrivateKey.from_private_bytes(raw)
        if raw is None:
            key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
        else:
            key = serialization.load_der_private_key(raw, password=None)
    except (ValueError, TypeError, binascii.Error, UnicodeError):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(
            f"{secret.label} is not an unencrypted Ed25519 private key (PEM or base64 of 32 raw bytes)",
            key="signing.private_key",
        )
    return key


def load_public_key(text: str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM, base64 of 32 raw bytes, or base64 of SubjectPublicKeyInfo DER."""
    try:
        raw = _decode_key_text(text)
        if raw is not None and len(raw) == 32:
            return Ed25519PublicKey.from_public_bytes(raw)
        if raw is None:
            key = serialization.load_pem_public_key(text.encode("ascii"))
        else:
            key = serialization.load_der_public_key(raw)
    except (ValueError, TypeError, binascii.Error, UnicodeError):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError("not an Ed25519 public key (PEM or base64 of 32 raw bytes)", key="signing.public_key")
    return key


def new_signing_key_pair() -> tuple[Secret, str]:
    """A fresh key pair as inventory values: (base64 raw private key as a Secret, base64 raw public key)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return (
        Secret(base64.b64encode(private).decode("ascii"), "generated signing key"),
        base64.b64encode(public).decode("ascii"),
    )
