"""``keyfleet restore``: put a verified key back onto a rebuilt server, after confirmation."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from rich.text import Text

from orchestrator.commands.confirm import ask_confirmation, require_terminal
from orchestrator.console import STATUS_STYLE, Ui, failure_text, print_result_json
from orchestrator.emulation import serving
from orchestrator.errors import ErrorKind, KeyfleetError
from orchestrator.helpers import remote
from orchestrator.inventory.loader import load_inventory
from orchestrator.jobs import context, identity, restore
from orchestrator.report.json import restore_json
from orchestrator.runner.interrupts import deferred
from orchestrator.runner.pool import RunnerEvents, RunSummary
from orchestrator.share.manifest import format_iso
from orchestrator.share.runrecord import new_run_id


def run(args: argparse.Namespace) -> int:
    ui = Ui()
    inv = load_inventory(args.inventory)
    host = restore.find_host(inv, args.host)
    if not args.yes:
        require_terminal("pass --yes to restore without asking")
    share = context.share_for(inv, args.share)
    with share:
        context.require_share_folder(share)
        store = context.open_store(inv, share, sign=False, sign_records=True)
        request = restore.prepare_restore(store, host, args.entry)
        label_warning = restore.password_label_warning(inv, request)
        if label_warning:
            ui.warn(label_warning)
        if not args.yes and not ask_confirmation(ui, request):
            raise KeyfleetError("restore cancelled: not confirmed")
        password = context.backup_password(inv, new=False)
        identity.check_password(store, request.entry.password_id, password)  # exit 2 before the server is contacted
        for warning in context.security_warnings([host]):
            ui.warn(warning)
        winrm_password = context.winrm_passwords([host])[host.name]
        run_id, started = new_run_id(), datetime.now(UTC)
        with deferred():  # from here every Ctrl-C ends in a run record and the --json document
            with serving(inv), ui.fleet_progress("restore", [host.name]) as progress:
                summary = restore.run_restore(
                    request,
                    password,
                    winrm_password,
                    events=RunnerEvents(on_state=progress.on_state, on_done=progress.on_done),
                )
            record = restore.build_run_record(
                run_id=run_id, started=started, inv=inv, share_url=share.url, request=request, summary=summary
            )
            record_path, record = context.record_run(store, record, ui.warn)
            code = restore.exit_code(summary)
            render(ui, request, summary, record_path)
            if args.json:
                print_result_json("restore", restore_json(record, request, summary, record_path), code)
    return code


def render(
    ui: Ui, request: restore.RestoreRequest, summary: RunSummary[remote.RestoreResult], record_path: str | None
) -> None:
    entry = request.entry
    rows = []
    for result in summary.results:
        restored = result.value
        rows.append(
            [
                result.host.name,
                str(result.host.role),
                entry.id,
                format_iso(entry.created),
                Text(str(result.status), style=STATUS_STYLE.get(result.status, "")),
                restored.tool_output.splitlines()[-1] if restored and restored.tool_output else "",
                failure_text(result.kind, result.message),
            ]
        )
    ui.table("restore", ["host", "role", "entry", "taken", "status", "tool", "error"], rows)
    ui.failure_hints(summary.results)
    if any(r.kind is ErrorKind.TOOL_FAILED for r in summary.results):
        ui.line(
            f"  a wrong password is the usual cause: the key file opens only with the password backup "
            f"{entry.id} was taken with (label {entry.password_id!r})"
        )
    ok = all(r.value is not None for r in summary.results)
    ui.line(
        (f"restored {entry.id} onto {request.host.name}" if ok else f"{request.host.name}: restore failed")
        + (f"; run record {record_path}" if record_path else "")
    )
