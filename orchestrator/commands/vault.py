"""``keyfleet vault create|view|edit|encrypt|decrypt|rekey FILE``: ansible-vault 1.1 secrets files.

The vault password comes from ``KEYFLEET_VAULT_PASSWORD_FILE`` or a hidden prompt; ``rekey`` takes
the new one from ``KEYFLEET_NEW_VAULT_PASSWORD_FILE`` or a prompt asked twice. Files are written
0600, atomically; create/edit open ``$EDITOR`` (without ``KEYFLEET_*`` variables) on a private
temporary copy removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from orchestrator.errors import ConfigError
from orchestrator.privatefile import write_private
from orchestrator.secret import Secret
from orchestrator.secretrefs import NEW_VAULT_PASSWORD_FILE_ENV, child_environment, vault_password
from orchestrator.vault import VaultError, decrypt, encrypt, is_vault


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def _open_vault(path: Path) -> tuple[bytes, Secret]:
    data = _read(path)
    if not is_vault(data):
        raise ConfigError(f"{path} is not an ansible-vault file")
    password = vault_password(path)
    try:
        return decrypt(data, password), password
    except VaultError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _private_dir() -> str:
    """A 0700 temporary folder, in RAM (/dev/shm) when the system has one."""
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    return tempfile.mkdtemp(prefix="keyfleet-vault-", dir=base)


def edit_in_editor(content: bytes, suffix: str) -> bytes:
    """Let the user edit ``content`` in $VISUAL/$EDITOR (default vi) on a private temp file; the editor
    does not inherit ``KEYFLEET_*`` variables."""
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    folder = _private_dir()
    try:
        temp = Path(folder) / f"secrets{suffix}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        try:
            status = subprocess.run([*shlex.split(editor), str(temp)], check=False, env=child_environment()).returncode
        except OSError as exc:
            raise ConfigError(f"cannot start the editor {editor!r}: {exc.strerror}") from None
        if status != 0:
            raise ConfigError(f"the editor exited with status {status}; nothing saved")
        return temp.read_bytes()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _save(path: Path, plaintext: bytes, password: Secret) -> None:
    try:
        write_private(path, encrypt(plaintext, password))
    except VaultError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None


def run(args: argparse.Namespace) -> int:
    path = Path(args.file)
    action = args.action
    if action == "create":
        if path.exists():
            raise ConfigError(f"{path} already exists: use keyfleet vault edit")
        password = vault_password(path, confirm=True)
        content = edit_in_editor(b"", path.suffix)
        if not content.strip():
            raise ConfigError(f"{path}: nothing was written in the editor; not created")
        _save(path, content, password)
    elif action == "view":
        plaintext, _ = _open_vault(path)
        sys.stdout.buffer.write(plaintext)
        sys.stdout.flush()
    elif action == "edit":
        plaintext, password = _open_vault(path)
        edited = edit_in_editor(plaintext, path.suffix)
        if edited != plaintext:
            _save(path, edited, password)
    elif action == "encrypt":
        data = _read(path)
        if is_vault(data):
            raise ConfigError(f"{path} is already an ansible-vault file")
        _save(path, data, vault_password(path, confirm=True))
    elif action == "decrypt":
        plaintext, _ = _open_vault(path)
        try:
            write_private(path, plaintext)
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    elif action == "rekey":
        plaintext, _ = _open_vault(path)
        new = vault_password(path, env=NEW_VAULT_PASSWORD_FILE_ENV, confirm=True, purpose="New vault password")
        _save(path, plaintext, new)
    else:
        raise ConfigError(f"unknown vault action {action!r}")
    return 0
