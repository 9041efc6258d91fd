"""What a run leaves on the share: each host's outcome, and the run record that lists them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from orchestrator.inventory.model import Inventory
from orchestrator.runner.pool import HostResult
from orchestrator.share.manifest import ManifestEntry
from orchestrator.share.runrecord import HostOutcome, RunRecord


def host_outcome(
    result: HostResult[Any],
    entry: ManifestEntry | None,
    *,
    scsm_version: str | None,
    method: str | None,
    message: str | None = None,
) -> HostOutcome:
    """One host's outcome: the runner's result, and the entry it stored or restored (if any).
    The result's own message (a failure's reason) comes before ``message``."""
    return HostOutcome(
        host=result.host.name,
        group=result.host.group,
        role=result.host.role.value,
        status=result.status,
        kind=str(result.kind) if result.kind else None,
        message=result.message or message,
        entry_id=entry.id if entry else None,
        sha256=entry.sha256 if entry else None,
        size=entry.size if entry else None,
        duration=round(result.duration, 3),
        scsm_version=scsm_version,
        attempts=result.attempts,
        method=method,
        warning=result.warning,
    )


def run_record(
    *,
    run_id: str,
    command: str,
    started: datetime,
    inv: Inventory,
    share_url: str,
    interrupted: bool,
    outcomes: list[HostOutcome],
) -> RunRecord:
    """The record of a run that ends now."""
    return RunRecord(
        run_id=run_id,
        command=command,
        started=started,
        finished=datetime.now(UTC),
        inventory=str(inv.path),
        share=share_url,
        interrupted=interrupted,
        outcomes=tuple(outcomes),
    )
