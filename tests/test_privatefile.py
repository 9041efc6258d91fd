"""privatefile: the one atomic writer of private files (controller state, lab files, the local share)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from orchestrator.privatefile import create_private, write_private


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_private_replaces_atomically_and_privately(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_private(path, b"one")
    write_private(path, b"two")
    assert path.read_bytes() == b"two" and _mode(path) == 0o600
    assert os.listdir(tmp_path) == ["state.json"]  # no temporary left behind


def test_create_private_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    assert create_private(path, b"first") is True
    assert create_private(path, b"second") is False
    assert path.read_bytes() == b"first" and _mode(path) == 0o600
    assert os.listdir(tmp_path) == ["key.pem"]


def test_names_relative_to_an_open_folder_never_follow_a_link(tmp_path: Path) -> None:
    folder, outside = tmp_path / "folder", tmp_path / "outside"
    folder.mkdir()
    outside.write_bytes(b"outside")
    (folder / "link").symlink_to(outside)
    fd = os.open(folder, os.O_RDONLY)
    try:
        assert create_private("link", b"new", dir_fd=fd) is False  # the name is taken by the link
        write_private("link", b"replaced", dir_fd=fd)  # replaces the link itself
        create_private("fresh", b"fresh", dir_fd=fd)
    finally:
        os.close(fd)
    assert outside.read_bytes() == b"outside"
    assert not (folder / "link").is_symlink() and (folder / "link").read_bytes() == b"replaced"
    assert sorted(os.listdir(folder)) == ["fresh", "link"]
