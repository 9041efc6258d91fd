"""The coverage audit: every status and finding, on share contents made by BackupStore and then
changed on disk for real (flipped byte, deleted file, orphan, edited entry, stripped signature)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console

from orchestrator.cli import main
from orchestrator.durations import duration_option
from orchestrator.errors import ConfigError
from orchestrator.inventory.model import (
    BackupPolicy,
    HostConfig,
    Inventory,
    Location,
    ManagementGroup,
    Role,
    ShareConfig,
    SigningConfig,
)
from orchestrator.jobs.audit import AuditReport, CoverageStatus, SignatureState, run_audit
from orchestrator.report.html import render_html
from orchestrator.report.json import render_json
from orchestrator.report.text import print_table, render_markdown, render_text
from orchestrator.share.local import LocalShare
from orchestrator.share.manifest import ManifestEntry, sign_document
from orchestrator.share.runrecord import HostOutcome, RunRecord, new_run_id
from orchestrator.share.store import BackupStore
from orchestrator.status import Status

HOSTS = {  # name: (group, role)
    "ms01": ("PROD", Role.MANAGEMENT_SERVER),
    "ms02": ("PROD", Role.MANAGEMENT_SERVER),
    "dw01": ("PROD", Role.DW_MANAGEMENT_SERVER),
    "ssp01": ("PROD", Role.SELF_SERVICE_PORTAL),
    "dev-ms01": ("DEV", Role.MANAGEMENT_SERVER),
    "dev-dw01": ("DEV", Role.DW_MANAGEMENT_SERVER),
}
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
DAY = timedelta(days=1)
MAX_AGE = timedelta(days=30)


def host_config(name: str, group: str, role: Role) -> HostConfig:
    return HostConfig(
        name=name,
        group=group,
        role=role,
        address=name,
        port=5985,
        scheme="http",
        transport="ntlm",
        cert_validation=True,
        ca_bundle=None,
        cert_thumbprint=None,
        allow_insecure=False,
        credential=None,
        client_cert=None,
        client_key=None,
        connect_timeout=10,
        operation_timeout=20,
        host_timeout=300,
        retries=2,
        tool_path=None,
        tool_timeout=120,
        tool_input="auto",
        lab=None,
        location=Location("inv.yml"),
    )


def make_inventory(path: Path, public_key: str | None, hosts: dict[str, tuple[str, Role]] = HOSTS) -> Inventory:
    groups: dict[str, ManagementGroup] = {}
    for name, (group, _role) in hosts.items():
        old = groups.get(group, ManagementGroup(group, "", ()))
        groups[group] = replace(old, hosts=(*old.hosts, name))
    return Inventory(
        path=path / "inv.yml",
        groups=groups,
        hosts={name: host_config(name, group, role) for name, (group, role) in hosts.items()},
        share=ShareConfig(url=str(path / "share")),
        backup=BackupPolicy(password=None, password_id="pw-2026", max_age=MAX_AGE),
        signing=SigningConfig(private_key=None, public_key=public_key) if public_key else None,
        lab=None,
    )


class Fleet:
    """A share with one backup per server, a run record of that backup, and the audit inputs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.key = Ed25519PrivateKey.generate()
        raw = self.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_key = base64.b64encode(raw).decode()
        self.inventory = make_inventory(root, self.public_key)
        self.share = LocalShare(root / "share")
        self.store = BackupStore(self.share, self.key)
        self.entries: dict[str, ManifestEntry] = {}
        self.backup(NOW - 2 * DAY)

    def backup(self, when: datetime, hosts: list[str] | None = None, version: str = "10.22.1068.0") -> None:
        run_id = new_run_id(when)
        outcomes = []
        for name in hosts or list(HOSTS):
            group, role = HOSTS[name]
            entry = self.store.add(
                host=name,
                group=group,
                role=role,
                data=f"{name}@{when}".encode() * 20,
                password_id="pw-2026",
                scsm_version=version,
                helper_version="1.0",
                run_id=run_id,
                created=when,
            )
            self.entries[name] = entry
            outcomes.append(
                HostOutcome(
                    name,
                    group,
                    str(role),
                    Status.OK,
                    entry_id=entry.id,
                    sha256=entry.sha256,
                    size=entry.size,
                    scsm_version=version,
                    attempts=1,
                )
            )
        self.record(when, outcomes, run_id=run_id)

    def record(
        self, when: datetime, outcomes: list[HostOutcome], command: str = "backup", run_id: str | None = None
    ) -> None:
        record = RunRecord(
            run_id or new_run_id(when),
            command,
            when,
            when + timedelta(seconds=30),
            "inv.yml",
            self.share.url,
            False,
            tuple(outcomes),
        )
        self.store.write_run_record(record)

    def file(self, host: str) -> Path:
        return self.root / "share" / self.entries[host].path

    def edit_manifest(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Compact the history into manifest.json (a checkpoint holding every entry), then edit it."""
        self.store.compact()
        path = self.root / "share" / "manifest.json"
        document = json.loads(path.read_text())
        change(document)
        path.write_text(json.dumps(document, indent=2))

    def audit(self, max_age: timedelta = MAX_AGE, inventory: Inventory | None = None) -> AuditReport:
        inventory = inventory or self.inventory
        verifier = BackupStore(self.share, self.key).verifier if inventory.signing else None
        return run_audit(inventory, BackupStore(self.share, verifier=verifier), max_age=max_age, now=NOW)


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(tmp_path)


def statuses(report: AuditReport) -> dict[str, CoverageStatus]:
    return {server.host: server.status for server in report.servers}


def kinds(report: AuditReport) -> list[tuple[str, str | None]]:
    return [(finding.kind, finding.host) for finding in report.findings]


def test_clean_share_is_fully_covered(fleet: Fleet) -> None:
    report = fleet.audit()
    assert statuses(report) == dict.fromkeys(HOSTS, CoverageStatus.COVERED)
    assert report.findings == ()
    assert report.signature is SignatureState.VALID
    assert report.exit_code == 0
    assert {c.name: c.percent for c in (*report.roles, *report.groups)} == {
        "management_server": 100.0,
        "dw_management_server": 100.0,
        "self_service_portal": 100.0,
        "PROD": 100.0,
        "DEV": 100.0,
    }
    ms01 = report.servers[0]
    assert ms01.last_good == fleet.entries["ms01"]
    assert ms01.age == 2 * DAY and ms01.sha256_verified
    assert ms01.last_good.password_id == "pw-2026"


def test_max_age_zero_makes_every_server_stale(fleet: Fleet) -> None:
    report = fleet.audit(max_age=duration_option("0s", "--max-age"))
    assert statuses(report) == dict.fromkeys(HOSTS, CoverageStatus.STALE)
    assert report.exit_code == 1
    assert report.servers[0].reason == "last backup 2d old (max age 0s)"


def test_real_damage_is_named_on_the_right_server(fleet: Fleet) -> None:
    data = bytearray(fleet.file("ms01").read_bytes())
    data[7] ^= 0x01
    fleet.file("ms01").write_bytes(bytes(data))  # flipped byte
    fleet.file("dw01").unlink()  # deleted file
    orphan = fleet.file("ssp01").with_name("20260101T000000Z-0123456789ab.bin")
    shutil.copy(fleet.file("ssp01"), orphan)  # copied-in orphan
    fleet.edit_manifest(lambda d: d["entries"][1].update(size=5))  # edited entry (ms02)
    report = fleet.audit()
    assert statuses(report) == {
        "ms01": CoverageStatus.ALTERED,
        "ms02": CoverageStatus.ALTERED,
        "dw01": CoverageStatus.LOST,
        "ssp01": CoverageStatus.COVERED,
        "dev-ms01": CoverageStatus.COVERED,
        "dev-dw01": CoverageStatus.COVERED,
    }
    assert sorted(kinds(report), key=str) == sorted(
        [
            ("signature-invalid", None),
            ("altered", "ms01"),
            ("run-record-mismatch", "ms02"),
            ("altered", "ms02"),
            ("lost", "dw01"),
            ("orphan-file", "ssp01"),
        ],
        key=str,
    )
    assert report.exit_code == 3
    assert report.servers[0].last_good is None  # ms01 has no intact backup left


def test_stripped_signature(fleet: Fleet) -> None:
    fleet.edit_manifest(lambda d: d.pop("signature"))
    report = fleet.audit()
    assert report.signature is SignatureState.MISSING
    assert kinds(report) == [("signature-missing", None)]
    assert set(statuses(report).values()) == {CoverageStatus.COVERED}
    assert report.exit_code == 3


def test_entry_edited_to_point_at_another_path(fleet: Fleet) -> None:
    other = fleet.entries["ms02"].path
    fleet.edit_manifest(lambda d: d["entries"][0].update(path=other))
    report = fleet.audit()
    assert ("entry-inconsistent", "ms01") in kinds(report)
    assert statuses(report)["ms01"] is CoverageStatus.ALTERED
    assert ("orphan-file", "ms01") in kinds(report)  # ms01's real file is no longer referenced


def test_unsafe_path_in_manifest_is_never_read(fleet: Fleet) -> None:
    fleet.edit_manifest(lambda d: d["entries"][0].update(path="../../etc/passwd"))
    report = fleet.audit()
    assert ("bad-path", "ms01") in kinds(report)
    assert report.exit_code == 3


def test_run_record_disagrees_with_manifest(fleet: Fleet) -> None:
    """A signed run record whose outcome names other bytes than the entry of its run."""
    run = fleet.root / "share" / "runs" / f"{fleet.entries['ms01'].run_id}.json"
    document = json.loads(run.read_text())
    document["outcomes"][0]["sha256"] = "0" * 64
    run.write_bytes((json.dumps(sign_document(document, fleet.key)) + "\n").encode())
    report = fleet.audit()
    assert ("run-record-mismatch", "ms01") in kinds(report)
    assert statuses(report)["ms01"] is CoverageStatus.ALTERED


def test_edited_or_unsigned_run_record_is_an_integrity_failure(fleet: Fleet) -> None:
    run = fleet.root / "share" / "runs" / f"{fleet.entries['ms01'].run_id}.json"
    document = json.loads(run.read_text())
    document["outcomes"][0]["status"] = "failed"
    run.write_text(json.dumps(document))
    report = fleet.audit()
    assert ("run-record-invalid", None) in kinds(report)
    assert report.exit_code == 3
    document.pop("signature")
    run.write_text(json.dumps(document))
    assert ("run-record-invalid", None) in kinds(fleet.audit())


def test_missing_failing_and_recovered(fleet: Fleet) -> None:
    hosts = {**HOSTS, "new01": ("DEV", Role.SELF_SERVICE_PORTAL), "never01": ("DEV", Role.MANAGEMENT_SERVER)}
    inventory = make_inventory(fleet.root, fleet.public_key, hosts)
    failed_at = NOW - DAY
    fleet.record(
        failed_at,
        [
            HostOutcome("ms02", "PROD", "management_server", Status.FAILED, kind="auth", message="HTTP 401"),
            HostOutcome(
                "new01",
                "DEV",
                "self_service_portal",
                Status.FAILED,
                kind="unreachable",
                message="connection refused",
            ),
            HostOutcome("ms01", "PROD", "management_server", Status.FAILED, kind="timeout", message="slow"),
        ],
    )
    fleet.backup(NOW - DAY / 2, ["ms01"])  # ms01 failed, then succeeded: covered
    report = fleet.audit(inventory=inventory)
    state = statuses(report)
    assert (state["ms01"], state["ms02"], state["new01"], state["never01"]) == (
        CoverageStatus.COVERED,
        CoverageStatus.FAILING,
        CoverageStatus.FAILING,
        CoverageStatus.MISSING,
    )
    ms02 = next(s for s in report.servers if s.host == "ms02")
    assert ms02.reason == "latest attempt 2026-02-28T12:00:00Z failed: auth: HTTP 401"
    assert ms02.last_good == fleet.entries["ms02"]  # still recoverable
    assert report.exit_code == 1
    by_role = {c.name: (c.covered, c.servers) for c in report.roles}
    assert by_role["self_service_portal"] == (1, 2)
    assert {c.name: c.percent for c in report.groups} == {"PROD": 75.0, "DEV": 50.0}


def test_version_change_after_backup_is_stale(fleet: Fleet) -> None:
    fleet.record(
        NOW - DAY,
        [
            HostOutcome("dw01", "PROD", "dw_management_server", Status.OK, scsm_version="10.25.1000.0"),
        ],
        command="doctor",
    )
    report = fleet.audit()
    dw01 = next(s for s in report.servers if s.host == "dw01")
    assert dw01.status is CoverageStatus.STALE
    assert dw01.reason == "SCSM version changed from 10.22.1068.0 to 10.25.1000.0 since the last backup"
    assert dw01.current_version == "10.25.1000.0"
    fleet.backup(NOW - DAY / 2, ["dw01"], version="10.25.1000.0")
    assert statuses(fleet.audit())["dw01"] is CoverageStatus.COVERED


def test_doctor_failures_are_not_backup_attempts(fleet: Fleet) -> None:
    fleet.record(
        NOW - DAY,
        [HostOutcome("ms01", "PROD", "management_server", Status.FAILED, kind="auth")],
        command="doctor",
    )
    assert statuses(fleet.audit())["ms01"] is CoverageStatus.COVERED


def test_unknown_hosts_are_warnings_and_bad_run_records_integrity_failures(fleet: Fleet) -> None:
    run_id = new_run_id(NOW)
    fleet.store.add(
        host="gone01", group="OLD", role="management_server", data=b"x" * 40, password_id="p", run_id=run_id
    )
    fleet.record(NOW, [], run_id=run_id)
    assert kinds(fleet.audit()) == [("unknown-host", "gone01")]
    assert fleet.audit().exit_code == 0
    (fleet.root / "share" / "runs" / "20260101T000000Z-abcdef.json").write_text("{not json")
    report = fleet.audit()
    assert kinds(report) == [("run-record-invalid", None), ("unknown-host", "gone01")]
    assert report.exit_code == 3


def test_torn_manifest(fleet: Fleet) -> None:
    path = fleet.root / "share" / "manifest.json"
    path.write_bytes(path.read_bytes()[:100])
    report = fleet.audit()
    assert report.signature is SignatureState.UNREADABLE
    assert ("manifest-invalid", None) in kinds(report)
    assert [k for k, _ in kinds(report)].count("orphan-file") == len(HOSTS)
    assert set(statuses(report).values()) == {CoverageStatus.MISSING}
    assert report.exit_code == 3


def test_deleted_manifest_with_key_files_left(fleet: Fleet) -> None:
    (fleet.root / "share" / "manifest.json").unlink()
    report = fleet.audit()
    assert report.signature is SignatureState.ABSENT
    assert kinds(report)[0] == ("manifest-missing", None)
    assert report.exit_code == 3


def test_empty_share(tmp_path: Path) -> None:
    inventory = make_inventory(tmp_path, None)
    report = run_audit(inventory, BackupStore(LocalShare(tmp_path / "share")), max_age=MAX_AGE, now=NOW)
    assert set(statuses(report).values()) == {CoverageStatus.MISSING}
    assert report.findings == () and report.exit_code == 1
    assert not (tmp_path / "share").exists()  # the audit never writes


def test_no_public_key_cannot_vouch_for_the_manifest(fleet: Fleet) -> None:
    report = fleet.audit(inventory=replace(fleet.inventory, signing=None))
    assert report.signature is SignatureState.UNVERIFIABLE
    assert report.exit_code == 3


def test_public_key_comes_from_the_inventory_not_the_share(fleet: Fleet) -> None:
    impostor = Ed25519PrivateKey.generate()
    manifest = fleet.store.load_manifest()
    (fleet.root / "share" / "manifest.json").write_bytes(manifest.signed(impostor).to_bytes())
    report = fleet.audit()
    assert report.signature is SignatureState.INVALID
    assert "not by the inventory's public key" in report.findings[0].message


def test_bad_max_age() -> None:
    with pytest.raises(ConfigError, match="--max-age"):
        duration_option("soon", "--max-age")
    assert duration_option("12h", "--max-age") == timedelta(hours=12)


# -- renderings ---------------------------------------------------------------------------------


@pytest.fixture
def damaged(fleet: Fleet) -> AuditReport:
    fleet.file("dw01").unlink()
    fleet.record(
        NOW - DAY,
        [
            HostOutcome("ms02", "PROD", "management_server", Status.FAILED, kind="auth", message="<401>"),
        ],
    )
    return fleet.audit()


def test_json_schema(damaged: AuditReport) -> None:
    document = json.loads(render_json(damaged))
    assert document["format"] == "keyfleet-audit/1"
    assert [s["host"] for s in document["servers"]] == list(HOSTS)
    assert document["exit_code"] == 3
    assert document["summary"] == {
        "servers": 6,
        "covered": 4,
        "stale": 0,
        "missing": 0,
        "failing": 1,
        "altered": 0,
        "lost": 1,
        "recoverable": 5,
        "coverage_percent": 66.7,
    }
    ms02 = document["servers"][1]
    assert ms02["status"] == "failing" and ms02["last_attempt"]["kind"] == "auth"
    assert ms02["last_good_backup"] == "2026-02-27T12:00:00Z" and ms02["sha256_verified"] is True
    assert ms02["age_seconds"] == 2 * 86400 and ms02["password_id"] == "pw-2026"
    assert document["findings"] == [
        {
            "kind": "lost",
            "severity": "integrity",
            "host": "dw01",
            "path": damaged.findings[0].path,
            "message": f"key file {damaged.findings[0].path} is gone",
            "age_seconds": None,
        },
    ]
    assert document["manifest"]["generation"] == 6
    assert document["manifest"]["signature"] == "valid"
    assert set(document) == {
        "format",
        "generated",
        "inventory",
        "share",
        "max_age_seconds",
        "exit_code",
        "manifest",
        "summary",
        "roles",
        "groups",
        "servers",
        "findings",
    }


def test_html_is_self_contained(damaged: AuditReport) -> None:
    page = render_html(damaged)
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"<script|<link|<img|src=|url\(|@import|https?://", page)
    assert page.count('class="bar"') == len(damaged.roles) + len(damaged.groups)
    for percent in ("66.7", "50", "100"):  # management servers 2/3, PROD 2/4, DEV 2/2
        assert f'<div class="fill" style="width:{percent}%">' in page
    assert "&lt;401&gt;" in page and "<401>" not in page
    for server in damaged.servers:
        assert f'<tr class="status-{server.status}">' in page
    assert ">lost</span>" in page and ">failing</span>" in page  # status as text, not only colour
    assert "@media print" in page


def test_text_markdown_and_rich(damaged: AuditReport) -> None:
    text = render_text(damaged)
    assert "INTEGRITY FAILURE (exit 3)" in text
    assert re.search(r"^dw01\s+PROD\s+dw_management_server\s+lost\s", text, re.M)
    markdown = render_markdown(damaged)
    assert "| `ms02` | PROD | management_server | **failing** |" in markdown
    out = io.StringIO()
    print_table(damaged, Console(file=out, force_terminal=True, width=200))
    assert "lost" in out.getvalue() and "\x1b[" in out.getvalue()


def test_command_line(fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inventory = tmp_path / "inv.yml"
    inventory.write_text(
        "share: {url: share}\nbackup: {password_id: pw-2026, max_age: 30d}\n"
        f"signing: {{public_key: '{fleet.public_key}'}}\n"
        "defaults: {credential: {username: svc, password: 'env:KEYFLEET_TEST_UNUSED'}}\n"
        "management_groups:\n  PROD:\n    hosts:\n      ms01: {role: management_server}\n"
        "      ms02: {role: management_server}\n"
    )
    fleet.backup(datetime.now(UTC), ["ms01", "ms02"])  # the command audits at the real time
    out = tmp_path / "report.html"
    assert main(["audit", "-i", str(inventory), "--format", "html", "-o", str(out)]) == 0
    assert "ms02" in out.read_text() and "full coverage (exit 0)" in capsys.readouterr().err
    assert main(["audit", "-i", str(inventory), "--format", "json", "--max-age", "0s"]) == 1
    assert {s["status"] for s in json.loads(capsys.readouterr().out)["servers"]} == {"stale"}
    assert main(["audit", "-i", str(inventory), "--max-age", "later"]) == 2


def test_rich_table_shows_whole_paths_and_lower_case_headers(damaged: AuditReport) -> None:
    """A lost key file's path in the detail column is folded over lines on a narrow terminal, never cut."""
    out = io.StringIO()
    print_table(damaged, Console(file=out, width=130, force_terminal=False))
    text = out.getvalue()
    assert "…" not in text
    lost = next(s for s in damaged.servers if s.status is CoverageStatus.LOST)
    assert lost.problems and "…" not in lost.problems[0]
    path = lost.problems[0].split()[2]  # "key file <path> is gone"
    rows = [line for line in text.splitlines() if line.startswith("│")]
    start = next(i for i, row in enumerate(rows) if row.split("│")[1].strip() == lost.host)
    end = next(i for i, row in enumerate(rows[start + 1 :], start + 1) if row.split("│")[1].strip())
    detail = "".join(row.split("│")[-2].strip() for row in rows[start:end])
    assert path in detail
    assert "┃ host " in text and "┃ coverage " in text and "HOST" not in text  # one (lower) case for headers
