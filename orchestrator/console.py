"""Human output on stderr: live fleet progress, tables, failure hints; plain lines when not a TTY."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from orchestrator.errors import ErrorKind
from orchestrator.runner.pool import HostResult
from orchestrator.secret import mask
from orchestrator.status import Status

HINTS: dict[ErrorKind, str] = {
    ErrorKind.UNREACHABLE: "check the address and port, the WinRM listener (winrm quickconfig) and firewalls",
    ErrorKind.TIMEOUT: "the host or the tool is slow or hung; raise host_timeout/tool_timeout or check the server",
    ErrorKind.AUTH: "check the credential reference and that the account is a local administrator",
    ErrorKind.TLS: "check ca_bundle or cert_thumbprint against the listener certificate",
    ErrorKind.PROTOCOL: "the reply was malformed or cut; run keyfleet doctor and check the WinRM service",
    ErrorKind.HTTP: "the WinRM service answered with a server error; check its event log",
    ErrorKind.REMOTE: "the remote helper failed; run keyfleet doctor on this host",
    ErrorKind.NOT_ADMIN: "the WinRM account must be a local administrator to read the key",
    ErrorKind.TOOL_MISSING: "copy SecureStorageBackup.exe from the SCSM media (Tools\\SecureStorageBackup) "
    "and set tool_path",
    ErrorKind.NO_KEY_FILE: "no key file waits in the outbox: run the wizard (SecureStorageBackup.exe) on the server "
    "and save its key file there (collect --path names another folder)",
    ErrorKind.TOOL_FAILED: "SecureStorageBackup.exe failed; its output is in the run record",
    ErrorKind.TOOL_TIMEOUT: "SecureStorageBackup.exe did not finish; it may be waiting for interactive input "
    "(keyfleet doctor --tool-smoke tells; keyfleet collect takes keys made with the wizard)",
    ErrorKind.TOOL_INTERACTIVE: "this SecureStorageBackup.exe takes no typed password: run the wizard on the server "
    "(for a backup, keyfleet collect then takes its key file)",
    ErrorKind.CONSOLE_UNAVAILABLE: "no pseudo console before Windows Server 2019: set tool_input: stdin if the tool "
    "reads stdin, else run the wizard on the server (for a backup, keyfleet collect then takes its key file)",
    ErrorKind.CONSTRAINED_LANGUAGE: "AppLocker/WDAC script enforcement puts PowerShell in Constrained Language Mode; "
    "allow keyfleet's bootstrap (a publisher or path rule) or use an exempt administrator account",
    ErrorKind.REMOTE_SHELL_DISABLED: "Group Policy 'Allow Remote Shell Access' (Windows Remote Shell) is disabled on "
    "this server; enable it for the keyfleet account's servers",
    ErrorKind.DISK_FULL: "free space in the server's temp folder",
    ErrorKind.INTEGRITY: "the file received does not match the hash the server computed; retry and check the path",
    ErrorKind.ROLE_MISMATCH: "the server reports another SCSM role than the inventory; fix the inventory",
    ErrorKind.NAME_MISMATCH: "restore needs the same computer name as the backup",
    ErrorKind.SHARE: "check the backup share: reachable, writable, enough space",
    ErrorKind.CONFIG: "fix the inventory settings of this host",
    ErrorKind.INTERRUPTED: "the run was interrupted; run again (--limit @last-failed)",
    ErrorKind.INTERNAL: "a keyfleet bug: details are in the debug log",
}

STATUS_STYLE = {Status.OK: "green", Status.FAILED: "red", Status.SKIPPED: "yellow"}


def failure_text(kind: object, message: str | None) -> str:
    """``kind: message``, said once: a share error already starts with ``share ...``."""
    if kind is None:
        return message or ""
    if not message:
        return str(kind)
    return message if message.startswith(f"{kind} ") else f"{kind}: {message}"


def failures_first(kinds: Sequence[str | None], statuses: Sequence[str]) -> list[int]:
    """Row order for a result table: failures first, grouped by kind (alphabetical), then skipped, then ok;
    inventory order within each group."""
    rank = {"failed": 0, "skipped": 1}
    return sorted(range(len(statuses)), key=lambda i: (rank.get(str(statuses[i]), 2), str(kinds[i] or "")))


# The hint of each command-level error kind of a --json error document (README: "JSON output").
ERROR_HINTS = {
    "config": "fix what the message names (file, line, key or option); keyfleet inventory -i INV checks an inventory",
    "share": "check the share: its path or smb:// URL, its credential, that it is reachable and writable",
    "integrity": "the share was altered or is incomplete: run keyfleet audit and find out why before trusting it",
    "interrupted": "interrupted: nothing half-written is left; run it again (a backup: --limit @last-failed)",
    "failed": "see the message",
    "internal": "a keyfleet bug: details are in the debug log",
}
INTERRUPTED_ERROR = {
    "kind": "interrupted",
    "message": "interrupted by the operator",
    "hint": ERROR_HINTS["interrupted"],
}
_printed: list[int | None] = [None]  # the exit code of the --json document this process printed, if any


def print_json(document: object) -> None:
    """The one JSON document of ``--json`` on stdout; known secret values masked as a second net. A
    Ctrl-C while it is written waits for its end: a document is never cut, nor followed by another."""
    from orchestrator.runner.interrupts import deferred

    text = mask(json.dumps(document, indent=2)) + "\n"
    with deferred() as interrupts:
        _printed[0] = exit_code_of(document)
        # a second interrupt still ends a write that cannot finish (stdout a pipe no one reads)
        interrupts.raise_at = interrupts.count + 2
        try:
            _write_all(text)
        except KeyboardInterrupt:
            _printed[0] = 130  # cut by the operator: nothing more is written, and the exit says so
            # what is left in stdout's buffer would block the exit's flush on the same unread pipe
            with contextlib.suppress(OSError, ValueError):  # a stdout without a descriptor has no such pipe
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise
        finally:
            interrupts.raise_at = 0


def _write_all(text: str) -> None:
    """``text`` on stdout, every byte of it. A signal that arrives while a write to a pipe blocks makes
    write(2) return the part written (see write(2)); CPython's BufferedWriter then returns that count
    and TextIOWrapper drops the rest without a word, so the bytes are written in a loop until none is
    left."""
    sys.stdout.flush()
    stream = getattr(sys.stdout, "buffer", None)
    if stream is None:  # a text-only stream (a test's capture): it has no partial writes
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    left = memoryview(text.encode(sys.stdout.encoding or "utf-8", "replace"))
    while left:
        written = stream.write(left)
        left = left[written if written is not None else len(left) :]
    stream.flush()


def exit_code_of(document: object) -> int:
    """The exit code a printed document names (0 when it names none)."""
    code = document.get("exit_code") if isinstance(document, dict) else None
    return code if isinstance(code, int) else 0


def printed_exit_code() -> int | None:
    """The exit code of the --json document this process printed, or None before it printed one: once
    printed, the outcome is decided, and a Ctrl-C while the command cleans up does not change it."""
    return _printed[0]


def print_result_json(command: str, document: dict[str, object], exit_code: int) -> None:
    """A command's own --json document with the fields every document carries: ``command``,
    ``exit_code`` and ``error`` (null, or the interrupted error when a Ctrl-C ended the command)."""
    full: dict[str, object] = {"command": command, **document}  # first, whatever the document says
    full["command"], full["exit_code"] = command, exit_code
    if full.get("error") is None:
        full["error"] = INTERRUPTED_ERROR if exit_code == 130 else None
    print_json(full)


def print_error_json(command: str | None, kind: str, message: str, exit_code: int) -> None:
    """The --json document of a command that ended on an error before printing its own."""
    if _printed[0] is not None:
        return
    error = {"kind": kind, "message": message, "hint": ERROR_HINTS.get(kind, "")}
    print_json({"command": command, "exit_code": exit_code, "error": error, "outcomes": []})


class Ui:
    """Where human output goes. ``interactive`` is true on a terminal; otherwise plain lines."""

    def __init__(self, stream: Any = None, *, force_plain: bool = False) -> None:
        stream = stream or sys.stderr
        self.console = Console(file=stream, highlight=False, soft_wrap=False)
        self.interactive = self.console.is_terminal and not force_plain
        self._lock = threading.RLock()

    def line(self, text: str, style: str | None = None) -> None:
        with self._lock:  # worker threads report too: whole lines only
            if self.interactive:
                self.console.print(Text(mask(text), style=style or ""))
            else:
                stream = self.console.file
                stream.write(mask(text) + "\n")  # one write per line (print writes the newline apart)
                stream.flush()

    def warn(self, text: str) -> None:
        self.line(f"warning: {text}", "yellow")

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if self.interactive:
            table = Table(title=title, title_justify="left")
            for column in columns:
                table.add_column(column, overflow="fold")  # whole values (paths, hashes), never an ellipsis
            for row in rows:
                table.add_row(*[c if isinstance(c, Text) else Text(mask(str(c))) for c in row])
            self.console.print(table)
            return
        self.line(title)
        texts = [[mask(c.plain if isinstance(c, Text) else str(c)) for c in row] for row in rows]
        widths = [max([len(col)] + [len(r[i]) for r in texts]) for i, col in enumerate(columns)]
        self.line("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
        for row in texts:
            self.line("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())

    def failure_hints(self, results: Sequence[HostResult[Any]]) -> None:
        """One block per failure kind, in the order of ``failures_first``: the hosts, then one hint."""
        by_kind: dict[ErrorKind, list[str]] = {}
        for result in results:
            if result.status is Status.FAILED and result.kind is not None:
                by_kind.setdefault(result.kind, []).append(result.host.name)
        for kind, names in sorted(by_kind.items(), key=lambda item: str(item[0])):
            self.line(f"{kind} ({len(names)}): {', '.join(names)}", "red")
            self.line(f"  hint: {HINTS.get(kind, '')}")

    @contextmanager
    def fleet_progress(self, title: str, hosts: Sequence[str]) -> Iterator[FleetProgress]:
        progress = FleetProgress(self, title, hosts)
        if not self.interactive:
            self.line(f"{title}: {len(hosts)} host(s)")
            yield progress
            return
        # get_renderable: Live's own refresh (8 a second) renders anew, so events need not redraw it from
        # the worker threads, and the per-host timers tick between events
        with Live(console=self.console, refresh_per_second=8, transient=True, get_renderable=progress.render) as live:
            yield progress
            live.refresh()


class FleetProgress:
    """Live per-host state; thread-safe; plain mode prints one line per finished host."""

    def __init__(self, ui: Ui, title: str, hosts: Sequence[str]) -> None:
        self._ui = ui
        self._lock = threading.Lock()
        self._states: dict[str, tuple[str, float]] = {}
        self._total = len(hosts)
        self._done = 0
        self._started = time.monotonic()
        self._bar = Progress(
            TextColumn(f"[bold]{title}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        self._task = self._bar.add_task(title, total=self._total)

    def on_state(self, host: str, state: str) -> None:
        with self._lock:
            self._states[host] = (state, self._states.get(host, (state, time.monotonic()))[1])

    def on_done(self, result: HostResult[Any]) -> None:
        with self._lock:
            self._states.pop(result.host.name, None)
            self._done += 1
            self._bar.update(self._task, completed=self._done)
        detail = failure_text(result.kind, result.message) if result.status is not Status.OK else ""
        if not self._ui.interactive:
            self._ui.line(f"  {result.host.name}: {result.status} ({result.duration:.1f}s) {detail}".rstrip())
        elif result.status is Status.FAILED:  # at once, above the live display: not only in the final table
            self._ui.line(f"✗ {result.host.name} failed after {result.duration:.0f}s: {detail}", "red")

    def render(self) -> Group:
        with self._lock:
            active = sorted(self._states.items())
        table = Table.grid(padding=(0, 2))
        now = time.monotonic()
        for host, (state, since) in active[:20]:
            table.add_row(Text(host, style="cyan"), Text(state), Text(f"{now - since:4.0f}s", style="dim"))
        if len(active) > 20:
            table.add_row(Text(f"... {len(active) - 20} more running", style="dim"), Text(""), Text(""))
        return Group(self._bar, table)
