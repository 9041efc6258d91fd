"""A thousand lab hosts backed up at forks 128, three times: no spurious failure (the transport is thread-safe)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.lab.bench import LabProcess
from tests.conftest import cli_env
from tests.loopback import ALLOCATOR

pytestmark = pytest.mark.e2e

HOSTS = 1000
FORKS = 128


@pytest.mark.slow
def test_a_thousand_hosts_at_forks_128_three_times_without_a_failure(tmp_path: Path):
    workdir = tmp_path / "scale"
    workdir.mkdir(mode=0o700)
    env = cli_env(tmp_path)
    with LabProcess(workdir, HOSTS, latency=0.0, base_address=ALLOCATOR.run(HOSTS), kdf="cheap") as lab:
        for round_ in range(3):
            argv = [sys.executable, "-m", "orchestrator", "backup", "-i", str(lab.inventory), "--json"]
            argv += ["--forks", str(FORKS), "--share", str(workdir / f"share-{round_}")]
            run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
            document = json.loads(run.stdout)
            failed = [o for o in document["outcomes"] if o["status"] != "ok"]
            assert failed == [], failed[:5]
            assert document["summary"] == {"ok": HOSTS, "failed": 0, "skipped": 0}
            assert run.returncode == 0, run.stderr[-2000:]
