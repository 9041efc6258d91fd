"""The guarantees of ``orchestrator.share.base.Share``, as a test suite any backend can reuse.

A backend's test module subclasses :class:`ShareContract` and provides a ``target`` fixture that
returns a :class:`ShareTarget` for a fresh, empty share::

    class TestSMBShare(ShareContract):
        @pytest.fixture
        def target(self, smbd, tmp_path):
            return ShareTarget(url="smb://backup@127.0.0.1:4450/keys/t1",
                               env={"KEYFLEET_SHARE_PASSWORD": ...}, local_root=smbd.root / "t1")

Other processes open the same share with ``open_share(url)`` under ``env`` (real processes, so the
lock and the manifest update are tested across process boundaries).
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator.errors import ConfigError, ShareError, ShareExistsError
from orchestrator.share import layout
from orchestrator.share.base import FolderState, Share
from orchestrator.share.open import open_share
from orchestrator.share.store import BackupStore

REPO = Path(__file__).resolve().parents[1]


@dataclass
class ShareTarget:
    """A fresh share for one test. ``local_root``: where its files are visible on this machine."""

    url: str
    env: dict[str, str] = field(default_factory=dict)
    local_root: Path | None = None
    posix_modes: bool = True  # whether the backend promises 0600 files and 0700 folders

    def open(self) -> Share:
        saved = {key: os.environ.get(key) for key in self.env}
        os.environ.update(self.env)
        try:
            return open_share(self.url)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def run_child(self, script: str, *args: str, timeout: float = 60) -> subprocess.Popen[str]:
        """Start a Python process that gets ``share = open_share(url)`` and runs ``script``."""
        prelude = "import sys\nfrom orchestrator.share.open import open_share\nshare = open_share(sys.argv[1])\n"
        return subprocess.Popen(
            [sys.executable, "-c", prelude + textwrap.dedent(script), self.url, *args],
            env={**os.environ, **self.env, "PYTHONPATH": str(REPO)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


_LOCK_CHILD = """
from orchestrator.errors import ShareError
timeout = float(sys.argv[2])
try:
    with share.lock(timeout=timeout):
        print("locked", flush=True)
except ShareError as exc:
    print("timeout", exc, flush=True)
"""

_ADD_CHILD = """
import base64
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from orchestrator.share.store import BackupStore
key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(sys.stdin.readline()))
store = BackupStore(share, key)
for i in range(int(sys.argv[3])):
    store.add(host=sys.argv[2], group="G1", role="management_server", data=f"{sys.argv[2]}-{i}".encode(),
              password_id="pw")
