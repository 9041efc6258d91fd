"""Ctrl-C at the instants a sweep of delays rarely hits, for every command with --json: a real SIGINT,
sent by the keyfleet process to itself at an exact point (just before a function the command calls), so
each case is deterministic. Whatever the point: one whole --json document, exit 130 when the command
stopped early, a run record for every change the share took, and no run marker left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.errors import ErrorKind
from tests.conftest import LAB_SIGNING, LabFiles, cli_env, make_lab_inventory
from tests.share_history import read_share

pytestmark = pytest.mark.e2e

FLEET = {"IP": {"ip-ms01": {"role": "management_server"}, "ip-dw01": {"role": "dw_management_server"}}}

_RUN = """
import importlib, os, signal, sys

def interrupt_before(module, name, returned=None):
    # SIGINT just before each call of module.name; with returned=N, instead just after call N returns
    owner = importlib.import_module(module)
    owner_name, _, attribute = name.rpartition(".")
    if owner_name:
        owner = getattr(owner, owner_name)
    real = getattr(owner, attribute)
    calls = [0]

    def patched(*args, **kwargs):
        calls[0] += 1
        if returned is None:
            os.kill(os.getpid(), signal.SIGINT)
        result = real(*args, **kwargs)
        if calls[0] == returned:
            os.kill(os.getpid(), signal.SIGINT)
        return result

    setattr(owner, attribute, patched)

{setup}
sys.argv = ["keyfleet", *{argv!r}]
from orchestrator.cli import main
raise SystemExit(main())
"""


def run_interrupted(tmp_path: Path, setup: str, *argv: str) -> subprocess.CompletedProcess[str]:
    code = _RUN.format(setup=setup, argv=list(argv))
    return subprocess.run(
        [sys.executable, "-c", code], env=cli_env(tmp_path / "home"), capture_output=True, text=True, timeout=120
    )


def one_document(run: subprocess.CompletedProcess[str]) -> dict:
    assert "Traceback" not in run.stderr, run.stderr
    document = json.loads(run.stdout)  # exactly one document, whole
    assert document["exit_code"] == run.returncode, document
    return document


def backed_up_twice(tmp_path: Path, keyfleet) -> LabFiles:
    lab = make_lab_inventory(tmp_path / "lab", fleet=FLEET)
    for _ in range(2):
        assert keyfleet("backup", "-i", str(lab.inventory)).returncode == 0
    return lab


def markers(lab: LabFiles) -> list[Path]:
    return list((lab.share / "runs").glob("*.running"))


def test_prune_interrupted_after_its_commit_still_writes_its_record(tmp_path, keyfleet):
    """The prune's commit is made: its record must list what it removed, its marker must go; the
    outcome was decided, so it is reported as it is (exit 0)."""
    lab = backed_up_twice(tmp_path, keyfleet)
    setup = 'interrupt_before("orchestrator.commands.prune", "record_run")'
    run = run_interrupted(tmp_path, setup, "prune", "-i", str(lab.inventory), "--keep", "1", "--json")
    document = one_document(run)
    assert run.returncode == 0 and document["error"] is None, document
    assert document["command"] == "prune" and document["applied"] is True
    assert len([d for d in document["decisions"] if d["action"] == "remove"]) == 2
    records = [json.loads(p.read_text()) for p in (lab.share / "runs").glob("*.json")]
    (prune,) = [r for r in records if r["command"] == "prune"]
    assert len(prune["outcomes"]) == 2
    assert markers(lab) == []
    assert len(read_share(lab.share, LAB_SIGNING["public_key"])["entries"]) == 2


def test_prune_interrupted_before_its_commit_removes_nothing(tmp_path, keyfleet):
    lab = backed_up_twice(tmp_path, keyfleet)
    setup = 'interrupt_before("orchestrator.commands.prune", "mark_run_started", returned=1)'
    run = run_interrupted(tmp_path, setup, "prune", "-i", str(lab.inventory), "--keep", "1", "--json")
    document = one_document(run)
    assert run.returncode == 130 and document["error"]["kind"] == "interrupted", document
    assert document["applied"] is False
    assert not [p for p in (lab.share / "runs").glob("*.json") if json.loads(p.read_text())["command"] == "prune"]
    assert markers(lab) == []
    assert len(read_share(lab.share, LAB_SIGNING["public_key"])["entries"]) == 4


def test_doctor_interrupted_as_its_document_is_written_prints_it_once(tmp_path):
    lab = make_lab_inventory(tmp_path / "lab", fleet=FLEET)
    setup = 'interrupt_before("sys", "stdout.write")'
    run = run_interrupted(tmp_path, setup, "doctor", "-i", str(lab.inventory), "--json")
    document = one_document(run)
    assert document["command"] == "doctor" and len(document["hosts"]) == 2
    assert run.returncode == 0 and document["error"] is None  # the outcome was decided: the interrupt came late


_HALF_WRITTEN = """
import io


class HalfThenSignal(io.RawIOBase):
    # stdout whose first write stops half-way as a signal lands: what write(2) does to a blocked pipe write
    interrupted = False

    def writable(self):
        return True

    def write(self, data):
        data = bytes(data)
        if not HalfThenSignal.interrupted and len(data) > 1:
            HalfThenSignal.interrupted = True
            half = len(data) // 2
            os.write(1, data[:half])
            os.kill(os.getpid(), signal.SIGINT)
            return half
        os.write(1, data)
        return len(data)


