"""The ``--json`` documents of every command, built from the values the jobs return.

The audit's ``keyfleet-audit/1`` (see :func:`audit_json`): every inventory server appears once in
``servers``, in inventory order; times are ISO 8601 UTC with ``Z``; absent values are null. Other
documents: ``keyfleet-prune/1``, ``keyfleet-prune-orphans/1``, the run record of a backup, collect or
restore with its summary, the doctor's hosts and checks, and a playbook's steps. Keys may be added,
none removed. The commands print them with ``console.print_json``.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from orchestrator.jobs.audit import CoverageStatus
from orchestrator.share.manifest import format_iso

if TYPE_CHECKING:  # only annotations: a command loads the jobs it runs, not every job a document exists for
    from orchestrator.helpers import remote
    from orchestrator.inventory.model import HostConfig
    from orchestrator.jobs.audit import AuditReport, Coverage, ServerCoverage
    from orchestrator.jobs.backup import BackupPlan
    from orchestrator.jobs.doctor import Diagnosis
    from orchestrator.jobs.playbook import HostStep, PlaybookResult, StepResult
    from orchestrator.jobs.playbook_schema import Playbook, Step
    from orchestrator.jobs.prune import Leftover, PrunePlan
    from orchestrator.jobs.restore import RestoreRequest
    from orchestrator.runner.pool import RunSummary
    from orchestrator.share.runrecord import RunRecord

AUDIT_SCHEMA = "keyfleet-audit/1"
_OUTCOMES = ("ok", "failed", "skipped")

# -- audit ---------------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return format_iso(value) if value is not None else None


def _coverage_json(coverage: Coverage) -> dict[str, Any]:
    return {
        "name": coverage.name,
        "servers": coverage.servers,
        "covered": coverage.covered,
        "coverage_percent": coverage.percent,
    }


def _server_json(server: ServerCoverage) -> dict[str, Any]:
    good = server.last_good
    attempt = server.last_attempt
    return {
        "host": server.host,
        "group": server.group,
        "role": server.role,
        "status": str(server.status),
        "reason": server.reason,
        "last_good_backup": _iso(good.created) if good else None,
        "age_seconds": int(server.age.total_seconds()) if server.age is not None else None,
        "entry_id": good.id if good else None,
        "path": good.path if good else None,
        "sha256": good.sha256 if good else None,
        "sha256_verified": server.sha256_verified,
        "size": good.size if good else None,
        "password_id": good.password_id if good else None,
        "method": good.method if good else None,
        "scsm_version": good.scsm_version if good else None,
        "current_scsm_version": server.current_version,
        "backups": server.backups,
        "last_attempt": None
        if attempt is None
        else {
            "run_id": attempt.run_id,
            "time": _iso(attempt.time),
            "status": str(attempt.status),
            "kind": attempt.kind,
            "message": attempt.message,
        },
        "problems": list(server.problems),
    }


def audit_json(report: AuditReport) -> dict[str, Any]:
    """The ``--format json`` document (kept stable; new keys may be added, none removed)."""
    counts = report.counts
    return {
        "format": AUDIT_SCHEMA,
        "generated": _iso(report.generated),
        "inventory": report.inventory,
        "share": report.share,
        "max_age_seconds": int(report.max_age.total_seconds()),
        "exit_code": report.exit_code,
        "manifest": {
            "entries": report.manifest_entries,
            "updated": _iso(report.manifest_updated),
            "signature": str(report.signature),
            "public_key_sha256": report.public_key_sha256,
            "generation": report.generation,
        },
        "summary": {
            "servers": len(report.servers),
            **{str(status): counts[status] for status in CoverageStatus},
            "recoverable": report.recoverable,
            "coverage_percent": report.total.percent,
        },
        "roles": [_coverage_json(c) for c in report.roles],
        "groups": [_coverage_json(c) for c in report.groups],
        "servers": [_server_json(s) for s in report.servers],
        "findings": [
            {
                "kind": f.kind,
                "severity": str(f.severity),
                "host": f.host,
                "path": f.path,
                "message": f.message,
                "age_seconds": None if f.age is None else int(f.age.total_seconds()),
            }
            for f in report.findings
        ],
    }


def render_json(report: AuditReport) -> str:
    return json.dumps(audit_json(report), indent=2, ensure_ascii=False) + "\n"


# -- backup, collect, restore: the run record and what the run adds --------------------------------


def outcome_counts(record: RunRecord) -> dict[str, int]:
    """How many of the run's hosts ended ok, failed and skipped."""
    return {s: sum(1 for o in record.outcomes if o.status == s) for s in _OUTCOMES}