print("done", flush=True)
"""


class ShareContract:
    """Every test gets a fresh share from the backend's ``target`` fixture."""

    @pytest.fixture
    def share(self, target: ShareTarget) -> Iterator[Share]:
        with target.open() as share:
            yield share

    def test_write_new_then_read_and_list(self, share: Share) -> None:
        share.write_new("G1/management_server/ms01/a.bin", b"key-bytes")
        share.write_new("runs/r1.json", b"{}")
        assert share.read_bytes("G1/management_server/ms01/a.bin") == b"key-bytes"
        assert share.exists("G1/management_server/ms01/a.bin")
        assert not share.exists("G1/management_server/ms01/b.bin")
        assert list(share.list_files()) == ["G1/management_server/ms01/a.bin", "runs/r1.json"]
        assert list(share.list_files("runs")) == ["runs/r1.json"]
        assert list(share.list_files("nothing-here")) == []

    def test_folder_state_and_create_folder(self, share: Share, target: ShareTarget) -> None:
        share.write_new("G1/a.bin", b"x")  # the share's folder exists now

        def child(path: str) -> Share:
            return ShareTarget(url=f"{target.url.rstrip('/')}/{path}", env=target.env).open()

        assert share.folder_state() is FolderState.EXISTS
        with child("G1") as existing, child("new") as new, child("no/new") as orphan:
            assert existing.folder_state() is FolderState.EXISTS
            assert orphan.folder_state() is FolderState.NO_PARENT
            assert new.folder_state() is FolderState.MISSING
            new.create_folder()
            assert new.folder_state() is FolderState.EXISTS
            new.create_folder()  # already there: nothing to do
        assert list(share.list_files()) == ["G1/a.bin"]
        if target.local_root and target.posix_modes and os.name == "posix":
            assert stat.S_IMODE((target.local_root / "new").stat().st_mode) == 0o700

    def test_write_new_never_overwrites(self, share: Share, target: ShareTarget) -> None:
        share.write_new("G1/a.bin", b"old bytes")
        with pytest.raises(ShareExistsError) as raised:
            share.write_new("G1/a.bin", b"new bytes")
        assert share.url in str(raised.value)
        assert share.read_bytes("G1/a.bin") == b"old bytes"
        assert list(share.list_files()) == ["G1/a.bin"]
        if target.local_root:
            assert sorted(p.name for p in (target.local_root / "G1").iterdir()) == ["a.bin"]

    def test_files_private(self, share: Share, target: ShareTarget) -> None:
        if not (target.local_root and target.posix_modes and os.name == "posix"):
            pytest.skip("the backend has no POSIX modes visible here")
        share.write_new("G1/role/host/a.bin", b"x")
        share.replace("manifest.json", b"{}")
        root = target.local_root
        for folder in ("G1", "G1/role", "G1/role/host"):
            assert stat.S_IMODE((root / folder).stat().st_mode) == 0o700, folder
        for name in ("G1/role/host/a.bin", "manifest.json"):
            assert stat.S_IMODE((root / name).stat().st_mode) == 0o600, name

    def test_a_file_larger_than_any_keyfleet_writes_is_never_read(self, share: Share, target: ShareTarget) -> None:
        """A 2 GB file on the share (sparse: it costs no disk) would cost several times that in memory once
        parsed: refused from its size, before a byte is read; a normal file next to it reads as before."""
        from orchestrator.share.base import MAX_READ_BYTES, ShareFileUnusable

        if target.local_root is None:
            pytest.skip("needs the share's files on this machine")
        share.write_new("runs/a.json", b"{}")
        with open(target.local_root / "runs" / "huge.json", "wb") as sparse:
            sparse.truncate(2 * 1024**3)
        assert MAX_READ_BYTES < 2 * 1024**3
        with pytest.raises(ShareFileUnusable, match="more than any file keyfleet writes"):
            share.read_bytes("runs/huge.json")
        assert share.read_bytes("runs/a.json") == b"{}"

    def test_replace_is_atomic(self, share: Share) -> None:
        old, new = b"a" * 300_000, b"b" * 300_000
        share.replace("manifest.json", old)
        seen: set[bytes] = set()
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                seen.add(share.read_bytes("manifest.json"))

        reader = threading.Thread(target=read)
        reader.start()
        try:
            for i in range(20):
                share.replace("manifest.json", new if i % 2 == 0 else old)
        finally:
            stop.set()
            reader.join()
        assert seen <= {old, new}
        assert share.read_bytes("manifest.json") == old
        assert list(share.list_files()) == ["manifest.json"]

    def test_remove(self, share: Share) -> None:
        share.write_new("G1/a.bin", b"x")
        share.remove("G1/a.bin")
        assert not share.exists("G1/a.bin")
        with pytest.raises(ShareError):
            share.remove("G1/a.bin")

    def test_missing_file_names_the_share(self, share: Share) -> None:
        with pytest.raises(ShareError) as raised:
            share.read_bytes("G1/none.bin")
        assert share.url in str(raised.value)

    @pytest.mark.parametrize("path", ["../escape.bin", "G1/../../x", "/abs/x", "C:/x", "G1\\x", "G1/\x01"])
    def test_unsafe_paths_rejected(self, share: Share, path: str) -> None:
        with pytest.raises(ConfigError):
            share.write_new(path, b"x")

    def test_temporaries_hidden_and_cleaned(self, share: Share, target: ShareTarget) -> None:
        if target.local_root is None:
            pytest.skip("cannot plant a temporary file on this backend")
        share.write_new("G1/a.bin", b"x")
        stale = target.local_root / "G1" / layout.temporary_name("b.bin")
        stale.write_bytes(b"half")
        assert list(share.list_files()) == ["G1/a.bin"]
        assert share.remove_stale_temporaries() == 1
        assert not stale.exists()
        assert share.read_bytes("G1/a.bin") == b"x"

    def test_lock_excludes_another_process(self, share: Share, target: ShareTarget) -> None:
        with share.lock(timeout=5):
            child = target.run_child(_LOCK_CHILD, "0.5")
            out, err = child.communicate(timeout=60)
            assert out.startswith("timeout"), err
            assert "timed out" in out
        child = target.run_child(_LOCK_CHILD, "10")
        out, err = child.communicate(timeout=60)
        assert out.strip() == "locked", err
        assert layout.LOCK_NAME not in list(share.list_files())

    def test_lock_waits_for_release(self, share: Share, target: ShareTarget) -> None:
        with share.lock(timeout=5):
            child = target.run_child(_LOCK_CHILD, "30")
            with pytest.raises(subprocess.TimeoutExpired):
                child.communicate(timeout=1.5)
        out, err = child.communicate(timeout=60)
        assert out.strip() == "locked", err

    def test_concurrent_adds_from_two_processes_all_land(self, share: Share, target: ShareTarget) -> None:
        key = Ed25519PrivateKey.generate()
        raw = key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        children = [target.run_child(_ADD_CHILD, host, "6") for host in ("ms01", "ms02")]
        for child in children:
            assert child.stdin is not None
            child.stdin.write(base64.b64encode(raw).decode() + "\n")
            child.stdin.flush()
        for child in children:
            out, err = child.communicate(timeout=120)
            assert out.strip() == "done", err
        manifest = BackupStore(share, verifier=key.public_key()).load_manifest(verify=True)
        assert sorted(e.host for e in manifest.entries) == ["ms01"] * 6 + ["ms02"] * 6
        for entry in manifest.entries:
            assert hashlib.sha256(share.read_bytes(entry.path)).hexdigest() == entry.sha256
        assert not [p for p in share.list_files() if layout.is_temporary(p.rsplit("/", 1)[-1])]
