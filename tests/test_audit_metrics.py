"""`keyfleet audit --format openmetrics`: read back through prometheus_client's own parsers and checked
against the JSON audit of the same share and the run record on disk."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus_text

from tests.conftest import LabFiles
from tests.test_audit_e2e import Keyfleet, audit, golden, lab, showcase  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample as (name, sorted labels) -> value, from the strict OpenMetrics parser."""
    found: Samples = {}
    for family in parse_openmetrics(text):
        assert family.type == "gauge" and family.documentation, family.name
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in found, key  # one series once
            found[key] = sample.value
    return found


def test_openmetrics_agree_with_the_json_audit(showcase: LabFiles, keyfleet: Keyfleet) -> None:  # noqa: F811
    _, document = audit(keyfleet, showcase)
    run = keyfleet("audit", "-i", str(showcase.inventory), "--format", "openmetrics")
    assert run.returncode == 3 and run.stderr == ""
    text = run.stdout
    assert text.endswith("# EOF\n")
    # node_exporter's textfile collector reads the Prometheus text format: the same families there
    assert {f.name for f in parse_prometheus_text(text)} == {f.name for f in parse_openmetrics(text)}
    for family in parse_openmetrics(text):
        assert f"# HELP {family.name} " in text and f"# TYPE {family.name} gauge" in text
    got = samples(text)

    assert got[("keyfleet_audit_exit_code", ())] == 3
    summary = document["summary"]
    for status in ("covered", "stale", "missing", "failing", "altered", "lost"):
        assert got[("keyfleet_servers", (("status", status),))] == summary[status]
    assert got[("keyfleet_recoverable_servers", ())] == summary["recoverable"]
    for kind in ("role", "group"):
        for c in document[f"{kind}s"]:
            assert got[(f"keyfleet_{kind}_coverage_ratio", ((kind, c["name"]),))] == c["covered"] / c["servers"]
    ages = {
        dict(labels)["host"]: value for (name, labels), value in got.items() if name == "keyfleet_backup_age_seconds"
    }
    json_ages = {s["host"]: s["age_seconds"] for s in document["servers"] if s["age_seconds"] is not None}
    assert set(ages) == set(json_ages)
    for host, age in ages.items():  # two audits a few seconds apart
        assert json_ages[host] <= age <= json_ages[host] + 60
    for s in document["servers"]:
        labels = (("group", s["group"]), ("host", s["host"]), ("role", s["role"]), ("status", s["status"]))
        assert got[("keyfleet_server_covered", labels)] == (s["status"] == "covered")
    integrity = sum(1 for f in document["findings"] if f["severity"] == "integrity")
    assert integrity >= 2 and got[("keyfleet_findings", (("severity", "integrity"),))] == integrity

    # the latest backup run: the failed run of t-dw01, as its run record on disk says
    records = [json.loads(path.read_text()) for path in (showcase.share / "runs").glob("*.json")]
    record = max(records, key=lambda r: r["started"])
    assert record["command"] == "backup"
    for outcome in ("ok", "failed", "skipped"):
        count = sum(1 for o in record["outcomes"] if o["status"] == outcome)
        assert got[("keyfleet_last_run_hosts", (("outcome", outcome),))] == count
    assert got[("keyfleet_last_run_hosts", (("outcome", "failed"),))] == 1
    assert 0 < got[("keyfleet_last_run_duration_seconds", ())] < 120
    assert got[("keyfleet_last_run_timestamp_seconds", ())] <= got[("keyfleet_audit_timestamp_seconds", ())]


def test_openmetrics_file_for_the_textfile_collector(
    lab: LabFiles,  # noqa: F811
    keyfleet: Keyfleet,
    tmp_path: Path,
) -> None:
    target = tmp_path / "keyfleet.prom"
    target.write_text("old\n")
    run = keyfleet("audit", "-i", str(lab.inventory), "--format", "openmetrics", "-o", str(target))
    assert run.returncode == 0 and run.stdout == ""
    assert f"wrote openmetrics report to {target}; coverage 6/6" in run.stderr
    got = samples(target.read_text())
    assert got[("keyfleet_coverage_ratio", ())] == 1.0 and got[("keyfleet_manifest_signature_valid", ())] == 1
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # node_exporter runs as another user
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left


def test_a_damaged_history_still_gets_its_openmetrics_file(
    lab: LabFiles,  # noqa: F811
    keyfleet: Keyfleet,
    tmp_path: Path,
) -> None:
    """The renderers draw on the run records the audit read: a broken chain is a finding in the file,
    not a reason to leave last night's "all covered" in place for node_exporter."""
    segments = sorted((lab.share / "log").glob("*.json"), key=lambda p: int(p.stem))
    segments[len(segments) // 2].unlink()  # a hole in the chain
    target = tmp_path / "keyfleet.prom"
    target.write_text("old\n")
    run = keyfleet("audit", "-i", str(lab.inventory), "--format", "openmetrics", "-o", str(target))
    assert run.returncode == 3, run.stderr
    assert "Traceback" not in run.stderr and f"wrote openmetrics report to {target}" in run.stderr
    assert ("keyfleet_coverage_ratio", ()) in samples(target.read_text())
