"""Produce tests/data/legacy-share with keyfleet at aac1e09 (manifest format keyfleet-manifest/1)."""

import base64
import shutil
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator.share.local import LocalShare
from orchestrator.share.runrecord import HostOutcome, RunRecord
from orchestrator.share.store import BackupStore
from orchestrator.status import Status

root = Path(sys.argv[1])
shutil.rmtree(root, ignore_errors=True)
key = Ed25519PrivateKey.from_private_bytes(base64.b64decode("WWN8g2cNQuG3MPbRgK3OnHHlUQNrT6O+w1GzuYqCa5A="))
store = BackupStore(LocalShare(root), key)
hosts = {
    "t-ms01": ("TEST-PROD", "management_server"),
    "t-dw01": ("TEST-PROD", "dw_management_server"),
    "d-portal01": ("TEST-DEV", "self_service_portal"),
}
base = datetime(2026, 11, 1, 2, 0, 0, tzinfo=UTC)
for day, run_id in enumerate(["20261101T020000Z-a1b2c3", "20261102T020000Z-d4e5f6"]):
    started = base + timedelta(days=day)
    outcomes = []
    for i, (host, (group, role)) in enumerate(hosts.items()):
        if day == 1 and host == "t-dw01":
            outcomes.append(
                HostOutcome(
                    host,
                    group,
                    role,
                    Status.FAILED,
                    kind="unreachable",
                    message="connection refused",
                    attempts=2,
                )
            )
            continue
        data = f"legacy key of {host} day {day}".encode() * 8
        e = store.add(
            host=host,
            group=group,
            role=role,
            data=data,
            password_id="test-1",
            scsm_version="10.22.1068.0",
            helper_version="1.0",
            run_id=run_id,
            created=started + timedelta(seconds=i),
        )
        outcomes.append(
            HostOutcome(
                host,
                group,
                role,
                Status.OK,
                entry_id=e.id,
                sha256=e.sha256,
                size=e.size,
                duration=1.0,
                scsm_version="10.22.1068.0",
                attempts=1,
            )
        )
    store.write_run_record(
        RunRecord(
            run_id,
            "backup",
            started,
            started + timedelta(seconds=30),
            "inventory.yml",
            str(root),
            False,
            tuple(outcomes),
        )
    )
