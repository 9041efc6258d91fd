"""LocalShare: the Share contract on a local folder, error mapping, and share URL parsing."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError, ShareError, ShareExistsError
from orchestrator.share.base import ShareLinkError
from orchestrator.share.local import LocalShare
from orchestrator.share.open import SMBLocation, open_share, parse_smb_url
from tests.share_contract import ShareContract, ShareTarget


class TestLocalShare(ShareContract):
    @pytest.fixture
    def target(self, tmp_path: Path) -> ShareTarget:
        return ShareTarget(url=str(tmp_path / "share"), local_root=tmp_path / "share")


def _fail_with(code: int) -> Callable[..., None]:
    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    return fail


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (errno.ENOSPC, "no space left on the share"),
        (errno.EDQUOT, "disk quota exceeded on the share"),
        (errno.EACCES, "permission denied"),
        (errno.EROFS, "the share is mounted read-only"),
    ],
)
def test_os_errors_become_share_errors_and_leave_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, reason: str
) -> None:
    share = LocalShare(tmp_path)
    (tmp_path / "G1").mkdir()
    monkeypatch.setattr(os, "fsync", _fail_with(code))
    with pytest.raises(ShareError) as raised:
        share.write_new("G1/a.bin", b"x")
    assert str(raised.value) == f"share {tmp_path}: cannot write G1/a.bin: {reason}"
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "G1").iterdir()] == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions, not root")
def test_permission_denied(tmp_path: Path) -> None:
    share = LocalShare(tmp_path)
    share.write_new("G1/a.bin", b"x")
    (tmp_path / "G1").chmod(0o500)
    try:
        with pytest.raises(ShareError, match=r"cannot write G1/b\.bin: permission denied"):
            share.write_new("G1/b.bin", b"y")
    finally:
        (tmp_path / "G1").chmod(0o700)


def test_without_hard_links_still_never_overwrites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "link", _fail_with(errno.EPERM))
    share = LocalShare(tmp_path)
    share.write_new("G1/a.bin", b"old")
    with pytest.raises(ShareExistsError):
        share.write_new("G1/a.bin", b"new")
    assert share.read_bytes("G1/a.bin") == b"old"
    assert sorted(p.name for p in (tmp_path / "G1").iterdir()) == ["a.bin"]


def test_missing_root_lists_nothing(tmp_path: Path) -> None:
    share = LocalShare(tmp_path / "not-yet")
    assert list(share.list_files()) == []
    assert not share.exists("manifest.json")
    assert share.remove_stale_temporaries() == 0


def test_lock_timeout_names_the_share(tmp_path: Path) -> None:
    share, other = LocalShare(tmp_path), LocalShare(tmp_path)
    # a second holder waits, even in the same process
    with (
        share.lock(),
        pytest.raises(ShareError, match=rf"share {tmp_path}: timed out after 0\.2 s"),
        other.lock(timeout=0.2),
    ):
        pass


def test_open_local_paths(tmp_path: Path) -> None:
    share = open_share("backups", base_dir=tmp_path)
    assert isinstance(share, LocalShare) and share.root == tmp_path / "backups"
    assert isinstance(open_share(str(tmp_path)), LocalShare)
    file_share = open_share(f"file://{tmp_path}/x")
    assert isinstance(file_share, LocalShare) and file_share.root == tmp_path / "x"


@pytest.mark.parametrize(
    ("url", "location"),
    [
        ("smb://srv/keys", SMBLocation("srv", 445, "keys", "")),
        ("smb://srv:4450/keys/scsm/prod", SMBLocation("srv", 4450, "keys", "scsm/prod")),
        ("smb://backup@10.0.0.5/keys/a%20b", SMBLocation("10.0.0.5", 445, "keys", "a b", "backup")),
        ("\\\\srv\\keys\\scsm", SMBLocation("srv", 445, "keys", "scsm")),
        ("//srv/keys", SMBLocation("srv", 445, "keys", "")),
    ],
)
def test_parse_smb_url(url: str, location: SMBLocation) -> None:
    assert parse_smb_url(url) == location


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("smb://user:pw@srv/keys", "must not contain a password"),
        ("smb://srv", "expected smb://server"),
        ("smb://srv:x/keys", "port is not a number"),
        ("\\\\srv", "needs a server and a share name"),
    ],
)
def test_bad_smb_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        parse_smb_url(url)
    assert "user:pw" not in str(raised.value)


def test_unsupported_scheme() -> None:
    with pytest.raises(ConfigError, match="unsupported scheme 'nfs'"):
        open_share("nfs://srv/keys")


def _swap_before(monkeypatch: pytest.MonkeyPatch, name: str, folder: Path, outside: Path) -> Callable[[], bool]:
    """Make ``os.<name>`` first replace ``folder`` by a link to ``outside`` (an attacker winning the race
    between the share opening ``folder`` and using a name in it), then do its work; returns "swapped?"."""
    real = getattr(os, name)
    swapped: list[bool] = []

    def attacker_first(*args: object, **kwargs: object) -> object:
        if not swapped:
            folder.rename(folder.with_name(folder.name + ".aside"))
            folder.symlink_to(outside, target_is_directory=True)
            swapped.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, attacker_first)
    return lambda: bool(swapped)


def test_a_folder_swapped_for_a_link_after_it_was_opened_is_never_written_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, outside = tmp_path / "share", tmp_path / "outside"
    outside.mkdir()
    share = LocalShare(root)
    share.write_new("G1/first.bin", b"first")
    swapped = _swap_before(monkeypatch, "link", root / "G1", outside)  # after the temporary is written
    share.write_new("G1/second.bin", b"second")
    monkeypatch.undo()
    assert swapped()
    assert list(outside.iterdir()) == []  # nothing written where the link points
    assert (root / "G1.aside" / "second.bin").read_bytes() == b"second"  # the folder that was opened
    with pytest.raises(ShareLinkError):
        share.write_new("G1/third.bin", b"third")  # the link itself is refused from now on


def test_a_folder_swapped_for_a_link_after_it_was_opened_is_never_deleted_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, outside = tmp_path / "share", tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.bin").write_bytes(b"not the share's")
    share = LocalShare(root)
    share.write_new("G1/victim.bin", b"the share's")
    swapped = _swap_before(monkeypatch, "unlink", root / "G1", outside)  # after the checks, before the delete
    share.remove("G1/victim.bin")
    monkeypatch.undo()
    assert swapped()
    assert (outside / "victim.bin").read_bytes() == b"not the share's"
    assert not (root / "G1.aside" / "victim.bin").exists()  # the share's own file went


def test_a_folder_swapped_for_a_link_is_never_read_or_listed_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, outside = tmp_path / "share", tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(b"outside")
    share = LocalShare(root)
    share.write_new("G1/secret.bin", b"inside")
    swapped = _swap_before(monkeypatch, "fdopen", root / "G1", outside)  # the file is open, not yet read
    assert share.read_bytes("G1/secret.bin") == b"inside"
    monkeypatch.undo()
    assert swapped()
    with pytest.raises(ShareLinkError):
        share.read_bytes("G1/secret.bin")
    assert [(item.path, item.kind.value) for item in share.scan()] == [
        ("G1", "link"),
        ("G1.aside/secret.bin", "file"),
    ]
    assert list(share.list_files()) == ["G1.aside/secret.bin"]


def test_every_name_is_used_relative_to_an_open_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The calls that name files under the root get a folder descriptor and a bare name, never a path."""
    share = LocalShare(tmp_path / "share")
    share.write_new("G1/R/a.bin", b"a")
    calls: list[tuple[str, object, object]] = []
    for name in ("open", "stat", "unlink", "link", "replace", "mkdir"):
        real = getattr(os, name)

        def spy(*args: object, _name: str = name, _real: Callable[..., object] = real, **kwargs: object) -> object:
            calls.append((_name, args[0], kwargs.get("dir_fd", kwargs.get("src_dir_fd"))))
            return _real(*args, **kwargs)

        monkeypatch.setattr(os, name, spy)
    share.write_new("G1/R/b.bin", b"b")
    share.replace("G2/c.bin", b"c")
    assert share.read_bytes("G1/R/a.bin") == b"a" and share.exists("G1/R/b.bin")
    share.remove("G1/R/a.bin")
    monkeypatch.undo()
    under_root = [call for call in calls if str(call[1]) != str(tmp_path / "share")]
    assert under_root and all(isinstance(fd, int) and "/" not in str(arg) for _, arg, fd in under_root), under_root


