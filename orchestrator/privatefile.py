"""Files only their owner may read (0600), written atomically: secrets, keys, lab state."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _temporary_copy(path: Path, data: bytes) -> str:
    """A flushed 0600 temporary file holding ``data`` beside ``path``; the caller moves or removes it."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mkstemp: 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return temp


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: a reader sees the old or the new bytes."""
    path = Path(path)
    temp = _temporary_copy(path, data)
    try:
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def create_private(path: Path, data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists (False then); of two creators one wins."""
    path = Path(path)
    temp = _temporary_copy(path, data)
    try:
        os.link(temp, path)
    except FileExistsError:
        return False
    finally:
        Path(temp).unlink(missing_ok=True)
    return True