sys.stdout = io.TextIOWrapper(io.BufferedWriter(HalfThenSignal()), encoding="utf-8")
"""


def test_an_interrupt_in_the_middle_of_a_document_neither_cuts_it_nor_adds_another(tmp_path):
    lab = make_lab_inventory(tmp_path / "lab", fleet=FLEET)
    run = run_interrupted(tmp_path, _HALF_WRITTEN, "inventory", "-i", str(lab.inventory), "--json")
    document = one_document(run)
    assert document["command"] == "inventory" and run.returncode == 0 and document["error"] is None


def test_restore_interrupted_after_the_server_took_its_key_records_it(tmp_path, keyfleet):
    lab = backed_up_twice(tmp_path, keyfleet)
    setup = 'interrupt_before("orchestrator.jobs.restore", "build_run_record")'
    run = run_interrupted(tmp_path, setup, "restore", "-i", str(lab.inventory), "--host", "ip-ms01", "--yes", "--json")
    document = one_document(run)
    assert run.returncode == 0 and document["server"] is not None, document  # the restore was done
    record = json.loads((lab.share / document["run_record"]).read_text())
    assert record["command"] == "restore" and record["outcomes"][0]["status"] == "ok"
    assert document["error"] is None


def test_a_runbook_interrupted_between_steps_reports_the_steps_it_ran(tmp_path):
    lab = make_lab_inventory(tmp_path / "lab", fleet=FLEET)
    playbook = tmp_path / "pb.yml"
    playbook.write_text("name: nightly\nsteps:\n  - backup\n  - audit\n")
    # the signal as the first step ends: its record is written, the second must not start
    setup = 'interrupt_before("orchestrator.jobs.playbook", "PlaybookRun._step", returned=1)'
    run = run_interrupted(tmp_path, setup, "run", str(playbook), "-i", str(lab.inventory), "--json")
    document = one_document(run)
    assert run.returncode == 130 and document["error"]["kind"] == "interrupted", document
    first, second = document["steps"]
    assert first["status"] == "ok" and second["status"] == "skipped", document["steps"]
    (record,) = document["run_records"]
    assert (lab.share / record).is_file() and markers(lab) == []


def test_an_interrupt_while_the_command_line_loads_gives_the_document(tmp_path):
    """``python -m orchestrator``: a Ctrl-C while the command line module itself imports."""
    finder = """
class Interrupting:
    def find_spec(self, name, path=None, target=None):
        if name == "orchestrator.errors" and self in sys.meta_path:
            sys.meta_path.remove(self)  # once
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, Interrupting())
import runpy
sys.argv = ["keyfleet", "inventory", "-i", "nothing.yml", "--json"]
runpy.run_module("orchestrator", run_name="__main__")
"""
    code = _RUN.split("{setup}")[0] + finder
    run = subprocess.run(
        [sys.executable, "-c", code], env=cli_env(tmp_path), capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 130, run.stderr
    document = one_document(run)
    assert document["error"]["kind"] == "interrupted" and document["outcomes"] == []
    assert document["command"] is None  # the command line was not read yet


def test_an_interrupt_counted_before_the_runner_starts_starts_no_host(tmp_path):
    """A Ctrl-C while a command waits before its run (the share's lock, the lab starting) is only counted;
    the runner then starts no host, not even the first worker's."""
    from orchestrator.inventory.loader import load_inventory
    from orchestrator.runner.interrupts import deferred
    from orchestrator.runner.pool import Runner

    hosts = list(load_inventory(make_lab_inventory(tmp_path / "lab", fleet=FLEET).inventory).hosts.values())
    ran: list[str] = []
    with deferred() as interrupts:
        os.kill(os.getpid(), signal.SIGINT)
        assert interrupts.changed.wait(5) and interrupts.count == 1
        summary = Runner(lambda ctx: ran.append(ctx.host.name), forks=2).run(hosts)
    assert ran == [] and summary.interrupted
    assert {r.kind for r in summary.results} == {ErrorKind.INTERRUPTED}


_PIPE_WRITE = ("pipe_write", "anon_pipe_write")  # where the kernel shows a process blocked writing to a pipe


def test_a_second_interrupt_ends_a_document_no_one_reads(tmp_path):
    """stdout a pipe no one reads: the document's write blocks. A first Ctrl-C waits for it (a document
    is never cut for one), a second ends it: exit 130, nothing more written."""
    line = "      h{0:04d}: {{role: management_server, address: 10.1.{1}.{2}}}"
    hosts = "\n".join(line.format(i, i // 250, i % 250 + 1) for i in range(2000))
    inventory = tmp_path / "big.yml"
    inventory.write_text(
        "defaults:\n  credential: {username: 'CORP\\\\svc', password: 'env:KF_BIG_PW'}\n"
        f"management_groups:\n  G:\n    hosts:\n{hosts}\n"
    )  # its --json document is about 1.5 MB: far more than a pipe holds
    env = cli_env(tmp_path / "home", {"KF_BIG_PW": "not-used-here"})
    argv = [sys.executable, "-m", "orchestrator", "inventory", "-i", str(inventory), "--json"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while Path(f"/proc/{proc.pid}/wchan").read_text() not in _PIPE_WRITE and time.monotonic() < deadline:
            time.sleep(0.05)  # blocked writing the document into the full pipe
        proc.send_signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1)  # the first waits for the write
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 130
        assert "Traceback" not in proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.wait()
