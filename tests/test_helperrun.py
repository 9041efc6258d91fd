"""run_helper, the one way a job runs a helper on a host: typed results, phases, failures, and no other path."""

from __future__ import annotations

import ast
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import orchestrator
from orchestrator.errors import ErrorKind, HostFailure
from orchestrator.helpers import remote
from orchestrator.helpers.run import COLLECT, PROBE, SMOKE, run_helper
from orchestrator.inventory.loader import load_inventory
from orchestrator.inventory.model import HostConfig, Inventory
from orchestrator.lab.fleet import serving
from orchestrator.runner.pool import HostContext
from orchestrator.secret import Secret
from orchestrator.session.winrm import WinRMSession
from tests.conftest import make_lab_inventory

pytestmark = pytest.mark.lab  # its module fixture serves a lab fleet

PASSWORD = Secret("Lab-Test-Pw-1")
FLEET = {
    "H": {
        "ms01": {"role": "management_server"},
        "clm": {"role": "management_server", "lab": {"faults": ["constrained-language"]}},
    }
}
# what only the helper runner may touch: building the bootstrap and its stdin, and parsing a result
_PROTOCOL_NAMES = {"bootstrap_command_line", "build_stdin", "parse_result"} | {
    name for name in dir(remote) if name.startswith("parse_")
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Inventory]:
    inv = load_inventory(make_lab_inventory(tmp_path_factory.mktemp("helperrun"), fleet=FLEET).inventory)
    with serving(inv):
        yield inv


def _context(host: HostConfig, phases: list[str]) -> HostContext:
    return HostContext(host, time.monotonic() + 20, threading.Event(), report=phases.append)


def test_helpers_run_in_one_session_with_typed_results_and_every_phase_reported(lab: Inventory) -> None:
    host, phases = lab.hosts["ms01"], []
    ctx = _context(host, phases)
    with WinRMSession(host, PASSWORD) as session:
        probe = run_helper(ctx, session, PROBE, remote.probe_params(host.tool_path), None)
        assert phases == ["connecting", "authenticating", "running helper", "receiving"]
        smoke = run_helper(ctx, session, SMOKE, remote.smoke_params(probe.tool_path, 2), None)
    assert isinstance(probe, remote.ProbeResult) and probe.computer_name.upper() == "MS01"
    assert isinstance(smoke, remote.SmokeResult) and smoke.attempts
    # the second run reuses the logon: it reports the helper's phases only (doctor's smoke test shows them now)
    assert phases[4:] == ["running helper", "receiving"]


def test_a_helper_failure_is_a_host_failure_with_its_kind(lab: Inventory) -> None:
    host, phases = lab.hosts["clm"], []
    with WinRMSession(host, PASSWORD) as session, pytest.raises(HostFailure) as failure:
        run_helper(_context(host, phases), session, COLLECT, remote.collect_params(remote.DEFAULT_OUTBOX), None)
    assert failure.value.kind is ErrorKind.CONSTRAINED_LANGUAGE and failure.value.host == "clm"
    assert "running helper" in phases  # collect reports its progress like every other job


def test_only_the_helper_runner_builds_requests_or_parses_results() -> None:
    """Every job (backup, restore, doctor, collect) runs its helpers through run_helper."""
    package = Path(orchestrator.__file__).parent
    allowed = {package / "helpers" / "remote.py", package / "helpers" / "run.py"}
    offenders = []
    for path in sorted(package.rglob("*.py")):
        if path in allowed or "lab" in path.relative_to(package).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            name = node.attr if isinstance(node, ast.Attribute) else node.name if isinstance(node, ast.alias) else None
            if name in _PROTOCOL_NAMES:
                offenders.append(f"{path.relative_to(package)}:{node.lineno}: {name}")
    assert not offenders, "run helpers with orchestrator.helpers.run.run_helper:\n" + "\n".join(offenders)