def test_a_folder_another_first_backup_makes_between_the_two_looks_is_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two first backups at once: one sees no folder, the other makes it, the first looks again and finds
    something there. A folder is a folder (it was called "not a folder", exit 2)."""
    from orchestrator.share import local
    from orchestrator.share.base import FolderState

    root = tmp_path / "share"
    real = local.os.path.lexists

    def made_meanwhile(path: object) -> bool:
        root.mkdir(exist_ok=True)  # the other run's mkdir lands between is_dir and lexists
        return real(path)  # type: ignore[arg-type]

    monkeypatch.setattr(local.os.path, "lexists", made_meanwhile)
    assert LocalShare(root).folder_state() is FolderState.EXISTS


def test_an_interrupt_right_after_a_folder_is_closed_never_closes_it_again(tmp_path: Path, monkeypatch) -> None:
    """A Ctrl-C landing just after the descriptor of a folder on the path was closed: the interrupt comes
    through, and no clean-up closes that descriptor a second time (EBADF would replace the interrupt, or
    worse, a descriptor another thread opened under the same number since would be closed)."""
    share = LocalShare(tmp_path)
    share.write_new("a/b/c.bin", b"key")
    real_close = os.close
    closes: list[int] = []

    def close(fd: int) -> None:
        real_close(fd)
        closes.append(fd)
        if len(closes) == 1:
            raise KeyboardInterrupt  # the signal arrives as the first folder (the share's root) is closed

    monkeypatch.setattr(os, "close", close)
    with pytest.raises(KeyboardInterrupt):
        share.read_bytes("a/b/c.bin")


def test_a_named_pipe_or_an_oversized_file_on_the_share_is_never_read(tmp_path: Path) -> None:
    """A FIFO someone left on the share would block its reader forever (open waits for a writer); a
    2 GB file would cost several times that in memory once parsed. Both are refused at once (exit 3)."""
    from orchestrator.share.base import MAX_READ_BYTES, ShareFileUnusable

    share = LocalShare(tmp_path)
    share.write_new("runs/a.json", b"{}")
    os.mkfifo(tmp_path / "runs" / "pipe.json")
    with pytest.raises(ShareFileUnusable, match="is not a regular file"):
        share.read_bytes("runs/pipe.json")
    with open(tmp_path / "runs" / "huge.json", "wb") as sparse:
        sparse.truncate(MAX_READ_BYTES + 1)
    with pytest.raises(ShareFileUnusable, match="more than any file keyfleet writes"):
        share.read_bytes("runs/huge.json")
    assert share.read_bytes("runs/a.json") == b"{}"
