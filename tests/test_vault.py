"""The ansible-vault 1.1 format and ``keyfleet vault``, checked against the real ansible-vault."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.secret import Secret
from orchestrator.vault import VaultError, decrypt, encrypt, is_vault

REPO = Path(__file__).resolve().parents[1]
CONTENT = b"winrm_password: Vq3-unique-4417\nbackup:\n  password: other-5521\n"


def ansible_vault() -> str:
    beside = Path(sys.executable).parent / "ansible-vault"
    found = str(beside) if beside.exists() else shutil.which("ansible-vault")
    if found is None:
        pytest.fail("ansible-vault not found next to the interpreter or on PATH (install ansible-core)")
    return found


def password_file(folder: Path, name: str, value: str) -> Path:
    path = folder / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYFLEET_")}
    env.update(HOME=str(tmp_path), ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"), **extra)
    return env


def keyfleet(tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "vault", *args],
        capture_output=True,
        env=env_for(tmp_path, **extra),
        cwd=REPO,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def ansible(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [ansible_vault(), *args], capture_output=True, env=env_for(tmp_path), cwd=tmp_path, timeout=60
    )


def editor_writing(tmp_path: Path, content: bytes) -> str:
    """An $EDITOR that appends ``content`` to the file it is given and records the file's mode, and
    the names of the KEYFLEET_* variables and the value of KF_TEST_KEEP it got (editor-env.json)."""
    source = tmp_path / "content.bin"
    source.write_bytes(content)
    path = tmp_path / "editor.py"
    path.write_text(
        f"#!{sys.executable}\n"
        "import json, os, stat, sys\n"
        "target = sys.argv[1]\n"
        "mode = oct(stat.S_IMODE(os.stat(target).st_mode))\n"
        f"open({str(tmp_path / 'editor-seen')!r}, 'w').write(target + ' ' + mode)\n"
        "names = sorted(k for k in os.environ if k.upper().startswith('KEYFLEET_'))\n"
        f"record = {{'keyfleet': names, 'keep': os.environ.get('KF_TEST_KEEP')}}\n"
        f"open({str(tmp_path / 'editor-env.json')!r}, 'w').write(json.dumps(record))\n"
        f"data = open({str(source)!r}, 'rb').read()\n"
        "open(target, 'ab').write(data)\n"
    )
    path.chmod(0o700)
    return str(path)


def test_round_trip_and_format() -> None:
    vaulttext = encrypt(CONTENT, Secret("pw-1"))
    lines = vaulttext.decode().splitlines()
    assert lines[0] == "$ANSIBLE_VAULT;1.1;AES256" and vaulttext.endswith(b"\n")
    assert all(len(line) == 80 for line in lines[1:-1]) and 0 < len(lines[-1]) <= 80
    assert is_vault(vaulttext) and not is_vault(CONTENT)
    assert decrypt(vaulttext, Secret("pw-1")) == CONTENT
    assert encrypt(CONTENT, Secret("pw-1")) != vaulttext  # fresh salt every time
    assert decrypt(encrypt(b"", Secret("pw-1")), Secret("pw-1")) == b""


def test_wrong_password_and_damage() -> None:
    vaulttext = encrypt(CONTENT, Secret("pw-1"))
    with pytest.raises(VaultError, match="wrong vault password"):
        decrypt(vaulttext, Secret("pw-2"))
    damaged = vaulttext[:40] + (b"0" if vaulttext[40:41] != b"0" else b"1") + vaulttext[41:]
    with pytest.raises(VaultError):
        decrypt(damaged, Secret("pw-1"))
    with pytest.raises(VaultError, match="unsupported"):
        decrypt(b"$ANSIBLE_VAULT;1.1;AES\n00\n", Secret("pw-1"))
    with pytest.raises(VaultError, match="not an ansible-vault"):
        decrypt(CONTENT, Secret("pw-1"))


def test_ansible_encrypted_file_is_read_by_keyfleet(tmp_path: Path) -> None:
    pw = password_file(tmp_path, "pw", "interop-pw-31")
    secrets = tmp_path / "secrets.yml"
    secrets.write_bytes(CONTENT)
    assert ansible(tmp_path, "encrypt", "--vault-password-file", str(pw), str(secrets)).returncode == 0
    assert decrypt(secrets.read_bytes(), Secret("interop-pw-31")) == CONTENT
    view = keyfleet(tmp_path, "view", str(secrets), KEYFLEET_VAULT_PASSWORD_FILE=str(pw))
    assert view.returncode == 0, view.stderr
    assert view.stdout == CONTENT


def test_keyfleet_create_opens_with_ansible_vault(tmp_path: Path) -> None:
    pw = password_file(tmp_path, "pw", "interop-pw-32")
    secrets = tmp_path / "new.yml"
    result = keyfleet(
        tmp_path, "create", str(secrets), KEYFLEET_VAULT_PASSWORD_FILE=str(pw), EDITOR=editor_writing(tmp_path, CONTENT)
    )
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    assert b"Vq3-unique" not in secrets.read_bytes()
    temp, mode = (tmp_path / "editor-seen").read_text().split()
    assert mode == "0o600" and not Path(temp).exists() and not Path(temp).parent.exists()
    view = ansible(tmp_path, "view", "--vault-password-file", str(pw), str(secrets))
    assert view.returncode == 0, view.stderr
    assert view.stdout == CONTENT
    again = keyfleet(tmp_path, "create", str(secrets), KEYFLEET_VAULT_PASSWORD_FILE=str(pw))
    assert again.returncode == 2 and b"already exists" in again.stderr


def test_encrypt_edit_decrypt(tmp_path: Path) -> None:
    pw = password_file(tmp_path, "pw", "interop-pw-33")
    secrets = tmp_path / "plain.yml"
    secrets.write_bytes(CONTENT)
    secrets.chmod(0o644)
    assert keyfleet(tmp_path, "encrypt", str(secrets), KEYFLEET_VAULT_PASSWORD_FILE=str(pw)).returncode == 0
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600 and is_vault(secrets.read_bytes())
    assert keyfleet(tmp_path, "encrypt", str(secrets), KEYFLEET_VAULT_PASSWORD_FILE=str(pw)).returncode == 2
    edit = keyfleet(
        tmp_path,
        "edit",
        str(secrets),
        KEYFLEET_VAULT_PASSWORD_FILE=str(pw),
        KEYFLEET_BACKUP_PASSWORD="Backup-Pw-In-Env-9",
        KEYFLEET_SHARE_PASSWORD="Share-Pw-In-Env-9",
        KF_TEST_KEEP="kept",
        EDITOR=editor_writing(tmp_path, b"extra: 1\n"),
    )
    assert edit.returncode == 0, edit.stderr
    # the editor gets the user's environment without keyfleet's secrets
    assert json.loads((tmp_path / "editor-env.json").read_text()) == {"keyfleet": [], "keep": "kept"}
    view = ansible(tmp_path, "view", "--vault-password-file", str(pw), str(secrets))
    assert view.stdout == CONTENT + b"extra: 1\n"
    assert keyfleet(tmp_path, "decrypt", str(secrets), KEYFLEET_VAULT_PASSWORD_FILE=str(pw)).returncode == 0
    assert secrets.read_bytes() == CONTENT + b"extra: 1\n"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600


def test_rekey_round_trip(tmp_path: Path) -> None:
    old = password_file(tmp_path, "old", "interop-pw-34")
    new = password_file(tmp_path, "new", "interop-pw-35")
    secrets = tmp_path / "secrets.yml"
    secrets.write_bytes(CONTENT)
    assert ansible(tmp_path, "encrypt", "--vault-password-file", str(old), str(secrets)).returncode == 0
    result = keyfleet(
        tmp_path,
        "rekey",
        str(secrets),
        KEYFLEET_VAULT_PASSWORD_FILE=str(old),
        KEYFLEET_NEW_VAULT_PASSWORD_FILE=str(new),
    )
    assert result.returncode == 0, result.stderr
    assert ansible(tmp_path, "view", "--vault-password-file", str(old), str(secrets)).returncode != 0
    assert ansible(tmp_path, "view", "--vault-password-file", str(new), str(secrets)).stdout == CONTENT
    assert (
        ansible(
            tmp_path, "rekey", "--vault-password-file", str(new), "--new-vault-password-file", str(old), str(secrets)
        ).returncode
        == 0
    )
    assert decrypt(secrets.read_bytes(), Secret("interop-pw-34")) == CONTENT


def test_wrong_password_and_no_terminal_exit_2(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.yml"
    secrets.write_bytes(encrypt(CONTENT, Secret("right-pw")))
    wrong = keyfleet(
        tmp_path, "view", str(secrets), KEYFLEET_VAULT_PASSWORD_FILE=str(password_file(tmp_path, "pw", "wrong-pw"))
    )
    assert wrong.returncode == 2 and wrong.stdout == b""
    assert wrong.stderr.decode().count("\n") == 1 and b"wrong vault password" in wrong.stderr
    prompt = keyfleet(tmp_path, "view", str(secrets))
    assert prompt.returncode == 2 and b"Traceback" not in prompt.stderr
    assert b"no terminal to prompt on; set KEYFLEET_VAULT_PASSWORD_FILE to a file (mode 0600)" in prompt.stderr
    rekey = keyfleet(
        tmp_path, "rekey", str(secrets), KEYFLEET_VAULT_PASSWORD_FILE=str(password_file(tmp_path, "pw2", "right-pw"))
    )
    assert rekey.returncode == 2 and b"set KEYFLEET_NEW_VAULT_PASSWORD_FILE to a file" in rekey.stderr
