"""``keyfleet run PLAYBOOK``: run a runbook's steps over the selected hosts and render every result."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from functools import partial

from rich.text import Text

from orchestrator.commands.confirm import ask_confirmation, require_terminal
from orchestrator.commands.doctor import hint_for
from orchestrator.console import STATUS_STYLE, Ui, failure_text, print_result_json
from orchestrator.emulation import serving
from orchestrator.inventory.loader import load_inventory
from orchestrator.inventory.model import HostConfig
from orchestrator.jobs import backup, context, identity
from orchestrator.jobs.playbook import PlaybookContext, PlaybookResult, PlaybookRun, StepResult
from orchestrator.jobs.playbook_schema import (
    Playbook,
    describe_plan,
    load_playbook,
    select_playbook_hosts,
)
from orchestrator.jobs.restore import RestoreRequest
from orchestrator.report.json import run_plan_json, run_result_json
from orchestrator.runner.interrupts import deferred, interruptible
from orchestrator.runner.pool import RunnerEvents
from orchestrator.share.store import BackupStore
from orchestrator.status import Status

# kinds only a playbook reports: coverage statuses of the audit step, a declined restore
RUN_HINTS = {
    "missing": "no intact backup on the share: back the server up (keyfleet backup --limit HOST)",
    "stale": "the newest backup is older than max_age or predates an SCSM version change: back it up again",
    "failing": "the latest backup attempt failed: see its run record and run keyfleet doctor on the server",
    "altered": "a key file or its manifest entry was changed: run keyfleet audit, then back the server up again",
    "lost": "a key file is gone from the share: run keyfleet audit, then back the server up again",
    "not-confirmed": "the restore was declined at the prompt; nothing was sent to the server",
}


def _hint(kind: str) -> str:
    return RUN_HINTS.get(kind) or hint_for(kind)


@contextmanager
def _progress(ui: Ui, title: str, hosts: list[str]) -> Iterator[RunnerEvents]:
    with ui.fleet_progress(title, hosts) as progress:
        yield RunnerEvents(on_state=progress.on_state, on_done=progress.on_done)


def run(args: argparse.Namespace) -> int:
    ui = Ui()
    playbook = load_playbook(args.playbook)
    inv = load_inventory(args.inventory)
    with ExitStack() as stack:
        store: BackupStore | None = None
        if playbook.needs_share:
            share = stack.enter_context(context.share_for(inv, args.share))
            context.require_share_folder(share, creatable=playbook.has("backup"), dry_run=args.check)
            store = context.open_store(
                inv, share, sign=playbook.has("backup") and not args.check, sign_records=not args.check
            )
        resolver = backup.last_failed_resolver(store) if store else None
        hosts = select_playbook_hosts(playbook, inv, args.limit, resolver)
        if args.check:
            print_plan(ui, playbook, hosts, store.share.url if store else None, as_json=args.json)
            return 0
        assume_yes = bool(getattr(args, "yes", False))
        if playbook.confirmations() and not assume_yes:
            require_terminal("pass --yes (or set `confirm: false` on the restore step) to run it unattended")
        password = context.backup_password(inv, new=playbook.backs_up) if playbook.needs_password else None
        if store is not None and playbook.has("backup"):
            context.probe_writable(store.share)
        if store is not None and password is not None:  # before any host: the password is its id's
            if playbook.has("backup"):
                identity.claim_identity(store, inv.backup.password_id, password)
            else:
                identity.check_password(store, inv.backup.password_id, password)
        touches = playbook.touches_servers
        warnings = context.security_warnings(hosts) if touches else []
        for warning in warnings:
            ui.warn(warning)
        winrm_passwords = context.winrm_passwords(hosts) if touches else {}
        share_left_open = stack.pop_all()  # closed below, inside the deferred section
    # from here every Ctrl-C ends in the steps' run records, the table and the --json document: a step
    # under way stops as a backup does, the steps after it are not run
    with deferred() as interrupts, share_left_open:
        ctx = PlaybookContext(
            inv=inv,
            store=store,
            password=password,
            winrm_passwords=winrm_passwords,
            progress=partial(_progress, ui),
            confirm=(lambda _request: True) if assume_yes else partial(_confirm, ui),
            interrupts=interrupts,
        )
        ui.line(f"playbook {playbook.name!r}: {len(playbook.steps)} step(s) on {len(hosts)} host(s)")
        with serving(inv) if touches else nullcontext():
            result = PlaybookRun(playbook, hosts, ctx).run()
        render(ui, result)
        if args.json:
            print_result_json("run", run_result_json(result, warnings), result.exit_code)
    return result.exit_code


def _confirm(ui: Ui, request: RestoreRequest) -> bool:
    """The restore step's prompt: Ctrl-C leaves it (the step ends interrupted) although the run defers."""
    with interruptible():
        return ask_confirmation(ui, request)


def print_plan(ui: Ui, playbook: Playbook, hosts: list[HostConfig], share_url: str | None, *, as_json: bool) -> None:
    for line in describe_plan(playbook, hosts, share_url):
        ui.line(line)
    if as_json:
        print_result_json("run", run_plan_json(playbook, hosts), 0)


def _cell(step: StepResult, host: str) -> Text:
    cell = step.cell(host)
    if cell is None:
        return Text("")
    if cell.status is Status.FAILED:
        return Text(f"✗ {cell.kind or 'failed'}", style="red")
    if cell.status is Status.SKIPPED:
        return Text("skipped", style="yellow" if step.status is not Status.SKIPPED else "dim")
    return Text("✓ covered" if step.step.name == "audit" else "✓ ok", style="green")


def render(ui: Ui, result: PlaybookResult) -> None:
    rows = [[h.name, str(h.role), *[_cell(s, h.name) for s in result.steps]] for h in result.hosts]
    ui.table(f"playbook {result.playbook.name}", ["host", "role", *[s.step.title for s in result.steps]], rows)
    for step in result.steps:
        style = STATUS_STYLE.get(step.status, "")
        ui.line(f"step {step.step.title}: {step.status}: {step.summary}", style)
        if step.run_record:
            ui.line(f"  run record {step.run_record}")
        for warning in step.warnings:
            ui.warn(warning)
    failures = result.failures()
    by_kind: dict[str, list[str]] = {}
    for step, cell in failures:
        ui.line(f"  {cell.host}: step {step.step.title}: {failure_text(cell.kind, cell.message)}", "red")
        by_kind.setdefault(cell.kind or "", []).append(cell.host)
    for kind, names in sorted(by_kind.items()):
        ui.line(f"{kind} ({len(names)}): {', '.join(names)}", "red")
        if _hint(kind):
            ui.line(f"  hint: {_hint(kind)}")
    code = result.exit_code
    verdict = {0: "ok", 1: "failed", 3: "INTEGRITY FAILURE", 130: "interrupted"}.get(code, "failed")
    failed = f"; failed: {', '.join(cell.host for _, cell in failures)}" if failures else ""
    ui.line(f"playbook {result.playbook.name!r}: {verdict} (exit {code}){failed}", "green" if code == 0 else "red")
