"""The collect job: take key files administrators made with the wizard, verify them, store them.

For servers whose SecureStorageBackup.exe takes no typed password (``keyfleet doctor --tool-smoke``
finds none that works), an administrator runs the wizard on each server and saves the key file in
an agreed outbox folder. keyfleet pulls the newest file over WinRM, checks its SHA-256 end to end
and the server's role as a backup does, stores it with ``method: wizard``, and (``--remove``)
deletes the remote copy only after the share holds it.
"""

from __future__ import annotations

from orchestrator.errors import ErrorKind, HostFailure, IntegrityError, ShareError
from orchestrator.helpers import remote
from orchestrator.helpers.run import COLLECT, COLLECT_REMOVE, run_helper
from orchestrator.jobs.backup import verify_roles
from orchestrator.runner.pool import HostContext
from orchestrator.secret import Secret
from orchestrator.session.winrm import WinRMSession
from orchestrator.share.manifest import Manifest, ManifestEntry
from orchestrator.share.store import BackupStore


class CollectTask:
    """Pull, verify and store one host's wizard-made key file: the work the runner does per host."""

    def __init__(
        self,
        *,
        store: BackupStore,
        manifest: Manifest,
        password_id: str,
        winrm_passwords: dict[str, Secret | None],
        run_id: str,
        path: str,
        remove: bool,
    ) -> None:
        self.store = store
        self._manifest = manifest
        self._password_id = password_id
        self._winrm_passwords = winrm_passwords
        self.run_id = run_id
        self._path = path
        self._remove = remove

    def __call__(self, ctx: HostContext) -> ManifestEntry:
        host = ctx.host
        with WinRMSession(host, self._winrm_passwords.get(host.name)) as session:
            collected = run_helper(ctx, session, COLLECT, remote.collect_params(self._path), None)
            verify_roles(host, collected.roles)
            if ctx.cancel.is_set():
                raise HostFailure(ErrorKind.INTERRUPTED, host.name, "aborted before storing")
            ctx.report("storing")
            entry = self._store(ctx, collected)
            if self._remove:
                ctx.report("removing the server's copy")
                params = remote.collect_params(self._path, remove=(collected.name, collected.sha256))
                try:
                    run_helper(ctx, session, COLLECT_REMOVE, params, None)
                except HostFailure as exc:
                    # retried by the runner (the stored key is found again, not stored twice), or interrupted
                    if exc.kind.transient or exc.kind is ErrorKind.INTERRUPTED:
                        raise
                    # the key is on the share: a copy left behind is a warning
                    ctx.warning = f"stored, but the server's copy was not removed: {exc.reason}"
        return entry

    def _store(self, ctx: HostContext, collected: remote.CollectedFile) -> ManifestEntry:
        host = ctx.host
        known = next((e for e in self._manifest.entries_for(host.name) if e.sha256 == collected.sha256), None)
        if known is not None:
            ctx.warning = f"{collected.name} is already on the share as {known.id}; not stored again"
            return known
        try:
            return self.store.add(
                host=host.name,
                group=host.group,
                role=host.role.value,
                data=collected.file,
                password_id=self._password_id,
                scsm_version=collected.version,
                helper_version=collected.helper_version,
                run_id=self.run_id,
                method="wizard",
            )
        except ShareError as exc:
            raise HostFailure(ErrorKind.SHARE, host.name, str(exc)) from None
        except IntegrityError as exc:
            raise HostFailure(ErrorKind.INTEGRITY, host.name, str(exc)) from None
