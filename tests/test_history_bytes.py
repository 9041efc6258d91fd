"""Signatures checked over the exact bytes read: the layout keyfleet writes, the one it wrote before
(re-serialised to check, as any reader of the format may), and bytes changed in either."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator.share import layout
from orchestrator.share.history import HistoryError, read_history, segment_path
from orchestrator.share.local import LocalShare
from orchestrator.share.manifest import ManifestEntry, canonical_json, signed_bytes, verified_bytes, verify_document
from orchestrator.share.store import BackupStore

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def _share(tmp_path: Path, key: Ed25519PrivateKey, hosts: int = 3) -> BackupStore:
    store = BackupStore(LocalShare(tmp_path / "share"), key, state_root=tmp_path / "state")
    for i in range(hosts):
        store.add(host=f"h{i}", group="G", role="management_server", data=b"k" * (i + 9), password_id="p", created=NOW)
    store.compact()  # manifest.json holds the entries; the segment of the last commit stays in the log
    store.add(host="late", group="G", role="management_server", data=b"late" * 9, password_id="p", created=NOW)
    return store


def test_written_bytes_verify_as_read_and_parse_to_the_signed_document() -> None:
    key = Ed25519PrivateKey.generate()
    document = {"format": "x/1", "name": "h\u00e9", "n": [1, 2], "nested": {"b": 1, "a": None}}
    data = signed_bytes(document, key)
    verified = verified_bytes(data, key.public_key())
    assert verified is not None
    parsed, digest = verified
    assert parsed == document
    # the same document and digest as the general reader: canonical JSON of every field but the signature
    assert digest == verify_document(json.loads(data), key.public_key(), "x")
    assert data.startswith(canonical_json(document)[:-1])
    assert verified_bytes(data, Ed25519PrivateKey.generate().public_key()) is None  # another key: not here


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.replace(b'"x/1"', b'"x/2"'),  # a signed byte
        lambda d: d[:-2] + b',"extra":1}\n',  # a member after the signature
        lambda d: d.replace(b'"value":"', b'"value":"A'),  # the signature itself
        lambda d: b" " + d,  # unsigned bytes before
    ],
)
def test_changed_bytes_are_never_taken_as_verified(change: object) -> None:
    key = Ed25519PrivateKey.generate()
    data = signed_bytes({"format": "x/1", "name": "h"}, key)
    assert callable(change)
    assert verified_bytes(change(data), key.public_key()) is None


def test_a_history_in_the_earlier_layout_still_reads_with_the_same_digests(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    store = _share(tmp_path, key)
    share = store.share
    before = read_history(share, key.public_key())
    assert before.segments and before.checkpoint_generation > 0
    for path in (layout.MANIFEST, segment_path(before.generation), segment_path(before.checkpoint_generation)):
        document = json.loads(share.read_bytes(path))
        share.replace(path, (json.dumps(document, ensure_ascii=False) + "\n").encode())  # the earlier layout
        assert verified_bytes(share.read_bytes(path), key.public_key()) is None
    after = read_history(share, key.public_key())
    assert (after.generation, after.head, after.entries) == (before.generation, before.head, before.entries)


@pytest.mark.parametrize("earlier_layout", [False, True])
@pytest.mark.parametrize("path", [layout.MANIFEST, "segment"])
def test_a_changed_entry_is_refused_in_either_layout(tmp_path: Path, earlier_layout: bool, path: str) -> None:
    key = Ed25519PrivateKey.generate()
    store = _share(tmp_path, key)
    share = store.share
    if path == "segment":
        path = segment_path(read_history(share, key.public_key()).generation)
    data = share.read_bytes(path)
    if earlier_layout:
        data = (json.dumps(json.loads(data), ensure_ascii=False) + "\n").encode()
    share.replace(path, data.replace(b'"group":"G"', b'"group":"X"').replace(b'"group": "G"', b'"group": "X"'))
    with pytest.raises(HistoryError) as caught:
        read_history(share, key.public_key())
    assert caught.value.kind in {"signature-invalid", "segment-invalid"}


def test_an_entry_read_back_equals_the_one_written() -> None:
    entry = ManifestEntry("i", "h", "g", "management_server", "p", "ab" * 32, 9, NOW, "pw", None, "1", "r", "stdin")
    again = ManifestEntry.from_json(json.loads(json.dumps(entry.to_json())))
    assert again == entry and hash(again) == hash(entry) and repr(again) == repr(entry)
    with pytest.raises(AttributeError):
        again.host = "other"  # type: ignore[misc]
    for field, value in (("size", True), ("size", -1), ("host", 3), ("method", 1), ("created", None)):
        with pytest.raises(ValueError, match=field):
            ManifestEntry.from_json({**entry.to_json(), field: value})
