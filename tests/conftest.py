"""Shared fixtures: lab inventories written per test, and running the real CLI in a subprocess."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.secretrefs import clear_cache
from tests.loopback import ALLOCATOR, LoopbackAllocator

REPO = Path(__file__).resolve().parent.parent
LAB_SIGNING = {  # a test-only Ed25519 key pair (base64 of the raw 32-byte keys)
    "private_key": "WWN8g2cNQuG3MPbRgK3OnHHlUQNrT6O+w1GzuYqCa5A=",
    "public_key": "p+cFR4P8khEH6aaruYRlc8pEsV5nv8cMBsE1yDQsozc=",
}
# A small fleet covering both groups, all roles and every auth mode the lab serves.
SMALL_FLEET: dict[str, dict[str, Any]] = {
    "TEST-PROD": {
        "t-ms01": {"role": "management_server"},
        "t-dw01": {"role": "dw_management_server"},
        "t-portal01": {"role": "self_service_portal", "scheme": "https", "transport": "basic", "ca_bundle": "lab"},
    },
    "TEST-DEV": {
        "d-ms01": {"role": "management_server", "scheme": "https", "transport": "ntlm", "ca_bundle": "lab"},
        "d-dw01": {"role": "dw_management_server", "scheme": "https", "transport": "basic", "ca_bundle": "lab"},
        "d-portal01": {"role": "self_service_portal"},
    },
}


@dataclass
class LabFiles:
    inventory: Path
    share: Path
    state: Path

    @property
    def journal(self) -> Path:
        return self.state / "journal.jsonl"


def make_lab_inventory(
    root: Path,
    *,
    fleet: dict[str, dict[str, Any]] | None = None,
    faults: dict[str, list[str]] | None = None,
    defaults: dict[str, Any] | None = None,
    backup: dict[str, Any] | None = None,
    winrm_password: str = "Lab-Test-Pw-1",
    lab: dict[str, Any] | None = None,
) -> LabFiles:
    """Write a lab inventory under ``root`` with its own loopback addresses (tests/loopback.py), share and state."""
    fleet = fleet or SMALL_FLEET
    first = ipaddress.IPv4Address(ALLOCATOR.run(max(1, sum(map(len, fleet.values())))))
    groups: dict[str, Any] = {}
    index = 0
    for group, hosts in fleet.items():
        entries = {}
        for name, settings in hosts.items():
            host = {"address": str(first + index), **settings}
            if faults and name in faults:
                host["lab"] = {**host.get("lab", {}), "faults": faults[name]}
            entries[name] = host
            index += 1
        groups[group] = {"hosts": entries}
    document = {
        "lab": {"serve": True, "state_dir": "lab-state", "seed": 1, **(lab or {})},
        "share": {"url": "share"},
        "backup": {"password": "Lab-Backup-Test-1", "password_id": "test-1", "max_age": "30d", **(backup or {})},
        "signing": dict(LAB_SIGNING),
        "defaults": {
            "scheme": "http",
            "transport": "ntlm",
            "credential": {"username": "LAB\\keyfleet", "password": winrm_password},
            "connect_timeout": "2s",
            "operation_timeout": "2s",
            "host_timeout": "20s",
            "retries": 1,
            "tool_timeout": "2s",
            **(defaults or {}),
        },
        "management_groups": groups,
    }
    root.mkdir(parents=True, exist_ok=True)
    inventory = root / "inventory.yml"
    inventory.write_text(yaml.safe_dump(document, sort_keys=False))
    return LabFiles(inventory, root / "share", root / "lab-state")


TIERS = ("unit", "lab", "e2e")
# what makes a test need the emulated fleet, Samba or a KDC (fixtures, found in a test's fixture closure)
LAB_FIXTURES = frozenset({"lab_inventory", "loopback", "smbd_server"})


def tiers_of(item: pytest.Item) -> list[str]:
    """The tier markers on ``item`` (its own, its class's and its module's)."""
    return sorted({mark.name for mark in item.iter_markers() if mark.name in TIERS})


@pytest.hookimpl(tryfirst=True)  # before -m deselects by tier
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every test without an explicit tier one by its fixtures: the ``keyfleet`` command together with a
    lab is ``e2e``, a lab alone ``lab``, anything else ``unit``. A test that starts a lab without these fixtures
    (a module fixture calling make_lab_inventory or LabFleet) carries its tier explicitly."""
    for item in items:
        if tiers_of(item):
            continue
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & LAB_FIXTURES:
            item.add_marker("e2e" if "keyfleet" in fixtures else "lab")
        else:
            item.add_marker("unit")


@pytest.fixture(scope="session")
def loopback() -> LoopbackAllocator:
    """This worker's allocator of lab loopback addresses (tests/loopback.py): never hard-code one."""
    return ALLOCATOR


@pytest.fixture
def lab_inventory(tmp_path: Path) -> Callable[..., LabFiles]:
    def make(**kwargs: Any) -> LabFiles:
        return make_lab_inventory(tmp_path / "lab", **kwargs)

    return make


@pytest.fixture(autouse=True)
def _private_controller_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test is its own controller: the generations it saw never leak into ~/.local/state."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("controller-state")))


@pytest.fixture(autouse=True)
def _fresh_secret_cache() -> Iterator[None]:
    clear_cache()
    yield
    clear_cache()


@dataclass
class CliRun:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def cli_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYFLEET_")}
    env.update({"HOME": str(home), "COLUMNS": "200", "PYTHONPATH": str(REPO)})
    env.update(extra or {})
    return env


@pytest.fixture
def keyfleet(tmp_path: Path) -> Callable[..., CliRun]:
    """Run ``python -m orchestrator ARGS`` as a user would; HOME is private to the test."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path | None = None) -> CliRun:
        argv = [sys.executable, "-m", "orchestrator", *args]
        proc = subprocess.run(
            argv,
            env=cli_env(home, env),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd or tmp_path,
            stdin=subprocess.DEVNULL,
        )
        return CliRun(argv, proc.returncode, proc.stdout, proc.stderr)

    run.home = home  # type: ignore[attr-defined]
    return run
