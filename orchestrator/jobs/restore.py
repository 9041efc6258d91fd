"""The restore job: put a backed-up key back onto a rebuilt server of the same name and role.

Nothing reaches the server before the manifest signature and the key file's SHA-256 are checked
and the entry is known to belong to that server. The key file and the password travel on the
restore helper's stdin; the helper runs ``SecureStorageBackup.exe Restore <file>``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from datetime import datetime

from orchestrator.errors import ConfigError, ErrorKind, HostFailure, IntegrityError
from orchestrator.helpers import remote
from orchestrator.helpers.run import PROBE, RESTORE, run_helper
from orchestrator.inventory.model import HostConfig, Inventory
from orchestrator.jobs.record import host_outcome, run_record
from orchestrator.runner.pool import HostContext, HostResult, Runner, RunnerEvents, RunSummary
from orchestrator.secret import Secret
from orchestrator.session.winrm import WinRMSession
from orchestrator.share.manifest import Manifest, ManifestEntry
from orchestrator.share.runrecord import HostOutcome, RunRecord
from orchestrator.share.store import BackupStore
from orchestrator.status import Status

SAME_SERVER_RULE = (
    "SecureStorageBackup restores a key only onto the server it was taken from: Microsoft's recovery "
    "rebuilds the server with the same computer name and role, restores the key, then runs Setup "
    "against the existing database"
)


class RestoreRefused(ConfigError):
    """The backup belongs to another server or role: nothing is sent (exit 2; ``kind`` for reports)."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        self.kind = kind
        super().__init__(message, key="--entry")


@dataclass(frozen=True)
class RestoreRequest:
    """A verified key file and the server it goes back to."""

    host: HostConfig
    entry: ManifestEntry
    data: bytes = field(repr=False)


def find_host(inv: Inventory, name: str) -> HostConfig:
    """The inventory host called ``name`` (any case); ConfigError naming close matches."""
    for host in inv.hosts.values():
        if host.name.lower() == name.lower():
            return host
    close = difflib.get_close_matches(name, list(inv.hosts), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"{name!r} is not a host of {inv.path}{hint}", key="--host")


def choose_entry(manifest: Manifest, host: HostConfig, entry_id: str | None) -> ManifestEntry:
    """The given entry, else the host's newest; ConfigError when there is none."""
    if entry_id is not None:
        entry = next((e for e in manifest.entries if e.id == entry_id), None)
        if entry is None:
            known = ", ".join(e.id for e in manifest.entries_for(host.name)[:5]) or "none"
            raise ConfigError(f"no manifest entry {entry_id!r} (backups of {host.name}: {known})", key="--entry")
        return entry
    entries = manifest.entries_for(host.name)
    if not entries:
        raise ConfigError(f"the share holds no backup of {host.name}: nothing to restore", key="--host")
    return entries[0]


def check_target(host: HostConfig, entry: ManifestEntry) -> None:
    """Refuse a restore onto a server other than the one the backup was taken from."""
    if entry.host.lower() != host.name.lower():
        raise RestoreRefused(
            ErrorKind.NAME_MISMATCH,
            f"entry {entry.id} is a backup of {entry.host}, not of {host.name}; {SAME_SERVER_RULE}",
        )
    if entry.role != host.role.value:
        raise RestoreRefused(
            ErrorKind.ROLE_MISMATCH,
            f"entry {entry.id} is the key of a {entry.role}, but the inventory says {host.name} is a "
            f"{host.role}; the keys of management servers and DW management servers differ; {SAME_SERVER_RULE}",
        )


def prepare_restore(store: BackupStore, host: HostConfig, entry_id: str | None) -> RestoreRequest:
    """Verify the manifest signature, choose the entry, check it belongs to ``host``, read its bytes.

    IntegrityError (exit 3) for a bad signature or an altered or missing key file.
    """
    manifest = store.load_manifest(verify=True)
    entry = choose_entry(manifest, host, entry_id)
    check_target(host, entry)
    try:
        data = store.read_key_file(entry)
    except IntegrityError as exc:
        if entry_id is not None:
            raise
        older = store.newest_intact(manifest, host.name, skip=1)  # the chosen (newest) entry just failed
        hint = (
            f"; the newest intact backup is {older.id} (restore it with --entry {older.id} only if it holds "
            "the server's current key)"
            if older
            else "; no intact backup of this server is left"
        )
        raise IntegrityError(f"{exc}{hint}; run keyfleet audit") from None
    return RestoreRequest(host, entry, data)


