"""The audit and prune end to end: a real lab backup through the CLI, then a real change on the share on disk.

One clean backup of the small lab fleet is taken per module; every test audits its own copy of that
lab folder (inventory, lab state, share) after changing the share, the inventory or the fleet.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from itertools import accumulate
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import LAB_SIGNING, SMALL_FLEET, CliRun, LabFiles, cli_env, make_lab_inventory
from tests.loopback import ALLOCATOR
from tests.share_history import compact, read_share

pytestmark = pytest.mark.e2e

Json = dict[str, Any]
Keyfleet = Callable[..., CliRun]
ROLES = ("management_server", "dw_management_server", "self_service_portal")
NEW_VERSION = "10.25.2000.0"


# -- the lab and the share -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> LabFiles:
    """A lab folder after one clean `keyfleet backup` of every server (never changed)."""
    root = tmp_path_factory.mktemp("golden")
    lab = make_lab_inventory(root / "lab")
    argv = [sys.executable, "-m", "orchestrator", "backup", "-i", str(lab.inventory)]
    proc = subprocess.run(argv, env=cli_env(root), capture_output=True, text=True, timeout=120, cwd=root)
    assert proc.returncode == 0, proc.stderr
    return lab


@pytest.fixture
def lab(golden: LabFiles, tmp_path: Path) -> LabFiles:
    root = tmp_path / "lab"
    shutil.copytree(golden.inventory.parent, root)
    return LabFiles(root / "inventory.yml", root / "share", root / "lab-state")


def inventory_hosts(lab: LabFiles) -> dict[str, tuple[str, str]]:
    """host -> (group, role), from the inventory file itself."""
    groups = yaml.safe_load(lab.inventory.read_text())["management_groups"]
    return {name: (group, host["role"]) for group, data in groups.items() for name, host in data["hosts"].items()}


def edit_inventory(lab: LabFiles, change: Callable[[Json], None]) -> None:
    document = yaml.safe_load(lab.inventory.read_text())
    change(document)
    lab.inventory.write_text(yaml.safe_dump(document, sort_keys=False))


def host_settings(document: Json, host: str) -> Json:
    return next(g["hosts"][host] for g in document["management_groups"].values() if host in g["hosts"])


def manifest_of(lab: LabFiles) -> Json:
    """The share's entries as an auditor's reader proves them (tests/share_history.py)."""
    return read_share(lab.share, LAB_SIGNING["public_key"])


def entry_of(manifest: Json, host: str) -> Json:
    """The host's newest entry."""
    return max((e for e in manifest["entries"] if e["host"] == host), key=lambda e: e["created"])


def key_file(lab: LabFiles, host: str) -> Path:
    return lab.share / entry_of(manifest_of(lab), host)["path"]


def canonical(document: Json) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def verify_signature(manifest: Json) -> None:
    """``manifest`` came from ``read_share``, which verified every signature of the history."""
    assert manifest["generation"] >= 1 and manifest["head"]


def edit_manifest(lab: LabFiles, change: Callable[[Json], None], *, resign: bool = False) -> None:
    """Change manifest.json on disk (first compacted: it then holds every entry); ``resign``: sign it
    again with the inventory's own key pair."""
    compact(lab.share, LAB_SIGNING["private_key"])
    path = lab.share / "manifest.json"
    document = json.loads(path.read_text())
    change(document)
    if resign:
        key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(LAB_SIGNING["private_key"]))
        body = {k: v for k, v in document.items() if k != "signature"}
        document["signature"] = {
            "alg": "ed25519",
            "public_key_sha256": hashlib.sha256(base64.b64decode(LAB_SIGNING["public_key"])).hexdigest(),
            "value": base64.b64encode(key.sign(canonical(body))).decode(),
        }
    path.write_text(json.dumps(document, indent=2))


def audit(keyfleet: Keyfleet, lab: LabFiles, *args: str) -> tuple[CliRun, Json]:
    """`keyfleet audit --format json`: the run and its parsed document (whose exit_code must match)."""
    run = keyfleet("audit", "-i", str(lab.inventory), "--format", "json", *args)
    assert "Traceback" not in run.stderr, run.stderr
    document = json.loads(run.stdout)
    assert document["exit_code"] == run.returncode
    assert [s["host"] for s in document["servers"]] == list(inventory_hosts(lab))
    return run, document


