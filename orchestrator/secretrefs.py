"""Secret references: parse ``env:``, ``file:``, ``prompt``, ``command:``, ``vault:`` and resolve them lazily.

Every value is wrapped in :class:`Secret` the moment it is read; resolutions are cached per
process so a prompt is asked only once. No message ever contains a secret or a command's output.
"""

from __future__ import annotations

import getpass
import os
import re
import shlex
import stat
import subprocess
import sys
import threading
from pathlib import Path

import yaml

from orchestrator.errors import ConfigError
from orchestrator.inventory.model import Location, SecretRef
from orchestrator.secret import Secret
from orchestrator.textfile import NotText, decode_text

SCHEMES = ("env", "file", "prompt", "command", "vault")
PLAINTEXT_ADVICE = "use env:, file:, prompt, command: or vault:"
PLAINTEXT_REFUSED = f"plaintext secret in a production inventory: {PLAINTEXT_ADVICE}"
COMMAND_TIMEOUT = 30.0
SCRUBBED_ENV_PREFIX = "KEYFLEET_"  # keyfleet's own secrets and settings: never passed to helpers or editors
VAULT_PASSWORD_FILE_ENV = "KEYFLEET_VAULT_PASSWORD_FILE"
NEW_VAULT_PASSWORD_FILE_ENV = "KEYFLEET_NEW_VAULT_PASSWORD_FILE"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_cache: dict[tuple[str, str, str], Secret] = {}
_vault_passwords: dict[str, Secret] = {}
_lock = threading.RLock()


def parse_ref(text: str, *, base_dir: Path, allow_plain: bool, location: Location | None = None) -> SecretRef:
    """Parse the string in a secret position; relative ``file:``/``vault:`` paths resolve against
    ``base_dir``. Raises ConfigError (without location, and never quoting ``text``)."""
    scheme, sep, target = text.partition(":")
    if text.strip() == "prompt":
        return SecretRef("prompt", "", location)
    if scheme == "prompt" and sep:
        raise ConfigError("prompt takes no argument: write just prompt")
    if not sep or scheme not in SCHEMES:
        if not allow_plain:
            raise ConfigError(PLAINTEXT_REFUSED)
        if not text:
            raise ConfigError("a secret must not be empty")
        return SecretRef("plain", text, location)
    target = target.strip()
    if scheme == "env" and not _ENV_NAME.match(target):
        raise ConfigError("env: needs an environment variable name, e.g. env:KEYFLEET_BACKUP_PASSWORD")
    if scheme == "file":
        if not target or "\0" in target:
            raise ConfigError("file: needs a path, e.g. file:/etc/keyfleet/backup.pass")
        target = _resolve(base_dir, target)
    if scheme == "command":
        try:
            argv = shlex.split(target)
        except ValueError as exc:
            raise ConfigError(f"command: cannot be split into arguments ({exc})") from None
        if not argv:
            raise ConfigError("command: needs a program, e.g. command:pass show keyfleet/backup")
    if scheme == "vault":
        file, _, key = target.rpartition("#")
        if not file or not key or "\0" in file:
            raise ConfigError("vault: needs FILE#key, e.g. vault:secrets.yml#winrm_password")
        target = f"{_resolve(base_dir, file)}#{key}"
    return SecretRef(scheme, target, location)


def _resolve(base_dir: Path, path: str) -> str:
    return os.path.normpath(base_dir / os.path.expanduser(path))


def _error(ref: SecretRef, message: str) -> ConfigError:
    loc = ref.location
    if loc is None:
        return ConfigError(message)
    return ConfigError(message, file=loc.file, line=loc.line, key=loc.key)


def resolve(ref: SecretRef, *, purpose: str, confirm: bool = False, override_env: str | None = None) -> Secret:
    """The secret a reference points to. ``purpose`` labels the prompt (e.g. "backup password");
    ``confirm`` asks a prompt twice; ``override_env`` names the variable that replaces this reference
    (the fix a prompt without a terminal suggests). Cached per process: a prompt is answered once per purpose."""
    cache_key = (ref.scheme, ref.target, purpose if ref.scheme == "prompt" else "")
    with _lock:
        cached = _cache.get(cache_key)
        if cached is not None:
            return cached
        secret = _resolve_uncached(ref, purpose=purpose, confirm=confirm, override_env=override_env)
        _cache[cache_key] = secret
        return secret


def clear_cache() -> None:
    """Forget every resolved secret (tests; a long-running process after a rotation)."""
    with _lock:
        _cache.clear()
        _vault_passwords.clear()


def _resolve_uncached(ref: SecretRef, *, purpose: str, confirm: bool, override_env: str | None) -> Secret:
    label = ref.describe()
    if ref.scheme == "plain":
        return Secret(ref.target, label)
    if ref.scheme == "env":
        value = os.environ.get(ref.target)
        if not value:
            raise _error(ref, f"environment variable {ref.target} is not set or empty ({purpose})")
        return Secret(value, label)
    if ref.scheme == "file":
        try:
            return Secret(read_private_file(Path(ref.target)), label)
        except ConfigError as exc:
            raise _error(ref, f"{exc.message} ({purpose})") from None
    if ref.scheme == "prompt":
        try:
            return prompt_secret(purpose, confirm=confirm, fix=reference_fix(override_env))
        except NoTerminalError as exc:
            raise _error(ref, exc.message) from None
    if ref.scheme == "command":
        return Secret(_run_command(ref, purpose), label)
    if ref.scheme == "vault":
        file, _, key = ref.target.rpartition("#")
        return Secret(_vault_value(ref, Path(file), key, purpose), label)
    raise _error(ref, f"unknown secret reference scheme {ref.scheme!r}")