def run_json(record: RunRecord, record_path: str | None) -> dict[str, object]:
    """A backup's or collect's document: the run record's fields, where it was written and counts per
    outcome (console.print_result_json adds the exit code and the error)."""
    document = record.to_json()
    document["run_record"] = record_path
    document["summary"] = outcome_counts(record)
    return document


def nothing_to_back_up_json() -> dict[str, object]:
    """``backup --limit @last-failed`` when every host succeeded in the latest run."""
    return {"outcomes": [], "summary": dict.fromkeys(_OUTCOMES, 0)}


def backup_plan_json(plan: BackupPlan) -> dict[str, object]:
    """``backup --check``: the hosts it would back up and those it would skip."""
    hosts = [{"host": h.name, "group": h.group, "role": h.role.value, "endpoint": h.endpoint} for h in plan.hosts]
    skipped = [{"host": s.host.name, "reason": s.reason} for s in plan.skipped]
    return {"check": True, "plan": {"hosts": hosts, "skipped": skipped}}


def restore_json(
    record: RunRecord,
    request: RestoreRequest,
    summary: RunSummary[remote.RestoreResult],
    record_path: str | None,
) -> dict[str, object]:
    """``{run record fields..., "entry": ManifestEntry, "server": {...} | null, "run_record"}``
    (console.print_result_json adds the exit code and the error)."""
    restored = summary.results[0].value if summary.results else None
    document = record.to_json()
    document["entry"] = request.entry.to_json()
    document["server"] = (
        None
        if restored is None
        else {
            "computer_name": restored.computer_name,
            "roles": [r.value for r in restored.roles],
            "method": restored.method,
            "version": restored.version,
            "sha256": restored.sha256,
            "tool_path": restored.tool_path,
            "tool_exit": restored.tool_exit,
            "tool_output": restored.tool_output,
            "helper_version": restored.helper_version,
        }
    )
    document["run_record"] = record_path
    return document


# -- prune ---------------------------------------------------------------------------------------


def prune_plan_json(plan: PrunePlan, *, applied: bool) -> dict[str, object]:
    """The ``--json`` document: ``keyfleet-prune/1``."""
    return {
        "format": "keyfleet-prune/1",
        "keep": plan.keep,
        "applied": applied,
        "decisions": [
            {
                "action": str(d.action),
                "reason": d.reason,
                "id": d.entry.id,
                "host": d.entry.host,
                "path": d.entry.path,
                "created": format_iso(d.entry.created),
            }
            for d in plan.decisions
        ],
    }


def prune_leftovers_json(leftovers: list[Leftover], *, applied: bool) -> dict[str, object]:
    """The ``--orphans --json`` document: ``keyfleet-prune-orphans/1``."""
    return {
        "format": "keyfleet-prune-orphans/1",
        "applied": applied,
        "files": [
            {
                "path": item.path,
                "kind": item.kind,
                "age_seconds": None if item.age is None else int(item.age.total_seconds()),
            }
            for item in leftovers
        ],
    }


# -- doctor --------------------------------------------------------------------------------------