def statuses(document: Json) -> dict[str, str]:
    return {s["host"]: s["status"] for s in document["servers"]}


def servers(document: Json) -> dict[str, Json]:
    return {s["host"]: s for s in document["servers"]}


def findings(document: Json) -> set[tuple[str, str | None]]:
    return {(f["kind"], f["host"]) for f in document["findings"]}


# -- 1. a clean backup -----------------------------------------------------------------------------


def test_clean_backup_is_fully_covered(lab: LabFiles, keyfleet: Keyfleet) -> None:
    table = keyfleet("audit", "-i", str(lab.inventory))
    assert table.returncode == 0, table.stderr
    assert table.stderr == ""  # not a terminal: the plain-text report goes to stdout, nothing else
    lines = table.stdout.splitlines()
    assert "coverage 6/6 servers (100%), 6 recoverable; result: full coverage (exit 0)" in table.stdout
    by_role = lines[lines.index("Coverage by role:") + 1 : lines.index("Coverage by management group:")]
    assert sorted(line.split() for line in by_role) == sorted([role, "2/2", "100%"] for role in ROLES)
    by_group = lines[lines.index("Coverage by management group:") + 1 :][:2]
    assert sorted(line.split() for line in by_group) == sorted([group, "3/3", "100%"] for group in SMALL_FLEET)
    assert "Findings: none" in lines

    _, document = audit(keyfleet, lab)
    assert document["exit_code"] == 0
    assert document["manifest"]["signature"] == "valid" and document["manifest"]["entries"] == 6
    assert document["findings"] == []
    assert {(c["name"], c["coverage_percent"]) for c in document["roles"]} == {(r, 100.0) for r in ROLES}
    assert {(c["name"], c["coverage_percent"]) for c in document["groups"]} == {(g, 100.0) for g in SMALL_FLEET}
    assert document["summary"]["covered"] == document["summary"]["recoverable"] == 6
    for host, (group, role) in inventory_hosts(lab).items():
        server = servers(document)[host]
        assert (server["group"], server["role"], server["status"]) == (group, role, "covered")
        assert server["sha256_verified"] and server["password_id"] == "test-1" and server["backups"] == 1
        assert server["last_attempt"]["status"] == "ok"
        assert hashlib.sha256((lab.share / server["path"]).read_bytes()).hexdigest() == server["sha256"]


def test_backups_after_a_prune_s_checkpoint_are_no_rollback(lab: LabFiles, keyfleet: Keyfleet) -> None:
    """A prune that compacts the history writes a checkpoint at its generation; a backup after it adds a
    segment. The prune's run record names the checkpoint's generation and digest: the audit must compare
    it with the checkpoint's digest, not the newest one (a healthy share read as a rollback, exit 3)."""
    checkpoint = pruned_at = 0
    for _ in range(10):  # back up and prune until a prune's commit is the one compacted (64 changes)
        assert keyfleet("backup", "-i", str(lab.inventory)).returncode == 0
        pruned = keyfleet("prune", "-i", str(lab.inventory), "--keep", "1", "--json")
        assert pruned.returncode == 0, pruned.stderr
        checkpoint = json.loads((lab.share / "manifest.json").read_text())["generation"]
        records = [json.loads(p.read_text()) for p in (lab.share / "runs").glob("*.json")]
        pruned_at = max(r["generation"] for r in records if r["command"] == "prune")
        if checkpoint == pruned_at:
            break
    assert checkpoint == pruned_at > 0
    assert keyfleet("backup", "-i", str(lab.inventory), "--limit", next(iter(inventory_hosts(lab)))).returncode == 0
    run, document = audit(keyfleet, lab)
    assert run.returncode == 0 and not [f for f in document["findings"] if f["kind"] == "rollback"], document


