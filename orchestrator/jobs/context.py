"""What every job needs before it touches a host: the share and its store, keys, passwords."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from orchestrator.errors import ConfigError, ShareError
from orchestrator.inventory.model import HostConfig, Inventory
from orchestrator.secret import Secret
from orchestrator.secretrefs import prompt_secret, resolve
from orchestrator.share.base import Share
from orchestrator.share.manifest import load_private_key, load_public_key
from orchestrator.share.open import open_share
from orchestrator.share.runrecord import RunRecord
from orchestrator.share.store import BackupStore

BACKUP_PASSWORD_ENV = "KEYFLEET_BACKUP_PASSWORD"
MIN_PASSWORD_LENGTH = 8  # SecureStorageBackup's own rule


def share_for(inv: Inventory, override: str | None) -> Share:
    """The share named by ``--share``, else the inventory's. An SMB ``--share`` keeps the inventory's
    SMB credential and encryption requirement: a command-line override never weakens them."""
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


def record_run(store: BackupStore, record: RunRecord, warn: Callable[[str], None]) -> str | None:
    """Write the run record; a share that fails now is warned about, not raised (the run is over)."""
    try:
        return store.write_run_record(record)
    except ShareError as exc:
        warn(f"could not write the run record: {exc}")
        return None


def backup_password(inv: Inventory, *, new: bool = True) -> Secret:
    """The backup password: KEYFLEET_BACKUP_PASSWORD, else the inventory's reference, else a hidden
    prompt, asked twice when it sets the password of new key files (``new``, as the wizard does) and
    once when it opens an existing one (restore). At least 8 characters, else exit 2 before any host
    is touched."""
    value = os.environ.get(BACKUP_PASSWORD_ENV)
    if value:
        secret = Secret(value, f"env:{BACKUP_PASSWORD_ENV}")
    elif inv.backup.password is not None:
        secret = resolve(inv.backup.password, purpose="backup password", confirm=new)
    else:
        secret = prompt_secret("backup password", confirm=new)
    if len(secret) < MIN_PASSWORD_LENGTH:
        raise ConfigError(
            f"the backup password must have at least {MIN_PASSWORD_LENGTH} characters (SecureStorageBackup's rule)",
            key="backup.password",
        )
    return secret


def winrm_passwords(hosts: Iterable[HostConfig]) -> dict[str, Secret | None]:
    """Resolve every host's WinRM password up front, in the main thread (prompts, vault)."""
    passwords: dict[str, Secret | None] = {}
    for host in hosts:
        if host.credential is None:
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
