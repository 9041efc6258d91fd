"""An auditor's reader of a share's history, written with json and cryptography alone (no keyfleet code):
verifies manifest.json (a keyfleet-manifest/2 checkpoint) and every log segment after it, follows the
chain of generations and digests, and returns the entries as keyfleet-manifest/1 showed them."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def _verified(document: dict[str, Any], public_key: str) -> str:
    """Check the Ed25519 signature over the canonical JSON without "signature"; return its digest."""
    body = {k: v for k, v in document.items() if k != "signature"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key))
    assert document["signature"]["alg"] == "ed25519"
    key.verify(base64.b64decode(document["signature"]["value"]), canonical)
    return hashlib.sha256(canonical).hexdigest()


def read_share(root: Path, public_key: str) -> dict[str, Any]:
    """``{"generation", "head", "share_id", "entries": [...], "verifiers": {password_id: ...}}`` of the share
    at ``root``, every signature and link of the chain checked (AssertionError or InvalidSignature otherwise)."""
    checkpoint = json.loads((root / "manifest.json").read_text())
    assert checkpoint["format"] == "keyfleet-manifest/2", checkpoint["format"]
    _verified(checkpoint, public_key)
    entries = {e["id"]: e for e in checkpoint["entries"]}
    verifiers = dict(checkpoint.get("verifiers", {}))
    generation, head = checkpoint["generation"], checkpoint["head"]
    later = sorted(int(p.stem) for p in (root / "log").glob("*.json") if int(p.stem) > generation)
    for number in later:
        assert number == generation + 1, f"segment {generation + 1} missing"
        segment = json.loads((root / "log" / f"{number:012d}.json").read_text())
        digest = _verified(segment, public_key)
        assert segment["generation"] == number and segment["previous"] == head
        assert segment["share_id"] == checkpoint["share_id"]
        for removed in segment["removed"]:
            entries.pop(removed, None)
        entries.update({e["id"]: e for e in segment["added"]})
        for password_id, verifier in segment.get("verifiers", {}).items():
            verifiers.setdefault(password_id, verifier)
        generation, head = number, digest
    return {
        "generation": generation,
        "head": head,
        "share_id": checkpoint["share_id"],
        "entries": list(entries.values()),
        "verifiers": verifiers,
    }


def compact(root: Path, private_key: str) -> None:
    """Make manifest.json hold every entry (a checkpoint of the newest generation), as keyfleet does
    once the log is long: tests that edit manifest.json on disk start from there."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from orchestrator.share.local import LocalShare
    from orchestrator.share.store import BackupStore

    generation = json.loads((root / "manifest.json").read_text()).get("generation", 0)
    if any(int(p.stem) > generation for p in (root / "log").glob("*.json")):
        BackupStore(LocalShare(root), Ed25519PrivateKey.from_private_bytes(base64.b64decode(private_key))).compact()
