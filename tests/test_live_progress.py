"""Live progress tells the truth, on a real pseudo-terminal: per-host timers tick, states follow the session's
real phases, a failed host is shown at once with its kind, and the final table puts failures first by kind."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CliRun, LabFiles, cli_env, make_lab_inventory
from tests.test_tty import Terminal

FLEET = {
    "LIVE": {
        "l-slow01": {"role": "management_server"},
        "l-tool01": {"role": "dw_management_server"},
        "l-down01": {"role": "self_service_portal"},
        "l-ok01": {"role": "management_server"},
        "l-tool02": {"role": "dw_management_server"},
    }
}
FAULTS = {"l-slow01": ["latency:0.7"], "l-tool01": ["tool-failing"], "l-tool02": ["tool-failing"], "l-down01": ["down"]}
# failures first, grouped by kind in alphabetical order, then the others in inventory order
ORDER = ["l-tool01", "l-tool02", "l-down01", "l-slow01", "l-ok01"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.mark.e2e
def test_live_display_follows_phases_ticks_and_reports_failures_at_once(tmp_path: Path) -> None:
    lab = make_lab_inventory(tmp_path / "lab", fleet=FLEET, faults=FAULTS, defaults={"retries": 0})
    env = cli_env(tmp_path, {"TERM": "xterm-256color", "COLUMNS": "160", "LINES": "50"})
    term = Terminal(["backup", "-i", str(lab.inventory)], env)
    term.read_until(b"l-tool01 failed after", timeout=60)
    pid, _ = os.waitpid(term.pid, os.WNOHANG)
    assert pid == 0  # shown while the slow host still works, not only in the final table
    assert term.wait() == 1
    screen = ANSI.sub("", term.output.decode(errors="replace"))
    assert re.search(r"l-tool01 failed after \d+s: tool-failed: ", screen)
    assert re.search(r"l-down01 failed after \d+s: unreachable: connection refused", screen)
    # the slow host went through every phase of the session, its own timer counting up
    slow = [
        m.groups()
        for m in re.finditer(r"l-slow01\s+(connecting|authenticating|running helper|storing)\s+(\d+)s", screen)
    ]
    phases = [phase for phase, _ in slow]
    for phase in ("authenticating", "running helper"):
        assert phase in phases, phases
    assert phases.index("authenticating") < phases.index("running helper")
    seconds = [int(s) for _, s in slow]
    assert max(seconds) >= 2 and seconds == sorted(seconds)  # ticks, and never goes back
    # the final table: failures first, grouped by kind, one hint per kind
    table = screen[screen.index("backup 20") :]
    assert re.findall(r"^\S*\s*(l-[a-z]+\d\d)\s", table, re.M)[:5] == ORDER
    assert table.count("hint:") == 2
    assert "tool-failed (2): l-tool01, l-tool02" in table and "unreachable (1): l-down01" in table


def test_plain_table_orders_failures_first_by_kind(
    lab_inventory: Callable[..., LabFiles], keyfleet: Callable[..., CliRun]
) -> None:
    lab = lab_inventory(
        fleet=FLEET, faults={k: v for k, v in FAULTS.items() if k != "l-slow01"}, defaults={"retries": 0}
    )
    run = keyfleet("backup", "-i", str(lab.inventory))
    assert run.returncode == 1
    lines = run.stderr[run.stderr.index("backup 20") :].splitlines()
    assert [line.split()[0] for line in lines[2:7]] == ORDER
    hints = lines[7:]
    assert hints[0].startswith("tool-failed (2): l-tool01, l-tool02") and hints[1].startswith("  hint: ")
    assert hints[2].startswith("unreachable (1): l-down01") and hints[3].startswith("  hint: ")
