"""Nightly run definitions for one inventory: a systemd service and timer, a Task Scheduler task, a cron line.

The definitions are package data templates (``orchestrator/templates``) filled with this inventory's absolute
paths. Each runs ``keyfleet backup`` and then ``keyfleet audit --format openmetrics`` into a metrics folder.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PureWindowsPath
from string import Template

from orchestrator.emulation import view
from orchestrator.errors import ConfigError
from orchestrator.inventory.model import Inventory, SecretRef
from orchestrator.jobs.context import BACKUP_PASSWORD_FILE_ENV
from orchestrator.secretrefs import VAULT_PASSWORD_FILE_ENV

KINDS = ("systemd", "windows", "cron")
METRICS_FILE = "keyfleet.prom"
TIMEOUT_HOURS = 4
# node_exporter's textfile folder on Debian/Ubuntu; windows_exporter's default textfile_inputs folder
DEFAULT_METRICS_DIR = {
    "systemd": "/var/lib/prometheus/node-exporter",
    "cron": "/var/lib/prometheus/node-exporter",
    "windows": r"C:\Program Files\windows_exporter\textfile_inputs",
}
DEFAULT_PASSWORD_FILE = {"systemd": "/etc/keyfleet/backup-password", "cron": "/etc/keyfleet/backup-password"}
DEFAULT_VAULT_PASSWORD_FILE = "/etc/keyfleet/vault-password"
_AT = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")


@dataclass(frozen=True)
class ScheduleOptions:
    at: str = "02:30"  # HH:MM, local time of the machine that runs it
    user: str = "keyfleet"
    metrics_dir: str | None = None  # None: the platform's default
    password_file: str | None = None  # None: /etc/keyfleet/backup-password, when the inventory needs one
    python: str = sys.executable  # the interpreter keyfleet is installed in (a virtual environment's)


def parse_at(text: str) -> str:
    """``--at``: 24-hour ``HH:MM``."""
    if not _AT.fullmatch(text):
        raise ConfigError(f"{text!r} is not a time of day as HH:MM (00:00 to 23:59)", key="--at")
    return text


def _template(name: str) -> Template:
    return Template(resources.files("orchestrator").joinpath("templates", name).read_text(encoding="utf-8"))


def _secret_refs(inv: Inventory) -> list[SecretRef]:
    refs = [inv.backup.password] if inv.backup.password else []
    refs += [h.credential.password for h in inv.hosts.values() if h.credential and h.credential.password]
    if inv.share and inv.share.credential and inv.share.credential.password:
        refs.append(inv.share.credential.password)
    if inv.signing and inv.signing.private_key:
        refs.append(inv.signing.private_key)
    return refs


def unattended_problems(inv: Inventory) -> list[str]:
    """References an unattended run cannot resolve, other than the backup password (which gets a file)."""
    refs = _secret_refs(inv)
    if inv.backup.password is not None:
        refs.remove(inv.backup.password)
    return sorted({ref.describe() for ref in refs if ref.scheme in ("prompt", "env")})


def needs_password_file(inv: Inventory) -> bool:
    """Whether the backup password must come from a file: the inventory asks for it or reads the environment."""
    return inv.backup.password is None or inv.backup.password.scheme in ("prompt", "env")


def uses_vault(inv: Inventory) -> bool:
    return any(ref.scheme == "vault" for ref in _secret_refs(inv))


def _arguments(command: str, inv: Inventory, metrics_file: str) -> list[str]:
    if command == "backup":
        return ["-m", "orchestrator", "backup", "-i", str(inv.path)]
    return ["-m", "orchestrator", "audit", "-i", str(inv.path), "--format", "openmetrics", "-o", metrics_file]


def _systemd_quote(word: str) -> str:
    """One word of an ExecStart= line: specifiers and variables escaped, quoted when it has blanks."""
    word = word.replace("%", "%%").replace("$", "$$")
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _local_share(inv: Inventory) -> Path | None:
    if inv.share is None or "://" in inv.share.url or inv.share.url.startswith(("\\\\", "//")):
        return None
    path = Path(inv.share.url).expanduser()
    return path if path.is_absolute() else inv.path.parent / path


def systemd_units(inv: Inventory, options: ScheduleOptions) -> dict[str, str]:
    metrics_dir = options.metrics_dir or DEFAULT_METRICS_DIR["systemd"]
    python = options.python
    backup = " ".join(_systemd_quote(w) for w in [python, *_arguments("backup", inv, "")])
    audit_args = _arguments("audit", inv, f"{metrics_dir}/{METRICS_FILE}")
    # "-": the audit's exit code (1 gaps, 3 integrity) is for the metrics, not a failure of the service
    audit = "-" + " ".join(_systemd_quote(w) for w in [python, *audit_args])
    credentials = ""
    if needs_password_file(inv):
        source = options.password_file or DEFAULT_PASSWORD_FILE["systemd"]
        credentials += f"LoadCredential=backup-password:{_systemd_quote(source)}\n"
        credentials += f"Environment={BACKUP_PASSWORD_FILE_ENV}=%d/backup-password\n"
    if uses_vault(inv):
        credentials += f"LoadCredential=vault-password:{DEFAULT_VAULT_PASSWORD_FILE}\n"
        credentials += f"Environment={VAULT_PASSWORD_FILE_ENV}=%d/vault-password\n"
    writable = ["/var/lib/keyfleet", f"-{metrics_dir}"]  # "-": a missing metrics folder is not an error
    share = _local_share(inv)
    if share is not None:
        writable.append(str(share))
    lab = view(inv)
    if lab is not None:
        writable.append(str(lab.state_dir))
    under_home = any(p.lstrip("-").startswith(("/home/", "/root/", "/run/user/")) for p in [*writable, str(inv.path)])
    values = {
        "inventory": str(inv.path).replace("%", "%%"),
        "user": options.user,
        "backup_command": backup,
        "audit_command": audit,
        "credential_lines": credentials,
        "timeout": f"{TIMEOUT_HOURS}h",
        "protect_home": "read-only" if under_home else "yes",
        "read_write_paths": " ".join(_systemd_quote(p) for p in writable),
        "at": options.at,
    }
    return {
        "keyfleet-backup.service": _template("keyfleet-backup.service").substitute(values),
        "keyfleet-backup.timer": _template("keyfleet-backup.timer").substitute(values),
    }


def _xml_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def windows_task(inv: Inventory, options: ScheduleOptions) -> dict[str, str]:
    metrics_dir = options.metrics_dir or DEFAULT_METRICS_DIR["windows"]
    metrics_file = str(PureWindowsPath(metrics_dir) / METRICS_FILE)
    values = {
        "inventory": _xml_text(str(inv.path)),
        "at": options.at,
        "timeout": f"PT{TIMEOUT_HOURS}H",
        "python": _xml_text(options.python),
        # Windows command-line quoting (the rules of CommandLineToArgvW), as subprocess applies them
        "backup_arguments": _xml_text(subprocess.list2cmdline(_arguments("backup", inv, ""))),
        "audit_arguments": _xml_text(subprocess.list2cmdline(_arguments("audit", inv, metrics_file))),
        "workdir": _xml_text(str(inv.path.parent)),
    }
    return {"keyfleet-backup.xml": _template("keyfleet-backup.xml").substitute(values)}


def cron_line(inv: Inventory, options: ScheduleOptions) -> dict[str, str]:
    metrics_dir = options.metrics_dir or DEFAULT_METRICS_DIR["cron"]
    python = shlex.quote(options.python)
    env = ""
    if needs_password_file(inv):
        env += f"{BACKUP_PASSWORD_FILE_ENV}={shlex.quote(options.password_file or DEFAULT_PASSWORD_FILE['cron'])} "
    if uses_vault(inv):
        env += f"{VAULT_PASSWORD_FILE_ENV}={DEFAULT_VAULT_PASSWORD_FILE} "
    backup = " ".join(shlex.quote(w) for w in _arguments("backup", inv, ""))
    audit = " ".join(shlex.quote(w) for w in _arguments("audit", inv, f"{metrics_dir}/{METRICS_FILE}"))
    lock = shlex.quote(f"/tmp/keyfleet-{inv.path.stem}.lock")
    # the same bound as systemd's TimeoutStartSec and the task's ExecutionTimeLimit: a hung run must not
    # hold the lock (flock -n) and silently skip every later night
    limit = f"timeout {TIMEOUT_HOURS}h"
    command = f"{env}flock -n {lock} {limit} {python} {backup}; {env}{python} {audit}".replace("%", "\\%")  # crontab(5)
    hour, minute = options.at.split(":")
    values = {
        "user": options.user,
        "at": options.at,
        "minute": str(int(minute)),
        "hour": str(int(hour)),
        "command": command,
    }
    return {"keyfleet.cron": _template("keyfleet.cron").substitute(values)}


def definitions(kind: str, inv: Inventory, options: ScheduleOptions) -> dict[str, str]:
    """File name -> content of the definitions of ``kind`` (systemd, windows or cron)."""
    if kind == "systemd":
        return systemd_units(inv, options)
    if kind == "windows":
        return windows_task(inv, options)
    if kind == "cron":
        return cron_line(inv, options)
    raise ConfigError(f"unknown schedule kind {kind!r} (choose from {', '.join(KINDS)})")
