"""Running a playbook: its steps in order over the selected hosts, each step one of the jobs.

A host that fails a host step (doctor, backup, verify, restore) sits out the later host steps;
``on_failure: stop`` ends the playbook after the first failed step. The audit step judges every
selected host. Every step's outcome per host is a value; the command renders them.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from orchestrator.durations import format_duration
from orchestrator.errors import ConfigError, ErrorKind, IntegrityError, ShareError
from orchestrator.helpers import remote
from orchestrator.inventory.model import HostConfig, Inventory
from orchestrator.jobs import backup, context, identity, restore
from orchestrator.jobs.audit import INTEGRITY, CoverageStatus, Severity, run_audit
from orchestrator.jobs.doctor import run_doctor
from orchestrator.jobs.playbook_schema import AuditOptions, BackupOptions, DoctorOptions, Playbook, RestoreOptions, Step
from orchestrator.runner.interrupts import Interrupts
from orchestrator.runner.pool import HostResult, RunnerEvents
from orchestrator.secret import Secret
from orchestrator.share.manifest import ManifestEntry
from orchestrator.share.runrecord import RunRecord, new_run_id
from orchestrator.share.store import BackupStore, FileState
from orchestrator.status import Status

Progress = Callable[[str, list[str]], AbstractContextManager[RunnerEvents]]


@dataclass
class HostStep:
    """One host's outcome in one step. ``kind``: an ErrorKind value, a doctor check, a coverage status
    (audit) or ``not-confirmed`` (restore declined at the prompt)."""

    host: str
    status: Status
    kind: str | None = None
    message: str = ""
    data: dict[str, object] = field(default_factory=dict)

    @classmethod
    def ok(cls, host: str, message: str, **data: object) -> HostStep:
        return cls(host, Status.OK, None, message, data)

    @classmethod
    def failed(cls, host: str, kind: str | None, message: str, **data: object) -> HostStep:
        return cls(host, Status.FAILED, kind, message, data)

    @classmethod
    def skipped(cls, host: str, message: str) -> HostStep:
        return cls(host, Status.SKIPPED, message=message)


@dataclass
class StepResult:
    step: Step
    status: Status
    summary: str
    hosts: list[HostStep] = field(default_factory=list)
    integrity: bool = False
    interrupted: bool = False
    run_record: str | None = None
    warnings: list[str] = field(default_factory=list)
    data: dict[str, object] = field(default_factory=dict)

    def cell(self, host: str) -> HostStep | None:
        return next((c for c in self.hosts if c.host == host), None)


@dataclass
class PlaybookResult:
    playbook: Playbook
    hosts: list[HostConfig]
    steps: list[StepResult]

    @property
    def interrupted(self) -> bool:
        return any(s.interrupted for s in self.steps)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        if any(s.integrity for s in self.steps):
            return 3
        return 1 if any(s.status is Status.FAILED for s in self.steps) else 0

    def failures(self) -> list[tuple[StepResult, HostStep]]:
        """The first failure of each host, in failed steps only (in host order)."""
        found: dict[str, tuple[StepResult, HostStep]] = {}
        for step in self.steps:
            if step.status is Status.FAILED:
                for c in step.hosts:
                    if c.status is Status.FAILED:
                        found.setdefault(c.host, (step, c))
        return [found[h.name] for h in self.hosts if h.name in found]


@dataclass
class PlaybookContext:
    """What the steps need besides the playbook: inventory, share, secrets, progress, confirmation."""

    inv: Inventory
    store: BackupStore | None
    password: Secret | None
    winrm_passwords: dict[str, Secret | None]
    progress: Progress
    confirm: Callable[[restore.RestoreRequest], bool]
    forks: int = 32
    interrupts: Interrupts | None = None  # the command's deferred section: once set, no further step starts


class PlaybookRun:
    def __init__(self, playbook: Playbook, hosts: list[HostConfig], ctx: PlaybookContext) -> None:
        self.playbook, self.hosts, self.ctx = playbook, hosts, ctx
        self.written: dict[str, ManifestEntry] = {}  # host -> the entry a backup step stored
        self.restored: dict[str, tuple[ManifestEntry, remote.RestoreResult]] = {}
        self.failed: dict[str, tuple[str, str]] = {}  # host -> (title of the step it failed, its kind there)

    def run(self) -> PlaybookResult:
        results: list[StepResult] = []
        stopped = ""
        for step in self.playbook.steps:
            if not stopped and self.ctx.interrupts:
                stopped = "interrupted"
            if stopped:
                cells = [HostStep.skipped(h.name, stopped) for h in self.hosts]
                interrupted = stopped == "interrupted"
                results.append(StepResult(step, Status.SKIPPED, f"not run: {stopped}", cells, interrupted=interrupted))
                continue
            try:
                result = self._step(step)
            except KeyboardInterrupt:  # the operator left the restore step's prompt: nothing was sent
                cells = [HostStep.skipped(h.name, "interrupted") for h in self.hosts]
                result = StepResult(step, Status.SKIPPED, "interrupted", cells, interrupted=True)
            results.append(result)
            if result.interrupted:
                stopped = "interrupted"
            elif result.status is Status.FAILED and self.playbook.on_failure == "stop":
                stopped = f"step {step.title} failed (on_failure: stop)"
        return PlaybookResult(self.playbook, self.hosts, results)

    def _step(self, step: Step) -> StepResult:
        if step.name == "audit":
            return self._audit(step)
        targets = [h for h in self.hosts if h.name not in self.failed]
        handlers = {"doctor": self._doctor, "backup": self._backup, "verify": self._verify, "restore": self._restore}
        result = handlers[step.name](step, targets) if targets else StepResult(step, Status.SKIPPED, "no host left")
        result.hosts += [HostStep.skipped(h.name, f"failed step {self.failed[h.name][0]}") for h in self.left_out()]
        order = {h.name: index for index, h in enumerate(self.hosts)}
        result.hosts.sort(key=lambda c: order[c.host])
        for cell in result.hosts:
            if cell.status is Status.FAILED:
                self.failed.setdefault(cell.host, (step.title, cell.kind or "failed"))
        return result

    def left_out(self) -> list[HostConfig]:
        """Hosts that failed an earlier host step."""
        return [h for h in self.hosts if h.name in self.failed]

    def _store(self) -> BackupStore:
        if self.ctx.store is None:
            raise ConfigError("this playbook needs the backup share", file=str(self.playbook.path))
        return self.ctx.store

    def _secret(self) -> Secret:
        if self.ctx.password is None:
            raise ConfigError("this playbook needs the backup password", file=str(self.playbook.path))
        return self.ctx.password

    def _write(self, record: RunRecord, result: StepResult) -> None:
        try:
            result.run_record = self._store().write_run_record(record)
        except ShareError as exc:
            result.warnings.append(f"could not write the run record: {exc}")

    # -- steps ---------------------------------------------------------------------------------

    def _doctor(self, step: Step, targets: list[HostConfig]) -> StepResult:
        assert isinstance(step.options, DoctorOptions)
        require = step.options.require
        with self.ctx.progress(f"step {step.title}", [h.name for h in targets]) as events:
            diagnoses, interrupted = run_doctor(
                targets, self.ctx.winrm_passwords, require=require, forks=self.ctx.forks, events=events
            )
        cells = []
        for d in diagnoses:
            cause, probe = d.cause(require), d.probe
            data: dict[str, object] = {
                "roles": [str(r) for r in probe.roles] if probe else None,
                "version": probe.version if probe else None,
                "checks": {c.name: str(c.state) for c in d.checks},
            }
            message = f"{cause.name}: {cause.detail}" if cause else f"{probe.version if probe else ''}".strip()
            kind = str(cause.kind) if cause and cause.kind else None
            cells.append(HostStep(d.host.name, d.status(require), kind, message, data))
        failed = sum(1 for c in cells if c.status is Status.FAILED)
        summary = f"{len(cells) - failed} passed, {failed} failed (required: {', '.join(require)})"
        return StepResult(step, Status.FAILED if failed else Status.OK, summary, cells, interrupted=interrupted)

    def _backup(self, step: Step, targets: list[HostConfig]) -> StepResult:
        assert isinstance(step.options, BackupOptions)
        store, only_stale = self._store(), step.options.only_stale
        noticed = len(store.notices)  # what the share says from here (a lost record; one kept, now written)
        try:
            plan = backup.prepare_backup(store, targets, only_stale=only_stale)
        except IntegrityError as exc:
            return _integrity_failure(step, targets, str(exc))
        run_id, started = new_run_id(), datetime.now(UTC)
        try:
            context.mark_run_started(store, run_id, "run", plan.hosts, self.ctx.forks)
        except ShareError as exc:  # unwritable since the playbook's probe: no server exports its key
            return _share_failure(step, plan.hosts, str(exc))
        task = backup.BackupTask(
            store=store,
            password=self._secret(),
            password_id=self.ctx.inv.backup.password_id,
            winrm_passwords=self.ctx.winrm_passwords,
            run_id=run_id,
        )
        with self.ctx.progress(f"step {step.title}", [h.name for h in plan.hosts]) as events:
            summary = backup.run_backup(plan, task, forks=self.ctx.forks, events=events)
        left_out = []
        for h in self.left_out():
            title, kind = self.failed[h.name]
            left_out.append(backup.SkippedHost(h, f"failed step {title}", kind=kind))
        cells = []
        for r in summary.results:
            if (entry := r.value) is not None:
                self.written[r.host.name] = entry
                cells.append(
                    HostStep.ok(r.host.name, entry.id, entry_id=entry.id, sha256=entry.sha256, size=entry.size)
                )
            else:
                cells.append(HostStep(r.host.name, r.status, str(r.kind) if r.kind else None, r.message))
        cells += [HostStep.skipped(s.host.name, s.reason) for s in plan.skipped]
        failed = sum(1 for c in cells if c.status is Status.FAILED)
        result = StepResult(
            step,
            Status.FAILED if failed else Status.OK,
            f"{sum(1 for r in summary.results if r.value)} backed up, {failed} failed, "
            f"{len(plan.skipped)} skipped as fresh",
            cells,
            interrupted=summary.interrupted,
            # what the operator must know of a host that succeeded (a temporary folder left on it), then
            # the share's notices
            warnings=[*_host_warnings(summary.results), *store.notices[noticed:]],
        )
        record = backup.build_run_record(
            run_id=run_id,
            command="run",
            started=started,
            inv=self.ctx.inv,
            share_url=store.share.url,
            summary=summary,
            skipped=plan.skipped + left_out,
        )
        self._write(record, result)
        return result

    def _verify(self, step: Step, targets: list[HostConfig]) -> StepResult:
        store = self._store()
        try:
            manifest = store.load_manifest(verify=True)
        except IntegrityError as exc:
            return _integrity_failure(step, targets, str(exc))
        listed = {(e.id, e.sha256, e.size) for e in manifest.entries}
        cells = []
        for host in targets:
            written = self.written.get(host.name)
            restored = self.restored.get(host.name)
            entry = written or (restored[0] if restored else None)
            if entry is None:
                cells.append(HostStep.skipped(host.name, "nothing written or restored by this run"))
                continue
            problem = None
            if (entry.id, entry.sha256, entry.size) not in listed:
                problem = f"entry {entry.id} is not in the signed manifest"
            elif (state := store.check_key_file(entry).state) is not FileState.OK:
                problem = f"key file {entry.path} is {state} on the share"
            elif restored and restored[1].sha256 != entry.sha256:
                problem = f"the server restored bytes whose SHA-256 differs from {entry.id}"
            if problem:
                cells.append(HostStep.failed(host.name, str(ErrorKind.INTEGRITY), problem))
            else:
                what = "restored" if restored and not written else "stored"
                message = f"{what} {entry.id}: SHA-256 and signature verified"
                cells.append(HostStep.ok(host.name, message, entry_id=entry.id, sha256=entry.sha256))
        failed = sum(1 for c in cells if c.status is Status.FAILED)
        verified = sum(1 for c in cells if c.status is Status.OK)
        summary = f"manifest signature valid; {verified} key file(s) verified, {failed} failed"
        return StepResult(step, Status.FAILED if failed else Status.OK, summary, cells, integrity=failed > 0)

    def _audit(self, step: Step) -> StepResult:
        assert isinstance(step.options, AuditOptions)
        max_age = step.options.max_age or self.ctx.inv.backup.max_age
        required = step.options.require_coverage
        report = run_audit(self.ctx.inv, self._store(), max_age=max_age)
        names = {h.name for h in self.hosts}
        servers = [s for s in report.servers if s.host in names]
        covered = sum(1 for s in servers if s.status is CoverageStatus.COVERED)
        percent = round(100.0 * covered / len(servers), 1) if servers else 100.0
        integrity = any(s.status in INTEGRITY for s in servers) or any(
            f.severity is Severity.INTEGRITY and (f.host is None or f.host in names) for f in report.findings
        )
        cells = [
            HostStep.ok(s.host, s.reason, coverage=str(s.status), entry_id=s.last_good.id)
            if s.status is CoverageStatus.COVERED and s.last_good
            else HostStep.failed(s.host, str(s.status), s.reason, coverage=str(s.status), entry_id=None)
            for s in servers
        ]
        summary = (
            f"coverage {percent:g}% of {len(servers)} selected server(s) (required {required:g}%, "
            f"max age {format_duration(max_age)}); manifest signature {report.signature}"
        )
        findings = [f"{f.kind}: {f.message}" for f in report.findings if f.host is None or f.host in names]
        status = Status.FAILED if integrity or percent < required else Status.OK
        return StepResult(
            step,
            status,
            summary,
            cells,
            integrity=integrity,
            warnings=findings,
            data={
                "coverage": {
                    "percent": percent,
                    "covered": covered,
                    "servers": len(servers),
                    "required": required,
                    "max_age_seconds": int(max_age.total_seconds()),
                    "signature": str(report.signature),
                }
            },
        )

    def _restore(self, step: Step, targets: list[HostConfig]) -> StepResult:
        assert isinstance(step.options, RestoreOptions)
        host, store = targets[0], self._store()
        try:
            request = restore.prepare_restore(store, host, step.options.entry)
        except IntegrityError as exc:
            return _integrity_failure(step, targets, str(exc))
        except ConfigError as exc:  # refused (another server's or role's key) or nothing to restore
            kind = exc.kind if isinstance(exc, restore.RestoreRefused) else ErrorKind.CONFIG
            return StepResult(step, Status.FAILED, "not restored", [HostStep.failed(host.name, str(kind), exc.message)])
        # the password must be the one of the backup's own password_id, before the server is contacted; the
        # step fails (kind config) and the runbook goes on reporting the steps it ran
        try:
            identity.check_password(store, request.entry.password_id, self._secret())
        except ConfigError as exc:
            return StepResult(step, Status.FAILED, "not restored", [HostStep.failed(host.name, "config", exc.message)])
        warning = restore.password_label_warning(self.ctx.inv, request)
        if step.options.confirm and not self.ctx.confirm(request):
            cell = HostStep.failed(host.name, "not-confirmed", "the operator declined the restore")
            return StepResult(step, Status.FAILED, "not confirmed", [cell])
        run_id, started = new_run_id(), datetime.now(UTC)
        with self.ctx.progress(f"step {step.title}", [host.name]) as events:
            summary = restore.run_restore(
                request, self._secret(), self.ctx.winrm_passwords.get(host.name), events=events
            )
        outcome = summary.results[0]
        entry = request.entry
        if outcome.value is not None:
            self.restored[host.name] = (entry, outcome.value)
            cell = HostStep.ok(host.name, f"restored {entry.id}", entry_id=entry.id, sha256=entry.sha256)
        else:
            failure = str(outcome.kind) if outcome.kind else None
            cell = HostStep(host.name, outcome.status, failure, outcome.message, {"entry_id": entry.id})
        result = StepResult(
            step,
            Status.OK if outcome.value else Status.FAILED,
            f"{entry.id} -> {host.name}",
            [cell],
            interrupted=summary.interrupted,
            warnings=[*([warning] if warning else []), *_host_warnings(summary.results)],
        )
        record = restore.build_run_record(
            run_id=run_id,
            started=started,
            inv=self.ctx.inv,
            share_url=store.share.url,
            request=request,
            summary=summary,
        )
        self._write(record, result)
        return result


def _share_failure(step: Step, targets: list[HostConfig], message: str) -> StepResult:
    cells = [HostStep.failed(h.name, str(ErrorKind.SHARE), message) for h in targets]
    return StepResult(step, Status.FAILED, message, cells)


def _integrity_failure(step: Step, targets: list[HostConfig], message: str) -> StepResult:
    cells = [HostStep.failed(h.name, str(ErrorKind.INTEGRITY), message) for h in targets]
    return StepResult(step, Status.FAILED, message, cells, integrity=True)


def _host_warnings(results: list[HostResult[Any]]) -> list[str]:
    """The warnings of hosts that succeeded, as a plain backup or restore shows them."""
    return [f"{r.host.name}: warning: {r.warning}" for r in results if r.warning]