def password_label_warning(inv: Inventory, request: RestoreRequest) -> str | None:
    """A warning when the backup was sealed under another password label than the inventory's."""
    if request.entry.password_id == inv.backup.password_id:
        return None
    return (
        f"backup {request.entry.id} was taken with password label {request.entry.password_id!r}; the "
        f"inventory's is {inv.backup.password_id!r}: the password given must be the one of that backup"
    )


class RestoreTask:
    """Send the key file and its password to the restore helper of one host."""

    def __init__(self, request: RestoreRequest, password: Secret, winrm_password: Secret | None) -> None:
        self._request = request
        self._password = password
        self._winrm_password = winrm_password

    def __call__(self, ctx: HostContext) -> remote.RestoreResult:
        host, entry = ctx.host, self._request.entry
        params = remote.restore_params(
            self._request.data,
            host.tool_path,
            host.tool_timeout,
            tool_input=host.tool_input,
            expected_computer_name=host.name,
            expected_role=host.role,
        )
        with WinRMSession(host, self._winrm_password) as session:
            # nothing secret goes to a server before it has shown it is the one the key belongs to: the
            # probe (no key file, no password) names it; the restore helper checks again on the server
            check_server(host, run_helper(ctx, session, PROBE, remote.probe_params(host.tool_path), None))
            ctx.report("restoring")
            restored = run_helper(ctx, session, RESTORE, params, self._password)
        if restored.sha256 != entry.sha256:
            raise HostFailure(
                ErrorKind.INTEGRITY, host.name, "the server restored a file whose SHA-256 differs from the entry's"
            )
        ctx.warning = restored.cleanup_warning
        return restored


def check_server(host: HostConfig, probe: remote.ProbeResult) -> None:
    """Refuse a server whose computer name is not the backup's, or that holds another SCSM role (a server
    with none is being rebuilt: Setup runs after the restore). The restore helper makes the same checks
    (restore.ps1: ``-ne`` compares names without case)."""
    expected = host.computer_name
    if probe.computer_name.upper() != expected:
        raise HostFailure(
            ErrorKind.NAME_MISMATCH,
            host.name,
            f"this server is {probe.computer_name} but the key file belongs to {expected}: a key can only be "
            "restored onto a server with the same computer name (nothing was sent)",
        )
    if probe.roles and host.role not in probe.roles:
        found = " and ".join(str(role) for role in probe.roles)
        raise HostFailure(
            ErrorKind.ROLE_MISMATCH,
            host.name,
            f"this server is a {found} but the key file belongs to a {host.role} (nothing was sent)",
        )


def run_restore(
    request: RestoreRequest,
    password: Secret,
    winrm_password: Secret | None,
    *,
    events: RunnerEvents | None = None,
) -> RunSummary[remote.RestoreResult]:
    """Restore on the one host, with the runner's deadline, retries and Ctrl-C handling."""
    task = RestoreTask(request, password, winrm_password)
    return Runner(task, forks=1, events=events).run([request.host])


def outcome_of(request: RestoreRequest, result: HostResult[remote.RestoreResult]) -> HostOutcome:
    entry, restored = request.entry, result.value
    return host_outcome(
        result,
        entry,
        scsm_version=restored.version if restored else None,
        method=restored.method if restored else None,
        message=f"restored {entry.id}" if restored else None,
    )


def build_run_record(
    *,
    run_id: str,
    started: datetime,
    inv: Inventory,
    share_url: str,
    request: RestoreRequest,
    summary: RunSummary[remote.RestoreResult],
) -> RunRecord:
    return run_record(
        run_id=run_id,
        command="restore",
        started=started,
        inv=inv,
        share_url=share_url,
        interrupted=summary.interrupted,
        outcomes=[outcome_of(request, r) for r in summary.results],
    )


def exit_code(summary: RunSummary[remote.RestoreResult]) -> int:
    if summary.interrupted:
        return 130
    return 0 if all(r.status is Status.OK for r in summary.results) else 1
