"""``keyfleet doctor``: preflight every selected server and render each check."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rich.text import Text

from orchestrator.console import HINTS, Ui, failures_first, print_result_json
from orchestrator.emulation import serving
from orchestrator.errors import ErrorKind
from orchestrator.helpers.remote import ProbeResult
from orchestrator.inventory.limit import select_hosts
from orchestrator.inventory.loader import load_inventory
from orchestrator.jobs import context
from orchestrator.jobs.doctor import (
    CHECKS,
    SMOKE_CHECK,
    CheckResult,
    CheckState,
    Diagnosis,
    format_bytes,
    run_doctor,
    status_counts,
)
from orchestrator.report.json import doctor_json
from orchestrator.runner.interrupts import deferred
from orchestrator.runner.pool import RunnerEvents
from orchestrator.status import Status

# short column headers, one per check
COLUMNS = {
    "reachable": "reach",
    "authenticated": "auth",
    "helper": "helper",
    "administrator": "admin",
    "role": "role ok",
    "version": "scsm",
    "tool": "tool",
    "temp-space": "temp",
    "computer-name": "name",
    "tool-input": "input",
}
EXTRA_HINTS = {
    str(ErrorKind.NAME_MISMATCH): "name the host in the inventory after its computer name: a restore "
    "needs the same computer name as the backup",
    str(ErrorKind.PROTOCOL): "the reply was malformed or cut; check the WinRM service and run with -v for detail",
    str(ErrorKind.REMOTE): "the probe helper failed on the server; run with -v and check the PowerShell version",
}
MARK = {CheckState.OK: ("✓", "green"), CheckState.FAILED: ("✗", "red"), CheckState.NOT_RUN: ("–", "dim")}


def hint_for(kind: str | None) -> str:
    if kind is None:
        return ""
    if kind in EXTRA_HINTS:
        return EXTRA_HINTS[kind]
    try:
        return HINTS.get(ErrorKind(kind), "")
    except ValueError:
        return ""


def run(args: argparse.Namespace) -> int:
    ui = Ui()
    inv = load_inventory(args.inventory)
    hosts = select_hosts(inv, args.limit)
    warnings = context.security_warnings(hosts)
    for warning in warnings:
        ui.warn(warning)
    passwords = context.winrm_passwords(hosts)
    require = (*CHECKS, SMOKE_CHECK) if args.tool_smoke else CHECKS
    with deferred():  # from here every Ctrl-C ends in the table and the --json document of what was probed
        with serving(inv), ui.fleet_progress("doctor", [h.name for h in hosts]) as progress:
            diagnoses, interrupted = run_doctor(
                hosts,
                passwords,
                require=require,
                events=RunnerEvents(on_state=progress.on_state, on_done=progress.on_done),
                smoke=args.tool_smoke,
            )
        code = exit_code(diagnoses, interrupted, require)
        render(ui, diagnoses, interrupted, require)
        if args.json:
            hints = [hint_for(_kind(d, require)) or None for d in diagnoses]
            document = doctor_json(diagnoses, require=require, interrupted=interrupted, warnings=warnings, hints=hints)
            print_result_json("doctor", document, code)
    return code


def exit_code(diagnoses: Sequence[Diagnosis], interrupted: bool, require: Sequence[str] = CHECKS) -> int:
    if interrupted:
        return 130
    return 1 if any(d.status(require) is Status.FAILED for d in diagnoses) else 0


def _kind(diagnosis: Diagnosis, require: Sequence[str] = CHECKS) -> str | None:
    cause = diagnosis.cause(require)
    return str(cause.kind) if cause and cause.kind else None


def _cell(check: CheckResult, probe: ProbeResult | None, auth: str | None) -> Text:
    mark, style = MARK[check.state]
    text = ""
    if check.state is CheckState.FAILED:
        text = str(check.kind or "")
    elif check.name == "authenticated":
        text = auth or ""  # the mechanism negotiated: kerberos, ntlm, basic
    elif probe and check.name == "tool":
        text = probe.tool_version or ""
    elif probe and check.name == "temp-space" and probe.temp_free_bytes is not None:
        text = format_bytes(probe.temp_free_bytes)
    elif probe and probe.smoke and check.name == "tool-input":
        text = probe.smoke.works or ""
    return Text(f"{mark} {text}".rstrip(), style=style)


def render(ui: Ui, diagnoses: Sequence[Diagnosis], interrupted: bool, require: Sequence[str] = CHECKS) -> None:
    rows = []
    for d in diagnoses:
        probe = d.probe
        role = " + ".join(str(r) for r in probe.roles) or "(none)" if probe else ""
        cells = [_cell(d.check(name), probe, d.auth) for name in require]
        rows.append([d.host.name, role, (probe.version or "") if probe else "", *cells])
    order = failures_first([_kind(d, require) for d in diagnoses], [str(d.status(require)) for d in diagnoses])
    columns = ["host", "roles", "version", *(COLUMNS[name] for name in require)]
    ui.table("doctor", columns, [rows[i] for i in order])
    by_kind: dict[str, list[str]] = {}
    for d in diagnoses:
        cause = d.cause(require)
        if d.status(require) is not Status.FAILED or cause is None:
            continue
        for failed in d.failures(require):
            ui.line(f"  {d.host.name}: {failed.name}: {failed.kind}: {failed.detail}", "red")
        by_kind.setdefault(str(cause.kind or ""), []).append(d.host.name)
    for kind, names in sorted(by_kind.items()):
        ui.line(f"{kind} ({len(names)}): {', '.join(names)}", "red")
        ui.line(f"  hint: {hint_for(kind)}")
    counts = status_counts(diagnoses, require)
    ok_hosts = [d for d in diagnoses if d.status(require) is Status.OK and d.probe]
    temp = min((d.probe.temp_free_bytes for d in ok_hosts if d.probe and d.probe.temp_free_bytes), default=None)
    ui.line(
        f"{counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped"
        + (f"; least free temp space {format_bytes(temp)}" if temp is not None else "")
        + (" (interrupted)" if interrupted else "")
    )
