"""What every job needs before it touches a host: the share and its store, keys, passwords."""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from orchestrator.errors import ConfigError, ShareError
from orchestrator.helpers import remote
from orchestrator.inventory.model import HostConfig, Inventory
from orchestrator.secret import Secret
from orchestrator.secretrefs import prompt_secret, read_private_file, resolve
from orchestrator.share import layout
from orchestrator.share.base import FolderState, Share
from orchestrator.share.manifest import load_private_key, load_public_key
from orchestrator.share.open import open_share
from orchestrator.share.runrecord import RunMarker, RunRecord
from orchestrator.share.store import BackupStore

BACKUP_PASSWORD_ENV = "KEYFLEET_BACKUP_PASSWORD"
BACKUP_PASSWORD_FILE_ENV = "KEYFLEET_BACKUP_PASSWORD_FILE"  # a file (0600) holding it: systemd credentials, cron
_PASSWORD_VARIABLES = f"{BACKUP_PASSWORD_FILE_ENV} (a file, mode 0600) or {BACKUP_PASSWORD_ENV}"
MIN_PASSWORD_LENGTH = 8  # SecureStorageBackup's own rule


def share_for(inv: Inventory, override: str | None) -> Share:
    """The share named by ``--share``, else the inventory's. An SMB ``--share`` keeps the inventory's
    SMB credential and encryption requirement: a command-line override never weakens them."""
    if override is not None and not override.strip():  # e.g. --share "$UNSET": never the inventory's silently
        raise ConfigError("--share is empty: give a folder or an smb:// URL, or leave --share out", key="--share")
    if override:
        if inv.share is not None and _is_smb(override) and _is_smb(inv.share.url):
            return open_share(
                override, credential=inv.share.credential, require_encryption=inv.share.require_encryption
            )
        return open_share(override, base_dir=None)
    if inv.share is None:
        raise ConfigError("no share: set share.url in the inventory or pass --share", file=str(inv.path))
    return open_share(
        inv.share.url,
        credential=inv.share.credential,
        require_encryption=inv.share.require_encryption,
        base_dir=inv.path.parent,
    )


def require_share_folder(share: Share, *, creatable: bool = False, dry_run: bool = False) -> None:
    """A mistyped share must not look like an empty one: exit 2 when its folder does not exist.
    ``creatable`` (backup): a missing folder whose parent exists is made (unless ``dry_run``), as a
    first backup needs."""
    state = share.folder_state()
    if state is FolderState.EXISTS or (creatable and state is FolderState.MISSING and dry_run):
        return
    if state is FolderState.NOT_FOLDER:
        raise ConfigError(f"share {share.url} is not a folder (check the path)")
    if creatable and state is FolderState.MISSING:
        share.create_folder()
        return
    why = ", nor does its parent folder (check the path)" if creatable else " (check the path, or back up first)"
    raise ConfigError(f"share {share.url} does not exist{why}")


def probe_writable(share: Share) -> None:
    """Write and remove a small file (under runs/, which the audit does not take as a key file), so an
    unwritable share fails now, before any server is touched; ShareError (exit 1) otherwise. Runs that
    store keys use mark_run_started, whose marker is their probe."""
    probe = f"{layout.RUNS_DIR}/write-probe-{secrets.token_hex(6)}"
    try:
        share.write_new(probe, b"keyfleet write probe\n")
    except ShareError as exc:
        raise ShareError(f"{exc} (write probe before contacting any server)") from None
    share.remove(probe)


DEADLINE_GRACE = 5.0  # seconds a host may take past host_timeout: a failed command's shell deleted (session/winrm.py)
# what a run may take beyond its rounds of hosts (its record written), and a controller clock behind the audit's
RUN_MARGIN = timedelta(minutes=10)


def mark_run_started(store: BackupStore, run_id: str, command: str, hosts: Sequence[HostConfig], forks: int) -> None:
    """Write the run's signed marker (share/runrecord.py RunMarker) before any server is touched, so an
    audit beside the run takes the generations it commits before its record for a run under way, not for
    a lost record. The marker is the run's write probe: an unwritable share fails now (ShareError, exit 1).
    It runs out when the run cannot be going any more: the wait for the share's lock to write it, every
    round of ``forks`` hosts to the longest deadline (``host_timeout``, the runner's grace, then up to two
    waits for the lock: a group commit under way, then the host's own), then RUN_MARGIN.

    First it writes the run records earlier runs of this controller could not write (kept in its state):
    every storing command (backup, collect, password rotate, a runbook's backup step, prune --keep) does."""
    rounds = math.ceil(len(hosts) / max(1, forks))
    lock = store.lock_timeout
    longest = max((host.host_timeout for host in hosts), default=0.0) + DEADLINE_GRACE + 2 * lock
    try:
        store.write_pending_records()  # each under the lock: the marker's own wait starts after them
        started = datetime.now(UTC)
        until = started + timedelta(seconds=lock + rounds * longest) + RUN_MARGIN
        store.mark_running(RunMarker(run_id, command, started, until))
    except ShareError as exc:
        if not hosts:
            raise
        raise ShareError(f"{exc} (write probe before contacting any server)") from None


