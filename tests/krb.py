"""Kerberos test helpers: the MIT KDC requirement (skip locally, fail under CI=true), lab inventories whose
lab runs its own KDC, and a lab served by the test process so keyfleet can be run against it with a
different credential, a stopped KDC or a skewed clock."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.inventory.loader import load_inventory
from orchestrator.lab import kdc
from orchestrator.lab.fleet import LabFleet, serving
from tests.conftest import LabFiles, make_lab_inventory

WINRM_PASSWORD = "Lab-Krb-Test-Pw-1"
KRB_DEFAULTS = {"transport": "kerberos", "domain": "lab.test"}
FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def require(what: str = "MIT Kerberos (krb5kdc)", reason: str | None = None) -> None:
    """Skip when the KDC (or ``reason``) is missing; under CI=true the test fails instead."""
    reason = reason or kdc.missing_requirement()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but the Kerberos tests cannot run: {what}: {reason}")
    pytest.skip(f"Kerberos tests skipped: {reason}")


def require_faketime() -> None:
    require("libfaketime", None if FAKETIME.exists() else "libfaketime is not installed (bash .ci/setup kerberos)")


def kerberos_lab(root: Path, fleet: dict[str, dict[str, Any]], **kwargs: Any) -> LabFiles:
    """A lab inventory (serve: true) whose lab also runs a KDC; hosts authenticate with Kerberos by default."""
    defaults = {**KRB_DEFAULTS, **kwargs.pop("defaults", {})}
    return make_lab_inventory(
        root, fleet=fleet, lab={"kerberos": True}, defaults=defaults, winrm_password=WINRM_PASSWORD, **kwargs
    )


@contextmanager
def served(lab: LabFiles) -> Iterator[LabFleet]:
    """Serve ``lab`` from the test process (its KDC too) for the duration of the block."""
    with serving(load_inventory(lab.inventory)) as fleet:
        assert fleet is not None and fleet.kdc is not None
        yield fleet


def client_inventory(lab: LabFiles, name: str, edit: Any = None) -> Path:
    """A copy of the lab inventory for keyfleet alone (lab.serve: false), changed by ``edit(document)``."""
    document = yaml.safe_load(lab.inventory.read_text())
    document["lab"]["serve"] = False
    if edit is not None:
        edit(document)
    path = lab.inventory.parent / name
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def krb_env(fleet: LabFleet, tmp: Path, **extra: str) -> dict[str, str]:
    """keyfleet's environment against a lab served by the test: the lab's krb5.conf and a private TMPDIR."""
    assert fleet.kdc is not None
    tmp.mkdir(parents=True, exist_ok=True)
    return {"KRB5_CONFIG": str(fleet.kdc.krb5_conf_path), "TMPDIR": str(tmp), **extra}


def kinit(fleet: LabFleet, principal: str, password: str, ccache: Path) -> None:
    """Get the user's own ticket as an administrator would, with kinit (password on stdin)."""
    assert fleet.kdc is not None
    subprocess.run(
        [kdc.tool("kinit") or "kinit", "-c", f"FILE:{ccache}", principal],
        input=f"{password}\n".encode(),
        env={**os.environ, **fleet.kdc.env},
        capture_output=True,
        check=True,
        timeout=30,
    )


def service_ticket(fleet: LabFleet, spn: str, ccache: Path) -> None:
    """Add the service ticket for ``spn`` to the user's cache (kvno), as a first logon to that server does."""
    assert fleet.kdc is not None
    subprocess.run(
        [kdc.tool("kvno") or "kvno", "-c", f"FILE:{ccache}", spn],
        env={**os.environ, **fleet.kdc.env},
        capture_output=True,
        check=True,
        timeout=30,
    )


def outcomes(stdout: str) -> dict[str, dict[str, Any]]:
    return {o["host"]: o for o in json.loads(stdout)["outcomes"]}


def private_caches(tmp: Path) -> list[Path]:
    """keyfleet's private credential caches left in ``tmp`` (there must be none after a run)."""
    return sorted(tmp.glob("keyfleet-krb5cc-*"))