def diagnosis_json(diagnosis: Diagnosis, require: Collection[str] | None = None) -> dict[str, object]:
    """The --json form of one host (``doctor_json`` adds its hint); ``require``: every check by default."""
    from orchestrator.jobs.doctor import CHECKS  # here: the audit and prune documents need no WinRM stack

    require = CHECKS if require is None else require
    host, probe, cause = diagnosis.host, diagnosis.probe, diagnosis.cause(require)
    return {
        "host": host.name,
        "group": host.group,
        "role": host.role.value,
        "endpoint": host.endpoint,
        "auth": diagnosis.auth,
        "status": str(diagnosis.status(require)),
        "kind": str(cause.kind) if cause and cause.kind else None,
        "message": f"{cause.name}: {cause.detail}" if cause else None,
        "server": None
        if probe is None
        else {
            "computer_name": probe.computer_name,
            "roles": [r.value for r in probe.roles],
            "os_build": probe.os_build,
            "version": probe.version,
            "admin": probe.admin,
            "tool_path": probe.tool_path,
            "tool_version": probe.tool_version,
            "temp_path": probe.temp_path,
            "temp_free_bytes": probe.temp_free_bytes,
            "powershell_version": probe.powershell_version,
            "helper_version": probe.helper_version,
            "tool_smoke": None
            if probe.smoke is None
            else {
                "works": probe.smoke.works,
                "attempts": [
                    {"method": a.method, "exit": a.exit, "kind": a.kind, "output": a.output}
                    for a in probe.smoke.attempts
                ],
                "cleanup_warning": probe.smoke.cleanup_warning,
            },
        },
        "checks": [
            {"name": c.name, "status": str(c.state), "detail": c.detail, "kind": str(c.kind) if c.kind else None}
            for c in diagnosis.checks
        ],
        "duration": round(diagnosis.duration, 3),
        "attempts": diagnosis.attempts,
    }


def doctor_json(
    diagnoses: Sequence[Diagnosis],
    *,
    require: Sequence[str],
    interrupted: bool,
    warnings: list[str],
    hints: Sequence[str | None],
) -> dict[str, object]:
    """``keyfleet doctor --json``: counts per status and every host, each with the hint for its failure."""
    from orchestrator.jobs.doctor import status_counts

    return {
        "interrupted": interrupted,
        "summary": status_counts(diagnoses, require),
        "warnings": warnings,
        "hosts": [{**diagnosis_json(d, require), "hint": hint} for d, hint in zip(diagnoses, hints, strict=True)],
    }


# -- playbooks (keyfleet run) --------------------------------------------------------------------


def _playbook_json(playbook: Playbook) -> dict[str, object]:
    return {
        "name": playbook.name,
        "file": str(playbook.path),
        "description": playbook.description,
        "hosts": playbook.hosts,
        "on_failure": playbook.on_failure,
    }


def step_options_json(step: Step) -> dict[str, object]:
    """A step's options: durations in seconds, lists as lists."""
    values: dict[str, object] = {}
    for key, value in vars(step.options).items():
        if isinstance(value, timedelta):
            values[key] = int(value.total_seconds())
        elif isinstance(value, tuple):
            values[key] = list(value)
        else:
            values[key] = value
    return values


def run_plan_json(playbook: Playbook, hosts: list[HostConfig]) -> dict[str, object]:
    """``keyfleet run --check``: the playbook and, per step, the hosts it would work on."""
    plan = [
        {"step": s.number, "name": s.name, "options": step_options_json(s), "hosts": [h.name for h in hosts]}
        for s in playbook.steps
    ]
    return {
        "check": True,
        "playbook": _playbook_json(playbook),
        "hosts": [h.name for h in hosts],
        "plan": plan,
    }


def _host_step_json(cell: HostStep) -> dict[str, object]:
    return {
        "host": cell.host,
        "status": str(cell.status),
        "kind": cell.kind,
        "message": cell.message or None,
        **cell.data,
    }


def _step_json(step: StepResult) -> dict[str, object]:
    return {
        "step": step.step.number,
        "name": step.step.name,
        "options": step_options_json(step.step),
        "status": str(step.status),
        "summary": step.summary,
        "integrity": step.integrity,
        "interrupted": step.interrupted,
        "run_record": step.run_record,
        "warnings": step.warnings,
        **step.data,
        "hosts": [_host_step_json(c) for c in step.hosts],
    }


def run_result_json(result: PlaybookResult, warnings: list[str]) -> dict[str, object]:
    """``keyfleet run --json``: every step with its hosts, the failed hosts, and the run records written."""
    return {
        "check": False,
        "playbook": _playbook_json(result.playbook),
        "hosts": [h.name for h in result.hosts],
        "interrupted": result.interrupted,
        "warnings": warnings,
        "steps": [_step_json(s) for s in result.steps],
        "failed_hosts": [
            {"host": c.host, "step": s.step.number, "name": s.step.name, "kind": c.kind, "message": c.message}
            for s, c in result.failures()
        ],
        "run_records": [s.run_record for s in result.steps if s.run_record],
    }
