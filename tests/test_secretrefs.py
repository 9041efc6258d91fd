"""Secret references: parsing, and resolving env, file, prompt, command and vault into Secret."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import secretrefs
from orchestrator.errors import ConfigError
from orchestrator.inventory.model import Location, SecretRef
from orchestrator.secret import Secret
from orchestrator.secretrefs import parse_ref, resolve
from orchestrator.vault import encrypt

UNIQUE = "Uq7-secret-VALUE-4411"


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    secretrefs.clear_cache()
    yield
    secretrefs.clear_cache()


def ref(text: str, base: Path, allow_plain: bool = False) -> SecretRef:
    return parse_ref(text, base_dir=base, allow_plain=allow_plain, location=Location("inv.yml", 7, "k.password"))


def private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


# -- parsing --------------------------------------------------------------------------------------


def test_parse_schemes(tmp_path: Path) -> None:
    assert ref("env:MY_VAR", tmp_path) == SecretRef("env", "MY_VAR", ref("env:MY_VAR", tmp_path).location)
    assert ref("prompt", tmp_path).scheme == "prompt"
    assert ref("file:rel/pw", tmp_path).target == str(tmp_path / "rel" / "pw")
    assert ref("file:/abs/pw", tmp_path).target == "/abs/pw"
    assert ref("command:pass show x", tmp_path).target == "pass show x"
    assert ref("vault:v.yml#a.b", tmp_path).target == f"{tmp_path / 'v.yml'}#a.b"
    plain = ref(UNIQUE, tmp_path, allow_plain=True)
    assert plain.scheme == "plain" and UNIQUE not in repr(plain) and plain.describe() == "plain (lab)"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (UNIQUE, "plaintext secret in a production inventory"),
        ("env:", "environment variable name"),
        ("env:1BAD", "environment variable name"),
        ("file:", "needs a path"),
        ("command:", "needs a program"),
        ("command:'unclosed", "cannot be split"),
        ("vault:file-only", "FILE#key"),
        ("vault:#key", "FILE#key"),
        ("prompt:x", "takes no argument"),
    ],
)
def test_parse_errors(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        ref(text, tmp_path)
    assert UNIQUE not in str(info.value)


# -- env ---------------------------------------------------------------------------------------


def test_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KF_TEST_SECRET", UNIQUE)
    secret = resolve(ref("env:KF_TEST_SECRET", tmp_path), purpose="backup password")
    assert isinstance(secret, Secret) and secret.reveal() == UNIQUE
    assert UNIQUE not in repr(secret) and UNIQUE not in f"{secret}"


@pytest.mark.parametrize("value", [None, ""])
def test_env_missing_or_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("KF_TEST_SECRET", raising=False)
    else:
        monkeypatch.setenv("KF_TEST_SECRET", value)
    with pytest.raises(ConfigError, match="KF_TEST_SECRET is not set or empty") as info:
        resolve(ref("env:KF_TEST_SECRET", tmp_path), purpose="backup password")
    assert str(info.value).startswith("inv.yml:7: k.password: ")


# -- file ---------------------------------------------------------------------------------------


def test_file_0600_accepted_one_newline_stripped(tmp_path: Path) -> None:
    private(tmp_path / "pw", UNIQUE + "\n")
    assert resolve(ref("file:pw", tmp_path), purpose="p").reveal() == UNIQUE
    private(tmp_path / "pw2", UNIQUE + " \n\n")
    assert resolve(ref("file:pw2", tmp_path), purpose="p").reveal() == UNIQUE + " \n"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_file_readable_by_others_refused(tmp_path: Path, mode: int) -> None:
    private(tmp_path / "pw", UNIQUE, mode)
    with pytest.raises(ConfigError, match=f"mode {mode:04o}") as info:
        resolve(ref("file:pw", tmp_path), purpose="p")
    assert "chmod 600" in str(info.value) and UNIQUE not in str(info.value)


def test_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read secret file"):
        resolve(ref("file:nope", tmp_path), purpose="p")


# -- command ------------------------------------------------------------------------------------


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "tool.py"
    path.write_text(body)
    return f"command:{sys.executable} {path}"


def test_command_first_line(tmp_path: Path) -> None:
    text = script(tmp_path, f"print({UNIQUE!r}); print('second line')")
    assert resolve(ref(text, tmp_path), purpose="p").reveal() == UNIQUE


def test_command_does_not_inherit_keyfleet_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KEYFLEET_BACKUP_PASSWORD", "KEYFLEET_SHARE_PASSWORD", "KEYFLEET_VAULT_PASSWORD_FILE", "keyfleet_x"):
        monkeypatch.setenv(name, UNIQUE)
    monkeypatch.setenv("KF_TEST_KEEP", "kept")
    body = (
        "import os\n"
        "names = sorted(k for k in os.environ if k.upper().startswith('KEYFLEET_'))\n"
        "print(','.join(names) or 'none', os.environ.get('KF_TEST_KEEP'))\n"
    )
    assert resolve(ref(script(tmp_path, body), tmp_path), purpose="p").reveal() == "none kept"
    assert UNIQUE not in secretrefs.child_environment().values()
    assert secretrefs.child_environment()["KF_TEST_KEEP"] == "kept"


def test_command_runs_without_a_shell(tmp_path: Path) -> None:
    secret = resolve(ref("command:echo $HOME; ls", tmp_path), purpose="p")
    assert secret.reveal() == "$HOME; ls"


def test_command_nonzero_exit_hides_output(tmp_path: Path) -> None:
    text = script(tmp_path, f"import sys; print({UNIQUE!r}); print({UNIQUE!r}, file=sys.stderr); sys.exit(3)")
    with pytest.raises(ConfigError, match="exited with status 3") as info:
        resolve(ref(text, tmp_path), purpose="p")
    assert UNIQUE not in str(info.value)


def test_command_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secretrefs, "COMMAND_TIMEOUT", 0.5)
    text = script(tmp_path, f"import time; print({UNIQUE!r}, flush=True); time.sleep(30)")
    with pytest.raises(ConfigError, match="did not finish") as info:
        resolve(ref(text, tmp_path), purpose="p")
    assert UNIQUE not in str(info.value)


def test_command_not_found(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        resolve(ref("command:/nonexistent/keyfleet-tool", tmp_path), purpose="p")


def test_command_empty_output(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="printed nothing"):
        resolve(ref(script(tmp_path, "pass"), tmp_path), purpose="p")


# -- prompt and cache ---------------------------------------------------------------------------


def test_prompt_without_tty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secretrefs, "_stdin_is_tty", lambda: False)
    with pytest.raises(ConfigError, match="no terminal to prompt on; write env:NAME, file:PATH"):
        resolve(ref("prompt", tmp_path), purpose="backup password")
    with pytest.raises(ConfigError, match="no terminal to prompt on; set KEYFLEET_SHARE_PASSWORD, or write env:"):
        resolve(ref("prompt", tmp_path), purpose="share password", override_env="KEYFLEET_SHARE_PASSWORD")


def test_secret_file_written_by_powershell_is_read(tmp_path: Path) -> None:
    """PowerShell 5.1's ``>`` writes UTF-16LE with a BOM; Notepad may write UTF-8 with a BOM."""
    for name, data in (
        ("utf16", "\ufeffPw-From-PS-1\r\n".encode("utf-16-le")),
        ("utf8bom", "\ufeffPw-From-PS-1\n".encode()),
    ):
        path = tmp_path / name
        path.write_bytes(data)
        path.chmod(0o600)
        assert resolve(ref(f"file:{path}", tmp_path), purpose="p").reveal() == "Pw-From-PS-1"


