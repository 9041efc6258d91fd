"""What an operator at a terminal sees: the hidden password prompt (asked twice) and live progress."""

from __future__ import annotations

import os
import pty
import select
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import LAB_SIGNING, cli_env, make_lab_inventory
from tests.share_history import read_share

pytestmark = pytest.mark.e2e


class Terminal:
    """The real CLI on a pseudo-terminal: read what it shows, type answers."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.output = b""
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: become keyfleet
            os.execve(sys.executable, [sys.executable, "-m", "orchestrator", *args], env)

    def read_until(self, text: bytes, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            screen = self.output.decode(errors="replace")
            assert time.monotonic() < deadline, f"{text!r} not shown; screen so far:\n{screen}"
            if not self._read(0.2):
                break
        assert text in self.output, self.output.decode(errors="replace")

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._read(0.2)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                while self._read(0.1):
                    pass
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        raise AssertionError("keyfleet did not exit")

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:
            return False
        self.output += chunk
        return bool(chunk)


def prompting_lab(tmp_path: Path):
    lab = make_lab_inventory(tmp_path / "lab")
    text = lab.inventory.read_text().replace("  password: Lab-Backup-Test-1\n", "")
    lab.inventory.write_text(text)
    return lab


def test_backup_password_prompt_is_hidden_and_asked_twice(tmp_path):
    lab = prompting_lab(tmp_path)
    env = cli_env(tmp_path, {"TERM": "xterm"})
    term = Terminal(["backup", "-i", str(lab.inventory), "--limit", "t-ms01", "--json"], env)
    term.read_until(b"backup password: ")
    term.type("Typed-Password-1\n")
    term.read_until(b"backup password (again): ")
    term.type("Typed-Password-1\n")
    assert term.wait() == 0, term.output.decode(errors="replace")
    assert b"Typed-Password-1" not in term.output  # never echoed
    manifest = read_share(lab.share, LAB_SIGNING["public_key"])
    assert [e["host"] for e in manifest["entries"]] == ["t-ms01"]


def test_two_different_entries_are_refused_before_any_host_is_touched(tmp_path):
    lab = prompting_lab(tmp_path)
    term = Terminal(["backup", "-i", str(lab.inventory)], cli_env(tmp_path, {"TERM": "xterm"}))
    term.read_until(b"backup password: ")
    term.type("Typed-Password-1\n")
    term.read_until(b"(again): ")
    term.type("Typed-Password-2\n")
    assert term.wait() == 2
    assert b"the two entries differ" in term.output
    assert not lab.journal.exists()


def test_live_progress_and_table_on_a_terminal(tmp_path):
    lab = make_lab_inventory(tmp_path / "lab")
    env = cli_env(tmp_path, {"TERM": "xterm-256color", "COLUMNS": "160", "LINES": "50"})
    term = Terminal(["backup", "-i", str(lab.inventory)], env)
    assert term.wait() == 0, term.output.decode(errors="replace")
    screen = term.output.decode(errors="replace")
    assert "\x1b[" in screen  # colour and cursor control: the rich display, not plain lines
    assert "━" in screen or "─" in screen  # the table's rules
    for host in ("t-ms01", "t-dw01", "d-portal01"):
        assert host in screen
    assert "6 ok, 0 failed, 0 skipped" in screen


def test_restore_asks_before_replacing_a_key(tmp_path):
    from orchestrator.inventory.loader import load_inventory
    from orchestrator.lab.fleet import lab_machine

    lab = make_lab_inventory(tmp_path / "lab")
    env = cli_env(tmp_path, {"TERM": "xterm"})
    backup = Terminal(["backup", "-i", str(lab.inventory), "--limit", "t-dw01"], env)
    assert backup.wait() == 0, backup.output.decode(errors="replace")
    machine = lab_machine(load_inventory(lab.inventory), "t-dw01")
    original = machine.current_key()
    machine.rebuild()
    rebuilt = machine.current_key()

    declined = Terminal(["restore", "-i", str(lab.inventory), "--host", "t-dw01"], env)
    declined.read_until(b"Type yes to restore: ")
    declined.type("no\n")
    assert declined.wait() == 1
    assert machine.current_key() == rebuilt  # nothing was sent to the server

    confirmed = Terminal(["restore", "-i", str(lab.inventory), "--host", "t-dw01"], env)
    confirmed.read_until(b"Type yes to restore: ")
    confirmed.type("yes\n")
    assert confirmed.wait() == 0, confirmed.output.decode(errors="replace")
    assert machine.current_key() == original
