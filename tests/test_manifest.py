"""Manifest signing and verification, key formats, run records, layout names and the BackupStore."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from orchestrator.errors import ConfigError, IntegrityError, ShareError, ShareExistsError
from orchestrator.secret import Secret
from orchestrator.share import layout
from orchestrator.share.local import LocalShare
from orchestrator.share.manifest import (
    Manifest,
    ManifestEntry,
    load_private_key,
    load_public_key,
    new_signing_key_pair,
    public_key_sha256,
)
from orchestrator.share.runrecord import HostOutcome, RunRecord, new_run_id
from orchestrator.share.store import BackupStore, FileState
from orchestrator.status import Status
from tests.share_history import read_share

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def store(tmp_path: Path, key: Ed25519PrivateKey) -> BackupStore:
    return BackupStore(LocalShare(tmp_path), key)


def _add(store: BackupStore, data: bytes = b"key", created: datetime | None = None) -> ManifestEntry:
    return store.add(
        host="ms01", group="PROD", role="management_server", data=data, password_id="pw-2026", created=created
    )


def test_add_writes_file_and_signed_manifest(store: BackupStore, tmp_path: Path, key: Ed25519PrivateKey) -> None:
    entry = store.add(
        host="ms01",
        group="PROD",
        role="management_server",
        data=b"secret-key-bytes",
        password_id="pw-2026",
        scsm_version="10.22.1068.0",
        helper_version="1.0",
        run_id="20260102T030405Z-abcdef",
        created=T0,
    )
    sha = hashlib.sha256(b"secret-key-bytes").hexdigest()
    assert entry.path == f"PROD/management_server/ms01/20260102T030405Z-{sha[:12]}.bin"
    assert entry.id == f"ms01-20260102T030405Z-{sha[:12]}"
    assert (tmp_path / entry.path).read_bytes() == b"secret-key-bytes"
    # An auditor's script: cryptography and json alone, with the public key from the inventory.
    raw_public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    document = read_share(tmp_path, base64.b64encode(raw_public).decode())
    segment = json.loads((tmp_path / "log" / "000000000001.json").read_text())
    assert segment["signature"]["public_key_sha256"] == public_key_sha256(key.public_key())
    assert (document["generation"], segment["previous"], segment["run_id"]) == (1, None, "20260102T030405Z-abcdef")
    assert document["entries"] == [
        {
            "id": entry.id,
            "host": "ms01",
            "group": "PROD",
            "role": "management_server",
            "path": entry.path,
            "sha256": sha,
            "size": 16,
            "created": "2026-01-02T03:04:05Z",
            "password_id": "pw-2026",
            "scsm_version": "10.22.1068.0",
            "helper_version": "1.0",
            "run_id": "20260102T030405Z-abcdef",
        }
    ]
    assert store.load_manifest(verify=True).entries == (entry,)
    assert store.read_key_file(entry) == b"secret-key-bytes"


def test_missing_manifest_is_empty(store: BackupStore) -> None:
    assert store.load_manifest(verify=True).entries == ()


def test_torn_manifest_is_an_integrity_error(store: BackupStore, tmp_path: Path) -> None:
    _add(store)
    text = (tmp_path / "manifest.json").read_bytes()
    (tmp_path / "manifest.json").write_bytes(text[: len(text) // 2])
    with pytest.raises(IntegrityError, match=r"manifest\.json is not valid JSON"):
        store.load_manifest()
    with pytest.raises(IntegrityError, match="refusing to change it"):
        _add(BackupStore(store.share, store.signer), data=b"other")  # the next command


TAMPERING = [
    (lambda d: d["entries"][0].update(sha256="0" * 64), "does not verify"),
    (lambda d: d["entries"][0].update(password_id="other"), "does not verify"),
    (lambda d: d["entries"].pop(), "does not verify"),
    (lambda d: d.update(signature=None), "not signed"),
    (lambda d: d.pop("signature"), "not signed"),
    (lambda d: d["signature"].update(public_key_sha256="ab" * 32), "by key abababababababab..., not by the"),
    # the share's text is never echoed unless it is a key digest (no escape sequences onto a terminal)
    (lambda d: d["signature"].update(public_key_sha256="\x1b[2J" * 9), r"by key \(not a key digest\), not by"),
    (lambda d: d["signature"].update(alg="x" * 99), "unknown algorithm 'x{40}'$"),
    (lambda d: d["signature"].update(value="!!"), "does not verify"),
    (lambda d: d["signature"].update(value="\u00e9" * 4), "does not verify"),  # not base64, not even ASCII
]


@pytest.mark.parametrize(("edit", "message"), TAMPERING)
def test_tampering_detected(
    store: BackupStore, tmp_path: Path, edit: Callable[[dict[str, Any]], object], message: str
) -> None:
    _add(store)
    _add(store, data=b"second")
    store.compact()  # manifest.json now holds both entries
    document = json.loads((tmp_path / "manifest.json").read_text())
    edit(document)
    (tmp_path / "manifest.json").write_text(json.dumps(document))
    with pytest.raises(IntegrityError, match=message):
        store.load_manifest(verify=True)
    with pytest.raises(IntegrityError, match="refusing to change it"):
        _add(BackupStore(store.share, store.signer), data=b"third")  # a tampered manifest is never built on


@pytest.mark.parametrize(("edit", "message"), TAMPERING)
def test_tampering_detected_in_a_legacy_manifest(
    store: BackupStore, tmp_path: Path, key: Ed25519PrivateKey, edit: Callable[[dict[str, Any]], object], message: str
) -> None:
    """The keyfleet-manifest/1 format, still read from shares written before the history, is checked alike."""
    other = BackupStore(LocalShare(tmp_path / "other"), key)
    entries = (_add(other, created=T0), _add(other, data=b"second", created=T0))
    document = json.loads(Manifest(entries=entries, updated=T0).signed(key).to_bytes())
    edit(document)
    (tmp_path / layout.MANIFEST).write_text(json.dumps(document))
    with pytest.raises(IntegrityError, match=message):
        store.load_manifest(verify=True)


def test_wrong_public_key(store: BackupStore, tmp_path: Path) -> None:
    _add(store)
    other = BackupStore(LocalShare(tmp_path), verifier=Ed25519PrivateKey.generate().public_key())
    with pytest.raises(IntegrityError, match="not by the inventory's public key"):
        other.load_manifest(verify=True)


def test_signer_must_match_verifier(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    with pytest.raises(ConfigError, match="does not belong"):
        BackupStore(LocalShare(tmp_path), key, Ed25519PrivateKey.generate().public_key())


def test_same_bytes_same_second_recorded_once(store: BackupStore) -> None:
    first = _add(store, created=T0)
    assert _add(store, created=T0) == first
    assert len(store.load_manifest().entries) == 1


@pytest.mark.parametrize("left_behind", [b"key", b"other bytes"])
def test_file_left_by_an_interrupted_add(store: BackupStore, left_behind: bytes) -> None:
    first = store.add(host="ms02", group="PROD", role="management_server", data=b"first", password_id="p")
    path = layout.key_file_path("PROD", "management_server", "ms01", T0, hashlib.sha256(b"key").hexdigest())
    store.share.write_new(path, left_behind)
    if left_behind == b"key":  # identical: adopted
        entry = _add(store, created=T0)
        assert store.load_manifest().entries == (first, entry)
    else:  # never overwritten, never recorded
        with pytest.raises(ShareExistsError):
            _add(store, created=T0)
        assert store.load_manifest().entries == (first,)
        assert store.share.read_bytes(path) == b"other bytes"


def test_the_first_add_writes_a_signed_manifest_before_any_key_file(store: BackupStore) -> None:
    written: list[str] = []
    replace, write_new = store.share.replace, store.share.write_new
    store.share.replace = lambda path, data: (written.append(path), replace(path, data))[1]  # type: ignore[method-assign]
    store.share.write_new = lambda path, data: (written.append(path), write_new(path, data))[1]  # type: ignore[method-assign]
    _add(store, created=T0)
    assert written[0] == layout.MANIFEST and written[1].endswith(".bin")


def test_a_deleted_manifest_is_not_silently_replaced(store: BackupStore, tmp_path: Path) -> None:
    _add(store, created=T0)
    (tmp_path / layout.MANIFEST).unlink()
    with pytest.raises(IntegrityError, match=r"manifest-missing: manifest\.json is missing"):
        store.load_manifest()
    with pytest.raises(IntegrityError, match="refusing"):
        BackupStore(store.share, store.signer).add(
            host="ms02", group="PROD", role="management_server", data=b"x", password_id="p"
        )


def test_an_unsigned_empty_manifest_does_not_verify(store: BackupStore, tmp_path: Path, key: Ed25519PrivateKey) -> None:
    (tmp_path / layout.MANIFEST).write_bytes(Manifest().to_bytes())
    with pytest.raises(IntegrityError, match="not signed"):
        store.load_manifest()


def test_read_key_file_checks_hash(store: BackupStore, tmp_path: Path) -> None:
    entry = store.add(host="ms01", group="PROD", role="management_server", data=b"abcdef", password_id="p")
    (tmp_path / entry.path).write_bytes(b"abcdeX")
    assert store.check_key_file(entry).state is FileState.ALTERED
    with pytest.raises(IntegrityError, match="does not match its SHA-256"):
        store.read_key_file(entry)
    (tmp_path / entry.path).unlink()
    assert store.check_key_file(entry).state is FileState.LOST
    with pytest.raises(IntegrityError, match="is missing"):
        store.read_key_file(entry)


def test_remove_entries(store: BackupStore, tmp_path: Path) -> None:
    old = _add(store, data=b"1", created=T0)
    new = _add(store, data=b"2")
    assert store.remove_entries([old.id, "unknown"]) == [old]
    assert store.load_manifest().entries == (new,)
    assert not (tmp_path / old.path).exists()
    assert store.remove_entries(["unknown"]) == []


def test_empty_key_file_refused(store: BackupStore) -> None:
    with pytest.raises(IntegrityError, match="empty key file"):
        _add(store, data=b"")


def test_run_records(store: BackupStore, tmp_path: Path) -> None:
    outcome = HostOutcome(
        host="ms01",
        group="PROD",
        role="management_server",
        status=Status.FAILED,
        kind="auth",
        message="401",
        duration=1.5,
        attempts=1,
    )
    older = RunRecord(
        "20260101T000000Z-aaaaaa",
        "backup",
        T0.replace(day=1),
        T0.replace(day=1),
        "inv.yml",
        str(tmp_path),
        False,
        (outcome,),
    )
    newer = RunRecord(new_run_id(T0), "backup", T0, T0, "inv.yml", str(tmp_path), True, ())
    assert store.write_run_record(newer) == f"runs/{newer.run_id}.json"
    store.write_run_record(older)
    with pytest.raises(ShareExistsError):
        store.write_run_record(older)
    assert store.run_records() == [older, newer]
    assert older.outcome("ms01") == outcome
    (tmp_path / "runs" / "20260103T000000Z-bbbbbb.json").write_text("{torn")
    invalid: list[str] = []
    assert store.run_records(invalid=invalid) == [older, newer]
    assert invalid == ["runs/20260103T000000Z-bbbbbb.json"]
    with pytest.raises(IntegrityError, match="not a valid run record"):
        store.run_records()


def test_remove_stale_temporaries(store: BackupStore, tmp_path: Path) -> None:
    _add(store)
    (tmp_path / layout.temporary_name("manifest.json")).write_text("half")
    assert store.remove_stale_temporaries() == 1


def test_new_run_id() -> None:
    run_id = new_run_id(T0)
    assert run_id.startswith("20260102T030405Z-") and len(run_id) == 23
    assert layout.run_record_path(run_id) == f"runs/{run_id}.json"
    with pytest.raises(ConfigError):
        layout.run_record_path("../x")


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "is empty"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("..", "'..'"),
        ("a..b", "'..'"),
        ("C:", "drive letter"),
        ("a\nb", "control character"),
        ("a\x00", "control"),
        (".hidden", "must start with"),
        ("-x", "must start with"),
        ("sp ace", "must start with"),
    ],
)
def test_unsafe_names(name: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        layout.key_file_path("G", "management_server", name, T0, "a" * 64)
    with pytest.raises(ConfigError, match=problem):
        layout.key_file_path(name, "management_server", "ms01", T0, "a" * 64)


def test_parse_key_file_path() -> None:
    path = layout.key_file_path("PROD", "management_server", "ms01.contoso.com", T0, "ab" * 32)
    parsed = layout.parse_key_file_path(path)
    assert parsed == layout.KeyFileName("PROD", "management_server", "ms01.contoso.com", T0, "ab" * 6)
    assert layout.parse_key_file_path("PROD/x.bin") is None
    assert layout.parse_key_file_path("PROD/r/h/20261399T000000Z-abababababab.bin") is None


def _raw(key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    private = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return private, public


def test_key_formats(key: Ed25519PrivateKey) -> None:
    private, public = _raw(key)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    for text in (pem, base64.b64encode(private).decode() + "\n"):
        assert _raw(load_private_key(Secret(text, "file:k")))[0] == private
    for text in (public_pem, base64.b64encode(public).decode(), base64.b64encode(spki).decode()):
        loaded = load_public_key(text)
        assert isinstance(loaded, Ed25519PublicKey)
        assert public_key_sha256(loaded) == hashlib.sha256(public).hexdigest()


def test_bad_keys_do_not_leak() -> None:
    with pytest.raises(ConfigError) as raised:
        load_private_key(Secret("not-a-key-but-a-password", "env:SIGNING"))
    assert "not-a-key" not in str(raised.value)
    assert str(raised.value).startswith("signing.private_key: env:SIGNING is not")
    with pytest.raises(ConfigError, match=r"signing\.public_key: not an Ed25519 public key"):
        load_public_key(base64.b64encode(b"x" * 31).decode())


def test_new_signing_key_pair() -> None:
    private, public = new_signing_key_pair()
    key = load_private_key(private)
    assert public_key_sha256(key.public_key()) == public_key_sha256(load_public_key(public))
    assert "generated" in repr(private)


def test_manifest_roundtrip(key: Ed25519PrivateKey, store: BackupStore) -> None:
    """The keyfleet-manifest/1 format, still read from shares written before the history."""
    entry = _add(store, created=T0)
    manifest = Manifest(entries=(entry,), updated=T0).signed(key)
    again = Manifest.from_bytes(manifest.to_bytes())
    assert again == manifest and again.entries == (entry,)
    again.verify(key.public_key())


def test_concurrent_adds_from_threads_all_land(store: BackupStore) -> None:
    # Each add takes the share lock on its own file descriptor, so threads serialise like processes.
    def add(i: int) -> ManifestEntry:
        return store.add(host=f"ms{i:02}", group="PROD", role="management_server", data=b"k%d" % i, password_id="p")

    with ThreadPoolExecutor(max_workers=16) as pool:
        added = list(pool.map(add, range(32)))
    assert sorted(e.id for e in store.load_manifest(verify=True).entries) == sorted(e.id for e in added)


def test_stop_adding_reports_what_was_stored_and_refuses_more(store: BackupStore) -> None:
    entry = _add(store, created=T0)
    assert store.stop_adding() == [entry]
    with pytest.raises(ShareError, match="aborted"):
        store.add(host="ms02", group="PROD", role="management_server", data=b"late", password_id="p")
    assert store.load_manifest().entries == (entry,)