def _is_smb(url: str) -> bool:
    return url.lower().startswith("smb://") or url.startswith(("\\\\", "//"))


def open_store(inv: Inventory, share: Share, *, sign: bool, sign_records: bool = False) -> BackupStore:
    """A BackupStore that verifies with the inventory's public key and, when ``sign``, signs. A store
    that only writes run records (restore) signs them when ``sign_records`` and a private key is set;
    without one its records are unsigned and the audit reports them."""
    if inv.signing is None:
        raise ConfigError(
            "no signing section: the manifest must be signed (signing.private_key, signing.public_key)",
            file=str(inv.path),
        )
    verifier = load_public_key(inv.signing.public_key)
    signer = record_signer = None
    if sign:
        if inv.signing.private_key is None:
            raise ConfigError("signing.private_key is needed to write the manifest", file=str(inv.path))
        signer = load_private_key(resolve(inv.signing.private_key, purpose="manifest signing key"))
    elif sign_records and inv.signing.private_key is not None:
        record_signer = load_private_key(resolve(inv.signing.private_key, purpose="manifest signing key"))
    return BackupStore(share, signer, verifier, record_signer=record_signer)


def record_run(store: BackupStore, record: RunRecord, warn: Callable[[str], None]) -> tuple[str | None, RunRecord]:
    """Write the run record; a share that fails now is warned about, not raised (the run is over). The
    record's path (None when not written) and the record as written, naming the history's generation."""
    record = store.chained(record)
    try:
        return store.write_run_record(record), record
    except ShareError as exc:
        warn(f"could not write the run record: {exc}")
        return None, record


def backup_password(inv: Inventory, *, new: bool = True) -> Secret:
    """The backup password: KEYFLEET_BACKUP_PASSWORD, else the file KEYFLEET_BACKUP_PASSWORD_FILE names,
    else the inventory's reference, else a hidden prompt, asked twice when it sets the password of new
    key files (``new``, as the wizard does) and once when it opens an existing one (restore). At least
    8 characters of printable ASCII (see ``remote.tool_password_problem``), else exit 2 before any host
    is touched."""
    value = os.environ.get(BACKUP_PASSWORD_ENV)
    password_file = os.environ.get(BACKUP_PASSWORD_FILE_ENV)
    if value:
        secret = Secret(value, f"env:{BACKUP_PASSWORD_ENV}")
    elif password_file:
        try:
            secret = Secret(read_private_file(Path(password_file)), f"file:{password_file}")
        except ConfigError as exc:
            raise ConfigError(exc.message, key=BACKUP_PASSWORD_FILE_ENV) from None
    elif inv.backup.password is not None:
        secret = resolve(inv.backup.password, purpose="backup password", confirm=new, override_env=_PASSWORD_VARIABLES)
    else:
        fix = f"set {_PASSWORD_VARIABLES}, or backup.password in the inventory (e.g. file:PATH or vault:FILE#key)"
        secret = prompt_secret("backup password", confirm=new, fix=fix)
    if len(secret) < MIN_PASSWORD_LENGTH:
        raise ConfigError(
            f"the backup password must have at least {MIN_PASSWORD_LENGTH} characters (SecureStorageBackup's rule)",
            key="backup.password",
        )
    problem = remote.tool_password_problem(secret.reveal())
    if problem:
        raise ConfigError(
            f"the backup password cannot be typed into SecureStorageBackup.exe: {problem}", key="backup.password"
        )
    return secret


def winrm_passwords(hosts: Iterable[HostConfig]) -> dict[str, Secret | None]:
    """Resolve every host's WinRM password up front, in the main thread (prompts, vault)."""
    passwords: dict[str, Secret | None] = {}
    for host in hosts:
        if host.credential is None or host.credential.password is None:
            passwords[host.name] = None
        else:
            passwords[host.name] = resolve(host.credential.password, purpose=f"WinRM password for {host.name}")
    return passwords


def security_warnings(hosts: Iterable[HostConfig]) -> list[str]:
    """Settings that weaken transport security: warned about on every run."""
    warnings = []
    for host in hosts:
        if host.scheme == "https" and not host.cert_validation and not host.cert_thumbprint:
            warnings.append(f"{host.name}: TLS certificate validation is off (cert_validation: false)")
        if host.allow_insecure:
            warnings.append(f"{host.name}: allow_insecure is set; WinRM traffic may be readable on the network")
    return warnings
