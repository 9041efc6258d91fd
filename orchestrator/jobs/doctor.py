"""Preflight (``keyfleet doctor``): probe each server and judge what it offers against the inventory.

The probe helper changes nothing on the server and needs no secret. A connection failure fails
the check it stops at (reachable, authenticated, helper) and leaves the later checks not run.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from orchestrator.errors import ErrorKind, HostFailure
from orchestrator.helpers import remote
from orchestrator.helpers.run import PROBE, SMOKE, run_helper
from orchestrator.inventory.model import HostConfig
from orchestrator.runner.pool import HostContext, HostResult, Runner, RunnerEvents
from orchestrator.secret import Secret
from orchestrator.session.winrm import WinRMSession
from orchestrator.status import Status

# Every check, in the order it is judged; `require:` in a playbook names a subset.
CHECKS = (
    "reachable",
    "authenticated",
    "helper",
    "administrator",
    "role",
    "version",
    "tool",
    "temp-space",
    "computer-name",
)
SMOKE_CHECK = "tool-input"  # with --tool-smoke: a throwaway Backup shows how the tool takes a password
SMOKE_TIMEOUT = 30.0  # seconds per attempt at most: the tool is tried twice (stdin, then a console)
MIN_TEMP_FREE_BYTES = 100 * 1024 * 1024  # the key file is tiny; less than this is a server in trouble
# where a connection-level failure stops the checks; any other failure stops at "helper"
_FAILED_AT = {
    ErrorKind.UNREACHABLE: "reachable",
    ErrorKind.TLS: "reachable",
    ErrorKind.TIMEOUT: "reachable",
    ErrorKind.CONFIG: "reachable",
    ErrorKind.INTERRUPTED: "reachable",
    ErrorKind.AUTH: "authenticated",
}


class CheckState(StrEnum):
    OK = "ok"
    FAILED = "failed"
    NOT_RUN = "not-run"


@dataclass(frozen=True)
class CheckResult:
    """One check on one host, with the kind of failure when it failed."""

    name: str
    state: CheckState
    detail: str = ""
    kind: ErrorKind | None = None


@dataclass(frozen=True)
class Diagnosis:
    """Everything doctor learned about one host."""

    host: HostConfig
    checks: tuple[CheckResult, ...]
    probe: remote.ProbeResult | None
    skipped: bool = False  # never started (interrupted)
    duration: float = 0.0
    attempts: int = 0
    auth: str | None = None  # the mechanism the logon negotiated: kerberos, ntlm, basic, ... (None: no logon)

    def check(self, name: str) -> CheckResult:
        return next((c for c in self.checks if c.name == name), CheckResult(name, CheckState.NOT_RUN))

    def failures(self, require: Collection[str] = CHECKS) -> list[CheckResult]:
        """The failed checks, when any required check did not pass (root cause first)."""
        if all(self.check(name).state is CheckState.OK for name in require):
            return []
        return [c for c in self.checks if c.state is CheckState.FAILED]

    def status(self, require: Collection[str] = CHECKS) -> Status:
        if self.skipped:
            return Status.SKIPPED
        return Status.FAILED if self.failures(require) else Status.OK

    def cause(self, require: Collection[str] = CHECKS) -> CheckResult | None:
        """The first failed check (the root cause) when the host fails ``require``."""
        failures = self.failures(require)
        return failures[0] if failures else None


def status_counts(diagnoses: Sequence[Diagnosis], require: Collection[str] = CHECKS) -> dict[str, int]:
    """How many hosts ended in each status (``ok``, ``failed``, ``skipped``)."""
    return {str(s): sum(1 for d in diagnoses if d.status(require) is s) for s in Status}


class ProbeTask:
    """Run the probe helper on one host (the runner's per-host work); with ``smoke``, then the smoke
    helper, a throwaway Backup that shows which input method the tool takes (only when the probe
    found the tool and administrator rights)."""

    def __init__(self, winrm_passwords: dict[str, Secret | None], *, smoke: bool = False) -> None:
        self._winrm_passwords = winrm_passwords
        self._smoke = smoke
        self.mechanisms: dict[str, str | None] = {}  # host name -> what its logon negotiated
        self.smoke_failures: dict[str, HostFailure] = {}  # host name -> why its smoke test failed

    def __call__(self, ctx: HostContext) -> remote.ProbeResult:
        host = ctx.host
        with WinRMSession(host, self._winrm_passwords.get(host.name)) as session:
            try:
                probe = run_helper(ctx, session, PROBE, remote.probe_params(host.tool_path), None)
            finally:
                self.mechanisms[host.name] = session.mechanism
            if not (self._smoke and probe.admin and probe.tool_path):
                return probe
            ctx.report("tool smoke test")
            params = remote.smoke_params(host.tool_path, min(host.tool_timeout, SMOKE_TIMEOUT))
            try:
                smoke = run_helper(ctx, session, SMOKE, params, None)
            except HostFailure as failure:
                if failure.kind is ErrorKind.INTERRUPTED:
                    raise
                # the probe answered: its checks stand, and the smoke test's failure is its own check's
                self.smoke_failures[host.name] = failure
                return probe
        return replace(probe, smoke=smoke)


def run_doctor(
    hosts: list[HostConfig],
    winrm_passwords: dict[str, Secret | None],
    *,
    require: Collection[str] = CHECKS,
    forks: int = 32,
    events: RunnerEvents | None = None,
    smoke: bool = False,
) -> tuple[list[Diagnosis], bool]:
    """Probe every host at once (at most ``forks``); one Diagnosis per host and whether interrupted."""
    events = events or RunnerEvents()

    def on_done(result: HostResult[remote.ProbeResult]) -> None:
        # the progress shows the verdict, not only whether the probe answered
        cause = diagnose(result, task.smoke_failures.get(result.host.name)).cause(require)
        if result.status is Status.OK and cause is not None:
            result = replace(result, status=Status.FAILED, kind=cause.kind, message=f"{cause.name}: {cause.detail}")
        events.on_done(result)

    runner_events = RunnerEvents(on_state=events.on_state, on_done=on_done)
    task = ProbeTask(winrm_passwords, smoke=smoke)
    summary = Runner(task, forks=forks, events=runner_events).run(hosts)
    diagnoses = [
        _with_auth(diagnose(r, task.smoke_failures.get(r.host.name)), task.mechanisms.get(r.host.name))
        for r in summary.results
    ]
    return diagnoses, summary.interrupted


def _with_auth(diagnosis: Diagnosis, mechanism: str | None) -> Diagnosis:
    """The logon's mechanism, named only when the host passed the authenticated check."""
    authenticated = diagnosis.check("authenticated").state is CheckState.OK
    return replace(diagnosis, auth=mechanism if authenticated else None)


def diagnose(result: HostResult[remote.ProbeResult], smoke_failure: HostFailure | None = None) -> Diagnosis:
    """Judge one probe result (or the failure that prevented it) check by check; ``smoke_failure``: why
    the tool smoke test that followed the probe failed."""
    probe = result.value if result.status is Status.OK else None
    if result.status is Status.SKIPPED:
        checks = tuple(CheckResult(name, CheckState.NOT_RUN, result.message) for name in CHECKS)
    elif probe is None:
        kind = result.kind or ErrorKind.INTERNAL
        checks = _stopped_at(_FAILED_AT.get(kind, "helper"), kind, result.message)
    else:
        checks = judge(result.host, probe)
        if probe.smoke is not None:
            checks = (*checks, judge_smoke(probe.smoke))
        elif smoke_failure is not None:
            checks = (*checks, _failed(SMOKE_CHECK, smoke_failure.reason, smoke_failure.kind))
    skipped = result.status is Status.SKIPPED
    return Diagnosis(result.host, checks, probe, skipped, duration=result.duration, attempts=result.attempts)


def _stopped_at(failed: str, kind: ErrorKind, message: str) -> tuple[CheckResult, ...]:
    index = CHECKS.index(failed)
    return (
        *(CheckResult(name, CheckState.OK) for name in CHECKS[:index]),
        CheckResult(failed, CheckState.FAILED, message, kind),
        *(CheckResult(name, CheckState.NOT_RUN) for name in CHECKS[index + 1 :]),
    )


def _ok(name: str, detail: str) -> CheckResult:
    return CheckResult(name, CheckState.OK, detail)


def _failed(name: str, detail: str, kind: ErrorKind) -> CheckResult:
    return CheckResult(name, CheckState.FAILED, detail, kind)


def judge(host: HostConfig, probe: remote.ProbeResult) -> tuple[CheckResult, ...]:
    """The checks of a host whose probe answered."""
    computer_name = host.computer_name
    tool_where = f"at {host.tool_path}" if host.tool_path else "in tool_path or any known location"
    found = " + ".join(str(r) for r in probe.roles)
    if not probe.roles:
        role = _failed("role", f"no SCSM role found in the registry (inventory: {host.role})", ErrorKind.ROLE_MISMATCH)
    elif host.role not in probe.roles:
        role = _failed("role", f"the server is a {found}, the inventory says {host.role}", ErrorKind.ROLE_MISMATCH)
    else:
        role = _ok("role", found)
    return (
        _ok("reachable", host.endpoint),
        _ok("authenticated", host.credential.username if host.credential else host.transport),
        _ok("helper", f"probe {probe.helper_version}, PowerShell {probe.powershell_version or '?'}"),
        _ok("administrator", "local administrator")
        if probe.admin
        else _failed("administrator", "the WinRM account is not a local administrator", ErrorKind.NOT_ADMIN),
        role,
        _ok("version", probe.version)
        if probe.version
        else _failed("version", "no Service Manager version found in the registry", ErrorKind.ROLE_MISMATCH),
        _ok("tool", f"{probe.tool_path} ({probe.tool_version or 'version unknown'})")
        if probe.tool_path
        else _failed("tool", f"SecureStorageBackup.exe not found {tool_where}", ErrorKind.TOOL_MISSING),
        _temp_space(probe),
        _ok("computer-name", probe.computer_name)
        if probe.computer_name.upper() == computer_name
        else _failed(
            "computer-name",
            f"the server's computer name is {probe.computer_name}, the inventory says {computer_name}",
            ErrorKind.NAME_MISMATCH,
        ),
    )


def judge_smoke(smoke: remote.SmokeResult) -> CheckResult:
    """Which way of typing the password works (stdin, console), or why none does."""
    tried = "; ".join(
        f"{a.method}: "
        + (f"exit {a.exit}" if a.exit is not None else str(a.kind or "failed"))
        + (f" ({a.output.splitlines()[-1][:120]})" if a.output.strip() else "")
        for a in smoke.attempts
    )
    if smoke.works:
        return _ok(SMOKE_CHECK, f"{smoke.works} works ({tried})")
    kinds = {a.kind for a in smoke.attempts}
    kind = ErrorKind.CONSOLE_UNAVAILABLE if "console-unavailable" in kinds else ErrorKind.TOOL_INTERACTIVE
    return _failed(SMOKE_CHECK, f"no input method works ({tried}): use keyfleet collect", kind)


def _temp_space(probe: remote.ProbeResult) -> CheckResult:
    where = probe.temp_path or "the temporary folder"
    free = probe.temp_free_bytes
    if free is None:
        return _ok("temp-space", f"free space of {where} not reported")
    if free < MIN_TEMP_FREE_BYTES:
        wanted = format_bytes(MIN_TEMP_FREE_BYTES)
        return _failed(
            "temp-space", f"only {format_bytes(free)} free in {where} (at least {wanted} wanted)", ErrorKind.DISK_FULL
        )
    return _ok("temp-space", f"{format_bytes(free)} free")


def format_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