def test_prompt_asked_once_and_confirmed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([UNIQUE, UNIQUE, "other-1234"])
    asked: list[str] = []

    def fake_getpass(prompt: str) -> str:
        asked.append(prompt)
        return next(answers)

    monkeypatch.setattr(secretrefs, "_stdin_is_tty", lambda: True)
    monkeypatch.setattr(secretrefs.getpass, "getpass", fake_getpass)
    first = resolve(ref("prompt", tmp_path), purpose="backup password", confirm=True)
    again = resolve(ref("prompt", tmp_path), purpose="backup password", confirm=True)
    assert first.reveal() == again.reveal() == UNIQUE
    assert asked == ["backup password: ", "backup password (again): "]
    answers = iter(["a-first-1", "a-second-2"])
    with pytest.raises(ConfigError, match="differ"):
        resolve(ref("prompt", tmp_path), purpose="WinRM password", confirm=True)


def test_cache_per_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KF_TEST_SECRET", "first-value")
    assert resolve(ref("env:KF_TEST_SECRET", tmp_path), purpose="p").reveal() == "first-value"
    monkeypatch.setenv("KF_TEST_SECRET", "second-value")
    assert resolve(ref("env:KF_TEST_SECRET", tmp_path), purpose="q").reveal() == "first-value"


# -- vault --------------------------------------------------------------------------------------


def test_vault_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    password = private(tmp_path / "vault-pass", "vault-pw-8812\n")
    document = f"winrm:\n  password: {UNIQUE}\nbackup_password: other-9911\nport: 5986\n"
    (tmp_path / "secrets.yml").write_bytes(encrypt(document.encode(), Secret("vault-pw-8812")))
    monkeypatch.setenv("KEYFLEET_VAULT_PASSWORD_FILE", str(password))
    assert resolve(ref("vault:secrets.yml#winrm.password", tmp_path), purpose="p").reveal() == UNIQUE
    assert resolve(ref("vault:secrets.yml#backup_password", tmp_path), purpose="p").reveal() == "other-9911"
    with pytest.raises(ConfigError, match=r"has no key 'winrm\.user'") as info:
        resolve(ref("vault:secrets.yml#winrm.user", tmp_path), purpose="p")
    assert UNIQUE not in str(info.value)
    with pytest.raises(ConfigError, match="not a single string"):
        resolve(ref("vault:secrets.yml#winrm", tmp_path), purpose="p")


def test_vault_wrong_password_and_loose_password_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secrets.yml").write_bytes(encrypt(b"k: v-1234\n", Secret("right-pw")))
    monkeypatch.setenv("KEYFLEET_VAULT_PASSWORD_FILE", str(private(tmp_path / "pw", "wrong-pw")))
    with pytest.raises(ConfigError, match="wrong vault password"):
        resolve(ref("vault:secrets.yml#k", tmp_path), purpose="p")
    secretrefs.clear_cache()
    monkeypatch.setenv("KEYFLEET_VAULT_PASSWORD_FILE", str(private(tmp_path / "pw", "right-pw", 0o644)))
    with pytest.raises(ConfigError, match=r"KEYFLEET_VAULT_PASSWORD_FILE: .*group or others"):
        resolve(ref("vault:secrets.yml#k", tmp_path), purpose="p")
    os.chmod(tmp_path / "pw", 0o600)
    assert resolve(ref("vault:secrets.yml#k", tmp_path), purpose="p").reveal() == "v-1234"
