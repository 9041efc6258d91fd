"""Ctrl-C at any instant of a backup: exit 130, the --json document, a run record that lists exactly
what the manifest holds, and no temporary file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.inventory.loader import load_inventory
from orchestrator.jobs.context import open_store
from orchestrator.lab.fleet import serving
from orchestrator.share.local import LocalShare
from tests.conftest import cli_env, make_lab_inventory

pytestmark = pytest.mark.e2e

FLEET = {"SW": {f"sw{i:02d}": {"role": "management_server"} for i in range(1, 7)}}
OFFSETS = [i * 0.05 for i in range(41)]  # seconds after keyfleet started: 0 to 2 s
AT_ONCE = 4


def keyfleet_started(pid: int) -> bool:
    """Whether keyfleet's own code runs: it has opened its debug log (the first thing main() does
    after parsing). Before, a signal meets the interpreter's start-up, which no program can handle."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return True  # exited already
    for fd in fds:
        try:
            if os.readlink(fd).endswith("debug.log"):
                return True
        except OSError:
            continue  # closed while listed
    return False


def interrupted_backup(argv: list[str], env: dict[str, str], offset: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not keyfleet_started(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(offset)
    proc.send_signal(signal.SIGINT)
    return proc


@pytest.mark.slow
def test_sigint_at_every_instant_keeps_record_manifest_and_json_in_step(tmp_path):
    lab = make_lab_inventory(tmp_path / "lab", fleet=FLEET, faults={h: ["latency:0.05"] for h in FLEET["SW"]})
    inv = load_inventory(lab.inventory)
    documents: list[dict] = []
    with serving(inv):
        doc = yaml.safe_load(lab.inventory.read_text())
        doc["lab"]["serve"] = False  # one lab for every run, served by this process
        # four backups at once against a lab served by this process, beside other tests under xdist:
        # deadlines the machine's load cannot reach, so every run ends by its signal or by finishing
        doc["defaults"].update(connect_timeout="10s", operation_timeout="30s", host_timeout="90s")
        shared = lab.inventory.with_name("shared.yml")
        shared.write_text(yaml.safe_dump(doc, sort_keys=False))
        argv = [sys.executable, "-m", "orchestrator", "backup", "-i", str(shared), "--forks", "2", "--json"]
        env = cli_env(tmp_path)
        for start in range(0, len(OFFSETS), AT_ONCE):
            procs = [(o, interrupted_backup(argv, env, o)) for o in OFFSETS[start : start + AT_ONCE]]
            for offset, proc in procs:
                stdout, stderr = proc.communicate(timeout=120)
                assert proc.returncode in (130, 0), (offset, proc.returncode, stderr, stdout)
                assert "Traceback" not in stderr, (offset, stderr)
                document = json.loads(stdout)  # exactly one document, on every path
                assert document["exit_code"] == proc.returncode, (offset, document)
                if proc.returncode == 130:
                    assert document["error"]["kind"] == "interrupted", (offset, document)
                documents.append(document)

    store = open_store(inv, LocalShare(lab.share), sign=False)
    manifest = store.load_manifest(verify=True)
    records = {r.run_id: r for r in store.run_records()}
    stored: dict[str, set[str]] = {}
    for entry in manifest.entries:
        stored.setdefault(entry.run_id, set()).add(entry.host)
    for document in documents:
        if "run_id" not in document:  # interrupted before the run began: nothing was touched
            assert document["outcomes"] == []
            continue
        record = records[document["run_id"]]
        ok = {o.host for o in record.outcomes if o.status == "ok"}
        assert ok == {o["host"] for o in document["outcomes"] if o["status"] == "ok"}
        assert ok == stored.get(document["run_id"], set()), document["run_id"]
        assert len(record.outcomes) == len(FLEET["SW"])
    assert set(stored) <= set(records)  # no key file in the manifest without the record of its run
    # the sweep covered both regimes, whatever the machine's load stretched start-up to: signals before the
    # run began (nothing touched) and signals in the run (a record, keys committed or not)
    mid_run = sum(1 for d in documents if "run_id" in d)
    assert mid_run >= len(OFFSETS) // 5 and len(documents) - mid_run >= 1, mid_run
    assert not [p for p in lab.share.rglob("*") if ".tmp-" in p.name]
    assert not list((lab.share / "runs").glob("*.running"))  # every run that marked itself wrote its record


_DROPPED = """
import weakref
from orchestrator.runner.interrupts import install
interrupts = install()
class Thing: pass
for error in (KeyboardInterrupt, ValueError):
    thing = Thing()
    def callback(ref, error=error):  # as importlib's module-lock callback, where a Ctrl-C can land
        raise error("from a callback")
    ref = weakref.ref(thing, callback)
    del thing
print("ran on")
"""


def test_an_interrupt_cpython_drops_in_a_callback_prints_no_traceback():
    """A Ctrl-C raised inside a callback CPython cannot propagate from is counted (the run acts on it)
    and not printed as "Exception ignored ... Traceback"; any other dropped exception still is."""
    run = subprocess.run([sys.executable, "-c", _DROPPED], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "ran on" in run.stdout, run.stderr
    assert "KeyboardInterrupt" not in run.stderr, run.stderr
    assert "ValueError: from a callback" in run.stderr  # the default hook, for everything else