def test_rich_table_on_a_terminal(lab: LabFiles, tmp_path: Path) -> None:
    controller, terminal = pty.openpty()
    argv = [sys.executable, "-m", "orchestrator", "audit", "-i", str(lab.inventory)]
    proc = subprocess.Popen(argv, env=cli_env(tmp_path), stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
    os.close(terminal)
    output = b""
    try:
        while chunk := os.read(controller, 65536):
            output += chunk
    except OSError as exc:  # EIO: the command closed its terminal
        if exc.errno != errno.EIO:
            raise
    finally:
        os.close(controller)
    assert proc.wait(timeout=60) == 0
    text = output.decode()
    assert "\x1b[" in text  # rich styles it
    assert "coverage" in text and text.count("100%") >= 1 + len(ROLES) + len(SMALL_FLEET)
    assert all(host in text for host in inventory_hosts(lab))


# -- 2. integrity: a real change on the share ------------------------------------------------------


def flip_byte(lab: LabFiles, host: str) -> None:
    path = key_file(lab, host)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def delete_file(lab: LabFiles, host: str) -> None:
    key_file(lab, host).unlink()


def add_orphans(lab: LabFiles, source: str, into: str) -> None:
    """Copy ``source``'s key file under ``into``'s folder, and under its own folder with a new name."""
    path = key_file(lab, source)
    shutil.copy(path, key_file(lab, into).parent / path.name)
    shutil.copy(path, path.with_name("20200101T000000Z-" + path.name.split("-")[-1]))


def bump_size(host: str) -> Callable[[Json], None]:
    def change(document: Json) -> None:
        entry_of(document, host)["size"] += 1

    return change


def replace_sha256(host: str) -> Callable[[Json], None]:
    def change(document: Json) -> None:
        entry_of(document, host)["sha256"] = hashlib.sha256(b"some other key").hexdigest()

    return change


def strip_signature(document: Json) -> None:
    del document["signature"]


@dataclass(frozen=True)
class Scenario:
    change: Callable[[LabFiles], None]
    exit_code: int
    signature: str  # the manifest's signature state
    findings: set[tuple[str, str | None]]  # (kind, host)
    damaged: dict[str, str]  # host -> status, for the servers that are no longer covered


SCENARIOS = {
    "flipped-byte": Scenario(
        lambda lab: flip_byte(lab, "t-ms01"), 3, "valid", {("altered", "t-ms01")}, {"t-ms01": "altered"}
    ),
    "deleted-file": Scenario(
        lambda lab: delete_file(lab, "d-dw01"), 3, "valid", {("lost", "d-dw01")}, {"d-dw01": "lost"}
    ),
    "orphans": Scenario(
        lambda lab: add_orphans(lab, "t-ms01", "d-ms01"),
        0,  # an orphan is what a crash between file and manifest leaves: reported, not an integrity failure
        "valid",
        {("orphan-file", "d-ms01"), ("orphan-file", "t-ms01")},
        {},
    ),
    "edited-entry": Scenario(
        lambda lab: edit_manifest(lab, bump_size("t-portal01")),
        3,
        "invalid",
        {("signature-invalid", None), ("altered", "t-portal01"), ("run-record-mismatch", "t-portal01")},
        {"t-portal01": "altered"},
    ),
    "edited-entry-resigned": Scenario(
        lambda lab: edit_manifest(lab, replace_sha256("d-portal01"), resign=True),
        3,
        "valid",  # signed again with the inventory's key: the re-hash and the run record still tell
        {("entry-inconsistent", "d-portal01"), ("altered", "d-portal01"), ("run-record-mismatch", "d-portal01")},
        {"d-portal01": "altered"},
    ),
    "stripped-signature": Scenario(
        lambda lab: edit_manifest(lab, strip_signature),
        3,
        "missing",
        {("signature-missing", None)},
        {},
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_one_change_on_the_share(lab: LabFiles, keyfleet: Keyfleet, name: str) -> None:
    scenario = SCENARIOS[name]
    damaged = scenario.damaged
    before = servers(audit(keyfleet, lab)[1])
    scenario.change(lab)
    run, document = audit(keyfleet, lab)
    assert run.returncode == scenario.exit_code, document["findings"]
    assert document["manifest"]["signature"] == scenario.signature
    assert findings(document) == scenario.findings
    for finding in document["findings"]:
        assert finding["severity"] == ("warning" if finding["kind"] == "orphan-file" else "integrity")
        assert finding["host"] is None or finding["path"] is None or finding["host"] in finding["path"]
    assert statuses(document) == {host: damaged.get(host, "covered") for host in before}
    for host in damaged:
        server = servers(document)[host]
        assert server["problems"] and server["reason"].startswith(server["problems"][0])
        assert server["last_good_backup"] is None and not server["sha256_verified"]
    for host, server in servers(document).items():
        if host not in damaged:
            assert server["sha256"] == before[host]["sha256"] and server["sha256_verified"]


def test_every_change_at_once(lab: LabFiles, keyfleet: Keyfleet) -> None:
    flip_byte(lab, "t-ms01")
    delete_file(lab, "d-dw01")
    add_orphans(lab, "t-dw01", "d-portal01")
    edit_manifest(lab, replace_sha256("t-portal01"))
    edit_manifest(lab, strip_signature)
    run, document = audit(keyfleet, lab)
    assert run.returncode == 3
    assert document["manifest"]["signature"] == "missing"
    assert findings(document) == {
        ("signature-missing", None),
        ("altered", "t-ms01"),
        ("lost", "d-dw01"),
        ("orphan-file", "d-portal01"),
        ("orphan-file", "t-dw01"),
        ("entry-inconsistent", "t-portal01"),
        ("altered", "t-portal01"),
        ("run-record-mismatch", "t-portal01"),
    }
    assert statuses(document) == {
        "t-ms01": "altered",
        "t-dw01": "covered",
        "t-portal01": "altered",
        "d-ms01": "covered",
        "d-dw01": "lost",
        "d-portal01": "covered",
    }
    assert document["summary"]["recoverable"] == 3
    assert {c["name"]: c["coverage_percent"] for c in document["groups"]} == {"TEST-PROD": 33.3, "TEST-DEV": 66.7}

    table = keyfleet("audit", "-i", str(lab.inventory))
    assert table.returncode == 3
    assert "result: INTEGRITY FAILURE (exit 3)" in table.stdout
    for kind, host in (("altered", "t-ms01"), ("lost", "d-dw01"), ("orphan-file", "d-portal01")):
        assert f"] {kind}: {host}: " in table.stdout
    rows = {line.split()[0]: line.split()[3] for line in table.stdout.splitlines() if line[:2] in ("t-", "d-")}
    assert rows == statuses(document)


def test_entry_swapped_for_another_file_and_resigned_is_caught_by_the_run_record(
    lab: LabFiles, keyfleet: Keyfleet
) -> None:
    intruder = key_file(lab, "d-ms01").read_bytes()  # another server's key, under t-ms01's name
    old = entry_of(manifest_of(lab), "t-ms01")
    sha256 = hashlib.sha256(intruder).hexdigest()
    stamp = Path(old["path"]).name.split("-")[0]
    new_path = f"{Path(old['path']).parent}/{stamp}-{sha256[:12]}.bin"
    (lab.share / new_path).write_bytes(intruder)
    (lab.share / old["path"]).unlink()

    def swap(document: Json) -> None:
        entry_of(document, "t-ms01").update(
            id=f"t-ms01-{stamp}-{sha256[:12]}", path=new_path, sha256=sha256, size=len(intruder)
        )

    edit_manifest(lab, swap, resign=True)
    run, document = audit(keyfleet, lab)
    assert ("run-record-mismatch", "t-ms01") in findings(document)
    assert run.returncode == 3


# -- 3. coverage gaps ------------------------------------------------------------------------------


def test_max_age_zero_makes_every_server_stale(lab: LabFiles, keyfleet: Keyfleet) -> None:
    run, document = audit(keyfleet, lab, "--max-age", "0s")
    assert run.returncode == 1 and document["max_age_seconds"] == 0
    assert set(statuses(document).values()) == {"stale"}
    assert all("(max age 0s)" in s["reason"] and s["sha256_verified"] for s in document["servers"])
    assert {c["coverage_percent"] for c in document["roles"] + document["groups"]} == {0.0}
    assert document["summary"]["recoverable"] == 6 and document["findings"] == []

    edit_inventory(lab, lambda d: d["backup"].update(max_age="0s"))  # the inventory's policy, no option
    run, document = audit(keyfleet, lab)
    assert run.returncode == 1 and set(statuses(document).values()) == {"stale"}


def test_host_failing_in_the_latest_run(lab: LabFiles, keyfleet: Keyfleet) -> None:
    edit_inventory(lab, lambda d: host_settings(d, "t-dw01").update(lab={"faults": ["tool-failing"]}))
    backup = keyfleet("backup", "-i", str(lab.inventory), "--json")
    assert backup.returncode == 1, backup.stderr
    record = json.loads((lab.share / "runs" / f"{json.loads(backup.stdout)['run_id']}.json").read_text())

    run, document = audit(keyfleet, lab)
    assert run.returncode == 1
    assert statuses(document) == {**dict.fromkeys(inventory_hosts(lab), "covered"), "t-dw01": "failing"}
    failing = servers(document)["t-dw01"]
    attempt = failing["last_attempt"]
    assert (attempt["run_id"], attempt["status"], attempt["kind"]) == (record["run_id"], "failed", "tool-failed")
    assert attempt["time"][:19] == record["started"][:19]  # when
    assert "SecureStorageBackup.exe" in attempt["message"]  # why
    assert failing["reason"].startswith(f"latest attempt {attempt['time']} failed: tool-failed: ")
    # the earlier good backup is still there and still verified: the server stays recoverable
    assert failing["last_good_backup"] is not None and failing["sha256_verified"]
    assert document["summary"]["recoverable"] == 6
    assert {c["name"]: c["coverage_percent"] for c in document["roles"]}["dw_management_server"] == 50.0


def add_host(document: Json) -> None:
    """A server installed after the backup: t-ms02."""
    # on loopback, as every host of a lab inventory must be (its secrets are plaintext)
    hosts = document["management_groups"]["TEST-PROD"]["hosts"]
    hosts["t-ms02"] = {"role": "management_server", "address": ALLOCATOR.address()}


def test_host_never_backed_up_is_missing(lab: LabFiles, keyfleet: Keyfleet) -> None:
    def change(document: Json) -> None:
        add_host(document)
        del document["management_groups"]["TEST-DEV"]["hosts"]["d-portal01"]

    edit_inventory(lab, change)
    run, document = audit(keyfleet, lab)
    assert run.returncode == 1
    missing = servers(document)["t-ms02"]
    assert (missing["status"], missing["reason"], missing["last_good_backup"]) == ("missing", "never backed up", None)
    assert missing["last_attempt"] is None and missing["backups"] == 0
    assert [s for s, status in statuses(document).items() if status != "covered"] == ["t-ms02"]
    assert findings(document) == {("unknown-host", "d-portal01")}  # its backups stay, as a warning
    assert {c["name"]: c["coverage_percent"] for c in document["roles"]}["management_server"] == 66.7
    assert {c["name"]: c["coverage_percent"] for c in document["groups"]} == {"TEST-PROD": 75.0, "TEST-DEV": 100.0}


def upgrade(lab: LabFiles, host: str, **settings: Any) -> None:
    edit_inventory(lab, lambda d: host_settings(d, host).update(lab={"version": NEW_VERSION, **settings}))


def test_scsm_version_change_seen_by_a_restore_makes_the_backup_stale(lab: LabFiles, keyfleet: Keyfleet) -> None:
    old_version = entry_of(manifest_of(lab), "d-dw01")["scsm_version"]
    assert old_version and old_version != NEW_VERSION
    upgrade(lab, "d-dw01")  # rebuilt on a newer update rollup, then its key is put back
    restore = keyfleet("restore", "-i", str(lab.inventory), "--host", "d-dw01", "--yes")
    assert restore.returncode == 0, restore.stderr
    run, document = audit(keyfleet, lab)
    assert run.returncode == 1
    stale = servers(document)["d-dw01"]
    assert stale["status"] == "stale" and stale["sha256_verified"]
    assert (stale["scsm_version"], stale["current_scsm_version"]) == (old_version, NEW_VERSION)
    assert stale["reason"] == f"SCSM version changed from {old_version} to {NEW_VERSION} since the last backup"
    assert [h for h, status in statuses(document).items() if status != "covered"] == ["d-dw01"]


@pytest.fixture
def upgraded_then_failed(lab: LabFiles, keyfleet: Keyfleet) -> Json:
    """t-dw01 upgraded after its good backup; the next backup fails on it: the audit document."""
    upgrade(lab, "t-dw01", faults=["tool-failing"])
    assert keyfleet("backup", "-i", str(lab.inventory)).returncode == 1
    run, document = audit(keyfleet, lab)
    assert run.returncode == 1
    return document


def test_scsm_version_change_then_failed_backup_is_a_gap(upgraded_then_failed: Json) -> None:
    server = servers(upgraded_then_failed)["t-dw01"]
    # failing outranks stale (jobs/audit.py Status): the latest attempt failed, with when and why
    assert server["status"] == "failing" and "tool-failed" in server["reason"]
    assert server["last_attempt"]["kind"] == "tool-failed"


def test_scsm_version_change_then_failed_backup_records_the_new_version(upgraded_then_failed: Json) -> None:
    assert servers(upgraded_then_failed)["t-dw01"]["current_scsm_version"] == NEW_VERSION


# -- 4. markdown and HTML, the HTML in a real browser ----------------------------------------------


@pytest.fixture
def showcase(lab: LabFiles, keyfleet: Keyfleet) -> LabFiles:
    """Every kind of server at once: covered, failing, missing, altered, lost."""
    edit_inventory(lab, lambda d: host_settings(d, "t-dw01").update(lab={"faults": ["tool-failing"]}))
    assert keyfleet("backup", "-i", str(lab.inventory), "--limit", "t-dw01").returncode == 1
    edit_inventory(lab, add_host)
    flip_byte(lab, "t-ms01")
    delete_file(lab, "d-dw01")
    return lab


def test_markdown_report(showcase: LabFiles, keyfleet: Keyfleet) -> None:
    _, document = audit(keyfleet, showcase)
    run = keyfleet("audit", "-i", str(showcase.inventory), "--format", "markdown")
    assert run.returncode == 3 and run.stderr == ""
    text = run.stdout
    assert text.startswith("# keyfleet backup coverage\n")
    for heading in ("## Coverage", "## Servers", "## Findings"):
        assert f"\n{heading}\n" in text
    for kind in ("roles", "groups"):
        for c in document[kind]:
            row = f"| {kind[:-1]} | {c['name']} | {c['servers']} | {c['covered']} | {c['coverage_percent']:g}% |"
            assert row in text
    for server in document["servers"]:
        status = server["status"] if server["status"] == "covered" else f"**{server['status']}**"
        assert f"| `{server['host']}` | {server['group']} | {server['role']} | {status} |" in text
    assert "| integrity | altered | t-ms01 |" in text and "| integrity | lost | d-dw01 |" in text


@dataclass
class Row:
    classes: str
    cells: list[str] = field(default_factory=list)
    fills: list[str] = field(default_factory=list)  # style of each coverage bar's filled part


class RenderedTables(HTMLParser):
    """The rows of every table in a DOM dumped by the browser."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.rows: list[Row] = []
        self.in_cell = False
        self.feed(dom)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "tr":
            self.rows.append(Row(attributes.get("class") or ""))
        elif tag in ("td", "th") and self.rows:
            self.rows[-1].cells.append("")
            self.in_cell = True
        elif tag == "div" and attributes.get("class") == "fill" and self.rows:
            self.rows[-1].fills.append(attributes.get("style") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self.in_cell = False

    def handle_data(self, data: str) -> None:
        if self.in_cell:
            self.rows[-1].cells[-1] += data


BROWSER_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--force-device-scale-factor=1",
)
FILL_GREEN = (0x2D, 0xA4, 0x4E)  # report_html CSS .fill
BAR_AREA = 18 * 14 * 14  # a full bar: 18em x 1em at the report's 14px font


@pytest.fixture
def chromium() -> str:
    """Debian's chromium: skipped when missing, except on CI (CI=true), where it must be there."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is not installed: CI must check the HTML report in a real browser (.ci/setup)")
    pytest.skip("chromium is not installed (apt-get install --no-install-recommends chromium)")


def browse(chromium: str, tmp_path: Path, name: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    argv = [chromium, *BROWSER_FLAGS, f"--user-data-dir={tmp_path / ('profile-' + name)}", *args]
    env = {**os.environ, "HOME": str(tmp_path)}
    proc = subprocess.run(argv, capture_output=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    return proc


def png_pixels(data: bytes) -> tuple[int, int, Counter[tuple[int, ...]]]:
    """Width, height and a count of every RGB colour of an 8-bit, non-interlaced RGB(A) PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, header = 8, [], b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IHDR":
            header = data[pos + 8 : pos + 8 + length]
        elif kind == b"IDAT":
            chunks.append(data[pos + 8 : pos + 8 + length])
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert (depth, interlace) == (8, 0) and colour in (2, 6)
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(b"".join(chunks)), width * bpp
    low, high = int.from_bytes(b"\x7f" * stride, "big"), int.from_bytes(b"\x80" * stride, "big")
    previous, colours = bytes(stride), Counter[tuple[int, ...]]()
    for y in range(height):
        kind, line = raw[y * (stride + 1)], raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]
        if kind == 0:
            row = line
        elif kind == 2:  # Up: bytewise addition mod 256 without carries, on big integers
            a, b = int.from_bytes(line, "big"), int.from_bytes(previous, "big")
            row = (((a & low) + (b & low)) ^ ((a ^ b) & high)).to_bytes(stride, "big")
        elif kind == 1:  # Sub: a running sum per channel
            out = bytearray(stride)
            for channel in range(bpp):
                out[channel::bpp] = bytes(map((255).__and__, accumulate(line[channel::bpp])))
            row = bytes(out)
        else:  # Average or Paeth
            out = bytearray(stride)
            for i in range(stride):
                left, up = (out[i - bpp] if i >= bpp else 0), previous[i]
                if kind == 3:
                    predicted = (left + up) >> 1
                else:
                    corner = previous[i - bpp] if i >= bpp else 0
                    p = left + up - corner
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                    predicted = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                out[i] = (line[i] + predicted) & 255
            row = bytes(out)
        colours.update(zip(row[0::bpp], row[1::bpp], row[2::bpp], strict=True))
        previous = row
    return width, height, colours


def test_html_report_in_a_real_browser(chromium: str, showcase: LabFiles, keyfleet: Keyfleet, tmp_path: Path) -> None:
    _, document = audit(keyfleet, showcase)
    report = tmp_path / "coverage.html"
    run = keyfleet("audit", "-i", str(showcase.inventory), "--format", "html", "-o", str(report))
    assert run.returncode == 3 and run.stdout == ""
    assert f"wrote html report to {report}" in run.stderr and "INTEGRITY FAILURE (exit 3)" in run.stderr
    html = report.read_text()
    assert "<script" not in html and "src=" not in html and "href=" not in html  # self-contained

    dom = browse(chromium, tmp_path, "dom", "--dump-dom", report.as_uri()).stdout.decode()
    for heading in ("Coverage by role", "Coverage by management group", "Servers", "Findings"):
        assert f"<h2>{heading}</h2>" in dom
    rows = RenderedTables(dom).rows
    bars = {row.cells[0]: row for row in rows if row.fills}
    coverage = document["roles"] + document["groups"]
    assert set(bars) == {c["name"] for c in coverage}
    for c in coverage:
        assert bars[c["name"]].fills == [f"width:{c['coverage_percent']:g}%"]
        assert bars[c["name"]].cells[2:] == [f"{c['covered']}/{c['servers']}", f"{c['coverage_percent']:g}%"]
    shown = {row.cells[0]: (row.classes, row.cells[3]) for row in rows if row.classes.startswith("status-")}
    assert shown == {s["host"]: (f"status-{s['status']}", s["status"]) for s in document["servers"]}
    assert set(statuses(document).values()) == {"covered", "failing", "missing", "altered", "lost"}

    screenshot = tmp_path / "coverage.png"
    browse(chromium, tmp_path, "shot", f"--screenshot={screenshot}", "--window-size=1280,2000", report.as_uri())
    width, height, colours = png_pixels(screenshot.read_bytes())
    assert (width, height) == (1280, 2000)
    assert len(colours) > 50 and colours.most_common(1)[0][1] < 0.98 * width * height  # not blank
    # the filled parts of the bars cover what the percentages say (rounded corners cost a few pixels)
    expected_green = sum(c["coverage_percent"] for c in coverage) / 100 * BAR_AREA
    assert 0.95 * expected_green <= colours[FILL_GREEN] <= 1.02 * expected_green


# -- 5. retention ----------------------------------------------------------------------------------


def next_second() -> None:
    """Sleep into the next wall-clock second: manifest entries are stamped in whole seconds."""
    time.sleep(1.02 - time.time() % 1)


def backup_entry_ids(keyfleet: Keyfleet, lab: LabFiles, *args: str) -> dict[str, str]:
    """One more clean backup (of every server, unless limited): host -> its new entry id."""
    run = keyfleet("backup", "-i", str(lab.inventory), "--json", *args)
    assert run.returncode == 0, run.stderr
    return {o["host"]: o["entry_id"] for o in json.loads(run.stdout)["outcomes"]}


def key_files_on_disk(lab: LabFiles) -> set[str]:
    return {p.relative_to(lab.share).as_posix() for p in lab.share.rglob("*.bin")}


def test_prune_keeps_the_newest_backup_of_every_server(lab: LabFiles, keyfleet: Keyfleet) -> None:
    next_second()
    backup_entry_ids(keyfleet, lab)
    next_second()
    newest = backup_entry_ids(keyfleet, lab)  # three backups of every server in all, a second apart at least
    manifest_before = manifest_of(lab)
    assert len(manifest_before["entries"]) == 18 and len(key_files_on_disk(lab)) == 18

    check = keyfleet("prune", "-i", str(lab.inventory), "--keep", "1", "--check", "--json")
    assert check.returncode == 0, check.stderr
    plan = json.loads(check.stdout)
    assert plan["applied"] is False and plan["keep"] == 1
    assert {d["id"] for d in plan["decisions"] if d["action"] == "keep"} == set(newest.values())
    assert sum(d["action"] == "remove" for d in plan["decisions"]) == 12
    assert manifest_of(lab) == manifest_before and len(key_files_on_disk(lab)) == 18

    prune = keyfleet("prune", "-i", str(lab.inventory), "--keep", "1")
    assert prune.returncode == 0, prune.stderr
    assert "removed 12 key files; 6 kept (newest 1 per server)" in prune.stdout
    manifest = manifest_of(lab)
    verify_signature(manifest)
    assert {e["host"]: e["id"] for e in manifest["entries"]} == newest
    assert key_files_on_disk(lab) == {e["path"] for e in manifest["entries"]}
    run, document = audit(keyfleet, lab)
    assert run.returncode == 0 and document["findings"] == []
    assert set(statuses(document).values()) == {"covered"}
    assert {s["entry_id"] for s in document["servers"]} == set(newest.values())
    assert list((lab.share / "runs").glob("*.running")) == []  # the prune's marker went with its record

    # the newest intact backup of a server is never removed, even beyond --keep
    next_second()
    previous = backup_entry_ids(keyfleet, lab)
    latest = entry_of(manifest_of(lab), "t-ms01")
    flip_byte(lab, "t-ms01")
    plan = json.loads(keyfleet("prune", "-i", str(lab.inventory), "--keep", "1", "--json").stdout)
    assert plan["applied"] is True
    kept = {d["id"]: d["reason"] for d in plan["decisions"] if d["action"] == "keep"}
    assert kept[latest["id"]] == "among the newest 1"
    assert kept[newest["t-ms01"]] == "newest intact backup of the server"
    assert set(kept) == {*previous.values(), newest["t-ms01"]}
    verify_signature(manifest_of(lab))
    run, document = audit(keyfleet, lab)
    assert run.returncode == 3 and findings(document) == {("altered", "t-ms01")}
    assert servers(document)["t-ms01"]["entry_id"] == newest["t-ms01"]  # still recoverable


def test_the_later_of_two_backups_in_one_second_is_the_newest(lab: LabFiles, keyfleet: Keyfleet) -> None:
    for _ in range(3):
        next_second()
        first = backup_entry_ids(keyfleet, lab, "--limit", "t-ms01")["t-ms01"]
        second = backup_entry_ids(keyfleet, lab, "--limit", "t-ms01")["t-ms01"]
        created = {e["id"]: e["created"] for e in manifest_of(lab)["entries"]}
        if created[first] == created[second]:
            break
    else:
        pytest.skip("two backups of one server never ran within one second here")
    assert servers(audit(keyfleet, lab)[1])["t-ms01"]["entry_id"] == second
    plan = json.loads(keyfleet("prune", "-i", str(lab.inventory), "--keep", "1", "--check", "--json").stdout)
    assert {d["id"] for d in plan["decisions"] if d["host"] == "t-ms01" and d["action"] == "keep"} == {second}
