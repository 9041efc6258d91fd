"""The audit report as Prometheus text metrics (OpenMetrics-compatible) for node_exporter's textfile collector.

Only gauges, each with ``# HELP`` and ``# TYPE``, ending with ``# EOF``: node_exporter's textfile collector
reads the Prometheus text format (prometheus/node_exporter issue 1988), where ``# EOF`` is a comment, and an
OpenMetrics parser needs it. Times are Unix seconds; an absent value is an absent sample, never NaN.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from orchestrator.jobs.audit import BACKUP_COMMANDS, AuditReport, Coverage, CoverageStatus, Severity, SignatureState
from orchestrator.share.runrecord import RunRecord
from orchestrator.status import Status

PREFIX = "keyfleet"


@dataclass
class Gauge:
    """One metric family: a name, its help text, and its samples (labels, value)."""

    name: str
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> Gauge:
        self.samples.append((labels, value))
        return self

    def add_all(self, samples: Iterable[tuple[float, dict[str, str]]]) -> Gauge:
        for value, labels in samples:
            self.samples.append((labels, value))
        return self

    def lines(self) -> list[str]:
        name = f"{PREFIX}_{self.name}"
        return [
            f"# HELP {name} {_escape_help(self.help)}",
            f"# TYPE {name} gauge",
            *(f"{name}{_labels(labels)} {_number(value)}" for labels, value in self.samples),
        ]


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape_value(value)}"' for key, value in labels.items()) + "}"


def _escape_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _ratio(coverage: Coverage) -> float:
    return coverage.covered / coverage.servers if coverage.servers else 1.0


def last_backup_run(records: Sequence[RunRecord]) -> RunRecord | None:
    """The newest run record of a command that backs servers up."""
    return next((r for r in reversed(records) if r.command in BACKUP_COMMANDS), None)


def audit_gauges(report: AuditReport, records: Sequence[RunRecord]) -> list[Gauge]:
    """Every metric of one audit; ``records`` are the share's run records, oldest first."""
    gauges = [
        Gauge("audit_timestamp_seconds", "When this audit ran.").add(report.generated.timestamp()),
        Gauge("audit_exit_code", "The audit's exit code: 0 full coverage, 1 coverage gaps, 3 integrity failure.").add(
            report.exit_code
        ),
        Gauge("audit_max_age_seconds", "A backup older than this is stale.").add(report.max_age.total_seconds()),
        Gauge("coverage_ratio", "Share of the inventory's servers that are covered (0 to 1).").add(
            _ratio(report.total)
        ),
        _coverage("role", report.roles),
        _coverage("group", report.groups),
        Gauge("servers", "Servers of the inventory per coverage status.").add_all(
            (report.counts[status], {"status": str(status)}) for status in CoverageStatus
        ),
        Gauge("recoverable_servers", "Servers with at least one intact backup on the share, whatever its age.").add(
            report.recoverable
        ),
    ]
    status = Gauge("server_covered", "1 if the server has a good backup younger than the maximum age, else 0.")
    age = Gauge("backup_age_seconds", "Age of the server's newest intact backup (absent: none).")
    last = Gauge("backup_last_good_timestamp_seconds", "When the server's newest intact backup was taken.")
    for server in report.servers:
        labels = {"host": server.host, "group": server.group, "role": server.role}
        status.add(1 if server.status is CoverageStatus.COVERED else 0, **labels, status=str(server.status))
        if server.last_good is not None and server.age is not None:
            age.add(int(server.age.total_seconds()), **labels)
            last.add(server.last_good.created.timestamp(), **labels)
    gauges += [status, age, last]
    gauges.append(
        Gauge("findings", "Findings about the share per severity (integrity findings make the audit exit 3).").add_all(
            (sum(1 for f in report.findings if f.severity is severity), {"severity": str(severity)})
            for severity in Severity
        )
    )
    gauges.append(
        Gauge("manifest_signature_valid", "1 if the manifest's signature verified with the inventory's key.").add(
            1 if report.signature is SignatureState.VALID else 0
        )
    )
    gauges.append(Gauge("manifest_entries", "Entries in the share's manifest.").add(report.manifest_entries))
    gauges += _last_run(last_backup_run(records))
    return gauges


def _coverage(kind: str, items: Iterable[Coverage]) -> Gauge:
    gauge = Gauge(f"{kind}_coverage_ratio", f"Share of the {kind}'s servers that are covered (0 to 1).")
    for c in items:
        gauge.add(_ratio(c), **{kind: c.name})
    return gauge


def _last_run(record: RunRecord | None) -> list[Gauge]:
    if record is None:
        return []
    return [
        Gauge("last_run_timestamp_seconds", "When the latest backup run started.").add(record.started.timestamp()),
        Gauge("last_run_duration_seconds", "How long the latest backup run took.").add(
            round((record.finished - record.started).total_seconds(), 3)
        ),
        Gauge("last_run_hosts", "Hosts of the latest backup run per outcome.").add_all(
            (sum(1 for o in record.outcomes if o.status is status), {"outcome": str(status)}) for status in Status
        ),
        Gauge("last_run_interrupted", "1 if the latest backup run was interrupted.").add(
            1 if record.interrupted else 0
        ),
    ]


def render_openmetrics(report: AuditReport, records: Sequence[RunRecord] = ()) -> str:
    lines = [line for gauge in audit_gauges(report, records) for line in gauge.lines()]
    return "\n".join([*lines, "# EOF"]) + "\n"