def read_private_file(path: Path) -> str:
    """A secret file's text without one trailing newline; refused when group or others can access it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"secret file {path} is not a regular file")
        if os.name == "posix" and info.st_mode & 0o077:
            mode = stat.S_IMODE(info.st_mode)
            raise ConfigError(
                f"secret file {path} is accessible by group or others (mode {mode:04o}); "
                f"run: chmod 600 {shlex.quote(str(path))}"
            )
        data = handle.read()
    try:
        text = decode_text(data)
    except NotText as exc:
        raise ConfigError(f"secret file {path}: {exc}") from None
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith("\n") else text


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):
        return False


class NoTerminalError(ConfigError):
    """A prompt was needed and there is no terminal: the message names the fix for this very case."""


def reference_fix(override_env: str | None = None) -> str:
    """What replaces a ``prompt`` reference in an unattended run."""
    instead = "write env:NAME, file:PATH (mode 0600), command:PROGRAM or vault:FILE#key instead of prompt"
    return f"set {override_env}, or {instead}" if override_env else instead


def prompt_secret(purpose: str, *, confirm: bool = False, fix: str | None = None) -> Secret:
    """Ask on the terminal, hidden; twice when ``confirm``. No terminal -> NoTerminalError naming ``fix``."""
    if not _stdin_is_tty():
        raise NoTerminalError(f"{purpose}: no terminal to prompt on; {fix or reference_fix()}")
    first = getpass.getpass(f"{purpose}: ")
    if not first:
        raise ConfigError(f"{purpose}: empty input")
    if confirm and getpass.getpass(f"{purpose} (again): ") != first:
        raise ConfigError(f"{purpose}: the two entries differ")
    return Secret(first, f"prompt ({purpose})")


def child_environment() -> dict[str, str]:
    """The environment for programs keyfleet starts on the user's behalf (``command:`` helpers,
    ``$EDITOR``): this process's, without any ``KEYFLEET_*`` variable (backup, share, vault secrets)."""
    return {name: value for name, value in os.environ.items() if not name.upper().startswith(SCRUBBED_ENV_PREFIX)}


def _run_command(ref: SecretRef, purpose: str) -> str:
    argv = shlex.split(ref.target)
    program = argv[0]
    try:
        completed = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
            env=child_environment(),
        )
    except FileNotFoundError:
        raise _error(ref, f"secret command not found: {program} ({purpose})") from None
    except PermissionError:
        raise _error(ref, f"secret command is not executable: {program} ({purpose})") from None
    except subprocess.TimeoutExpired:
        message = f"secret command {program} did not finish within {COMMAND_TIMEOUT:.0f}s ({purpose})"
        raise _error(ref, message) from None
    if completed.returncode != 0:
        status = completed.returncode
        message = f"secret command {program} exited with status {status} ({purpose}); output not shown"
        raise _error(ref, message)
    try:
        lines = completed.stdout.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise _error(ref, f"secret command {program} printed non-UTF-8 output ({purpose})") from None
    if not lines or not lines[0]:
        raise _error(ref, f"secret command {program} printed nothing on its first line ({purpose})")
    return lines[0]


def vault_password(
    path: Path, *, env: str = VAULT_PASSWORD_FILE_ENV, confirm: bool = False, purpose: str | None = None
) -> Secret:
    """The password of a vault file: from the file named by ``env`` (mode 0600), else a hidden prompt.
    Read vault passwords are cached per vault file."""
    with _lock:
        key = f"{env}:{path}"
        cached = _vault_passwords.get(key)
        if cached is not None and not confirm:
            return cached
        password_file = os.environ.get(env)
        if password_file:
            try:
                # ansible-vault strips surrounding whitespace from password files; so do we
                secret = Secret(read_private_file(Path(password_file)).strip(), f"file:{password_file}")
            except ConfigError as exc:
                raise ConfigError(f"{env}: {exc.message}") from None
            if not len(secret):
                raise ConfigError(f"{env}: the vault password file {password_file} is empty")
        else:
            what = "the new vault password" if env == NEW_VAULT_PASSWORD_FILE_ENV else "the vault password"
            secret = prompt_secret(
                purpose or f"Vault password ({path})",
                confirm=confirm,
                fix=f"set {env} to a file (mode 0600) holding {what}",
            )
        _vault_passwords[key] = secret
        return secret


def _vault_value(ref: SecretRef, file: Path, key: str, purpose: str) -> str:
    from orchestrator.vault import VaultError, decrypt

    try:
        vaulttext = file.read_bytes()
    except OSError as exc:
        raise _error(ref, f"cannot read vault file {file}: {exc.strerror} ({purpose})") from None
    try:
        plaintext = decrypt(vaulttext, vault_password(file))
    except VaultError as exc:
        raise _error(ref, f"vault file {file}: {exc} ({purpose})") from None
    try:
        data = yaml.safe_load(plaintext.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError):
        raise _error(ref, f"vault file {file} does not hold a YAML mapping ({purpose})") from None
    value: object = data
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise _error(ref, f"vault file {file} has no key {key!r} ({purpose})")
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _error(ref, f"vault file {file}: key {key!r} is not a single string value ({purpose})")
    text = str(value)
    if not text:
        raise _error(ref, f"vault file {file}: key {key!r} is empty ({purpose})")
    return text
