"""The backup job: export each selected server's key, verify it, store it, record every outcome."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from orchestrator.errors import ConfigError, ErrorKind, HostFailure, IntegrityError, ShareError
from orchestrator.helpers import remote
from orchestrator.helpers.run import EXPORT, run_helper
from orchestrator.inventory.model import HostConfig, Inventory, Role
from orchestrator.jobs.record import host_outcome, run_record
from orchestrator.runner.interrupts import Interrupts
from orchestrator.runner.pool import HostContext, HostResult, Runner, RunnerEvents, RunSummary
from orchestrator.secret import Secret
from orchestrator.share.manifest import Manifest, ManifestEntry
from orchestrator.share.runrecord import HostOutcome, RunRecord
from orchestrator.share.store import BackupStore
from orchestrator.status import Status

log = logging.getLogger("keyfleet.backup")


@dataclass(frozen=True)
class SkippedHost:
    host: HostConfig
    reason: str
    kind: str | None = None  # why it did not succeed, when it was left out by a failure (a runbook's earlier step)


@dataclass(frozen=True)
class BackupPlan:
    """Which hosts a backup works on and which it skips, decided before any host is touched."""

    hosts: list[HostConfig]
    skipped: list[SkippedHost] = field(default_factory=list)

    def describe(self, inv: Inventory, share_url: str) -> list[str]:
        lines = [f"backup plan: {len(self.hosts)} host(s) to {share_url}"]
        for host in self.hosts:
            security = "encrypted" if host.scheme == "https" or host.transport != "basic" else "UNENCRYPTED"
            lines.append(
                f"  {host.name} [{host.group}/{host.role}] {host.endpoint} ({host.transport}, {security}): "
                f"export key with SecureStorageBackup.exe (tool_timeout {host.tool_timeout:g}s) -> "
                f"{host.group}/{host.role}/{host.name}/"
            )
        for skipped in self.skipped:
            lines.append(f"  {skipped.host.name}: skip ({skipped.reason})")
        return lines


def prepare_backup(store: BackupStore, hosts: list[HostConfig], *, only_stale: timedelta | None) -> BackupPlan:
    """Read and verify the manifest before any host is touched (an unreachable share or a tampered
    manifest is one clear error, not a failure repeated on every host after its export), then plan."""
    manifest = store.load_manifest(verify=True)
    store.unrecorded_runs()
    return plan_backup(store, hosts, manifest=manifest, only_stale=only_stale)


def plan_backup(
    store: BackupStore, hosts: list[HostConfig], *, manifest: Manifest, only_stale: timedelta | None
) -> BackupPlan:
    """Skip hosts whose last good backup is younger than ``only_stale``."""
    if only_stale is None:
        return BackupPlan(list(hosts))
    now = datetime.now(UTC)
    selected, skipped = [], []
    for host in hosts:
        newest = store.newest_intact(manifest, host.name)
        if newest is not None and now - newest.created < only_stale:
            age = int((now - newest.created).total_seconds())
            skipped.append(SkippedHost(host, f"backed up {age}s ago ({newest.id}), younger than --only-stale"))
        else:
            selected.append(host)
    return BackupPlan(selected, skipped)


def last_failed_hosts(store: BackupStore) -> set[str]:
    """Hosts that did not succeed in the latest backup (``backup`` or a runbook's ``run``) on the share."""
    records = [r for r in store.run_records(invalid=[]) if r.command in ("backup", "run")]
    record = records[-1] if records else None
    if record is None:
        raise ConfigError("@last-failed: the share has no backup run record yet", key="--limit")
    # failed, interrupted, or skipped for a failure (a runbook's earlier step): not a fresh backup's skip
    return {o.host for o in record.outcomes if o.status == "failed" or o.kind is not None}


def last_failed_resolver(store: BackupStore) -> Callable[[str], set[str]]:
    def resolve(token: str) -> set[str]:
        if token != "@last-failed":
            raise ConfigError(f"unknown selection {token!r} (supported: @last-failed)", key="--limit")
        return last_failed_hosts(store)

    return resolve


def load_session_stack() -> None:
    """Import the WinRM stack (pywinrm, requests, urllib3, pyspnego: about 0.2 s of CPU). ``keyfleet backup``
    does it while the password verifier's scrypt runs on another thread, which releases the GIL."""
    import orchestrator.session.winrm  # noqa: F401


class BackupTask:
    """Export, verify and store one host's key: the work the runner does per host."""

    def __init__(
        self,
        *,
        store: BackupStore,
        password: Secret,
        password_id: str,
        winrm_passwords: dict[str, Secret | None],
        run_id: str,
    ) -> None:
        self.store = store
        self._password = password
        self._password_id = password_id
        self._winrm_passwords = winrm_passwords
        self.run_id = run_id

    def __call__(self, ctx: HostContext) -> ManifestEntry:
        from orchestrator.session.winrm import WinRMSession

        host = ctx.host
        params = remote.export_params(host.tool_path, host.tool_timeout, host.tool_input)
        with WinRMSession(host, self._winrm_passwords.get(host.name)) as session:
            export = run_helper(ctx, session, EXPORT, params, self._password)
        verify_export(host, export)
        ctx.warning = export.cleanup_warning
        if ctx.cancel.is_set():  # aborted: the run record will say so; store nothing it does not list
            raise HostFailure(ErrorKind.INTERRUPTED, host.name, "aborted before storing")
        ctx.report("storing")
        try:
            return self.store.add(
                host=host.name,
                group=host.group,
                role=host.role.value,
                data=export.file,
                password_id=self._password_id,
                scsm_version=export.version,
                helper_version=export.helper_version,
                run_id=self.run_id,
                method=export.method,
            )
        except ShareError as exc:
            raise HostFailure(ErrorKind.SHARE, host.name, str(exc)) from None
        except IntegrityError as exc:
            raise HostFailure(ErrorKind.INTEGRITY, host.name, str(exc)) from None


def verify_export(host: HostConfig, export: remote.ExportResult) -> None:
    """Nothing is stored under a wrong label or with bytes the server did not send."""
    if not export.file:
        raise HostFailure(ErrorKind.INTEGRITY, host.name, "the server returned an empty key file")
    if hashlib.sha256(export.file).hexdigest() != export.sha256:
        raise HostFailure(ErrorKind.INTEGRITY, host.name, "received bytes do not match the server's SHA-256")
    verify_roles(host, export.roles)


def verify_roles(host: HostConfig, roles: tuple[Role, ...]) -> None:
    """The inventory's role must be among the SCSM roles the server holds (a portal may share it)."""
    if not roles:
        raise HostFailure(
            ErrorKind.ROLE_MISMATCH,
            host.name,
            f"no SCSM role detected on the server (inventory: {host.role})",
        )
    if host.role not in roles:
        found = " and ".join(str(r) for r in roles)
        raise HostFailure(
            ErrorKind.ROLE_MISMATCH,
            host.name,
            f"the server reports role {found}, the inventory says {host.role}; nothing stored",
        )


class StoringTask(Protocol):
    """A per-host task that stores key files on the share: backup, or collect."""

    store: BackupStore
    run_id: str

    def __call__(self, ctx: HostContext) -> ManifestEntry: ...


def run_backup(
    plan: BackupPlan,
    task: StoringTask,
    *,
    forks: int,
    events: RunnerEvents | None = None,
    interrupts: Interrupts | None = None,
) -> RunSummary[ManifestEntry]:
    """Back up ``plan``'s hosts. With ``interrupts`` (the caller's), an interrupt that came before
    the hosts started or after they finished also counts as one."""
    summary = Runner(task, forks=forks, events=events).run(plan.hosts)
    summary.interrupted = summary.interrupted or bool(interrupts)
    if summary.interrupted:
        # a host aborted while its key was being stored may have landed in the manifest anyway:
        # stop the store, then let the results say exactly what it holds
        stored = {e.host: e for e in task.store.stop_adding() if e.run_id == task.run_id}
        summary.results = [_settle(result, stored.get(result.host.name)) for result in summary.results]
    return summary


def _settle(result: HostResult[ManifestEntry], stored: ManifestEntry | None) -> HostResult[ManifestEntry]:
    if stored is None or result.status is Status.OK:
        return result
    return HostResult(result.host, Status.OK, stored, attempts=result.attempts, duration=result.duration)


def outcome_of(result: HostResult[ManifestEntry]) -> HostOutcome:
    entry = result.value
    return host_outcome(
        result,
        entry,
        scsm_version=entry.scsm_version if entry else result.scsm_version,
        method=entry.method if entry else None,
    )


def skipped_outcome(skipped: SkippedHost) -> HostOutcome:
    host = skipped.host
    return HostOutcome(
        host=host.name,
        group=host.group,
        role=host.role.value,
        status=Status.SKIPPED,
        kind=skipped.kind,
        message=skipped.reason,
    )


def build_run_record(
    *,
    run_id: str,
    command: str,
    started: datetime,
    inv: Inventory,
    share_url: str,
    summary: RunSummary[ManifestEntry],
    skipped: list[SkippedHost],
) -> RunRecord:
    outcomes = [outcome_of(r) for r in summary.results] + [skipped_outcome(s) for s in skipped]
    return run_record(
        run_id=run_id,
        command=command,
        started=started,
        inv=inv,
        share_url=share_url,
        interrupted=summary.interrupted,
        outcomes=outcomes,
    )


def exit_code(summary: RunSummary[ManifestEntry]) -> int:
    if summary.interrupted:
        return 130
    return 1 if any(r.status is Status.FAILED for r in summary.results) else 0
