"""`keyfleet schedule`: the systemd units pass `systemd-analyze verify`, the Task Scheduler XML parses with the
task schema's elements, and the cron line, run as cron would, backs the lab up and writes the metrics."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from tests.conftest import CliRun, LabFiles, cli_env

Keyfleet = Callable[..., CliRun]
TASK = "{http://schemas.microsoft.com/windows/2004/02/mit/task}"


def unit_values(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


@pytest.fixture
def prompting_lab(lab_inventory: Callable[..., LabFiles], tmp_path: Path) -> tuple[LabFiles, Path]:
    """A lab inventory that asks for the backup password, as a production one may, and a password file."""
    lab = lab_inventory(backup={"password": "prompt"})
    password = tmp_path / "backup-password"
    password.write_text("Lab-Backup-Test-1\n")
    password.chmod(0o600)
    return lab, password


def test_systemd_units_are_hardened_and_verify(
    prompting_lab: tuple[LabFiles, Path], keyfleet: Keyfleet, tmp_path: Path
) -> None:
    lab, password = prompting_lab
    out = tmp_path / "units"
    out.mkdir()
    run = keyfleet(
        "schedule",
        "systemd",
        "-i",
        str(lab.inventory),
        "--at",
        "03:15",
        "-o",
        str(out),
        "--password-file",
        str(password),
        "--metrics-dir",
        str(tmp_path / "metrics"),
    )
    assert run.returncode == 0, run.stderr
    service = (out / "keyfleet-backup.service").read_text()
    timer = (out / "keyfleet-backup.timer").read_text()
    assert unit_values(timer, "OnCalendar") == ["*-*-* 03:15:00"] and unit_values(timer, "Persistent") == ["yes"]
    for key, value in (
        ("User", "keyfleet"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
        ("Type", "oneshot"),
    ):
        assert unit_values(service, key) == [value], key
    assert unit_values(service, "LoadCredential") == [f"backup-password:{password}"]
    assert "KEYFLEET_BACKUP_PASSWORD_FILE=%d/backup-password" in unit_values(service, "Environment")
    writable = unit_values(service, "ReadWritePaths")[0].split()
    assert str(lab.share) in writable and str(lab.state) in writable and f"-{tmp_path / 'metrics'}" in writable
    backup = shlex.split(unit_values(service, "ExecStart")[0])
    assert backup[1:] == ["-m", "orchestrator", "backup", "-i", str(lab.inventory)] and Path(backup[0]).is_absolute()
    audit = shlex.split(unit_values(service, "ExecStopPost")[0].removeprefix("-"))
    assert audit[3:] == [
        "audit",
        "-i",
        str(lab.inventory),
        "--format",
        "openmetrics",
        "-o",
        str(tmp_path / "metrics" / "keyfleet.prom"),
    ]

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit files were checked by content only")
    verify = subprocess.run(
        [analyze, "verify", "--man=no", str(out / "keyfleet-backup.service"), str(out / "keyfleet-backup.timer")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"},
    )
    ours = [line for line in verify.stderr.splitlines() if "keyfleet-backup" in line]
    assert verify.returncode == 0 and ours == [], verify.stderr


def test_systemd_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a unit with a relative ExecStart is refused by the same command."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    broken = tmp_path / "keyfleet-backup.service"
    broken.write_text("[Service]\nType=oneshot\nExecStart=relative/python -m orchestrator\n")
    verify = subprocess.run([analyze, "verify", "--man=no", str(broken)], capture_output=True, text=True, timeout=60)
    assert verify.returncode != 0 and "keyfleet-backup.service" in verify.stderr


def test_cron_line_runs_the_backup_and_writes_the_metrics(
    prompting_lab: tuple[LabFiles, Path], keyfleet: Keyfleet, tmp_path: Path
) -> None:
    lab, password = prompting_lab
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    run = keyfleet(
        "schedule",
        "cron",
        "-i",
        str(lab.inventory),
        "--at",
        "01:05",
        "--password-file",
        str(password),
        "--metrics-dir",
        str(metrics),
    )
    assert run.returncode == 0, run.stderr
    [line] = [line for line in run.stdout.splitlines() if line and not line.startswith("#")]
    minute, hour, day, month, weekday, command = line.split(" ", 5)
    assert (minute, hour, day, month, weekday) == ("5", "1", "*", "*", "*")
    # cron runs the rest with /bin/sh, '%' escaped (crontab(5)), without a terminal and without our variables
    proc = subprocess.run(
        ["/bin/sh", "-c", command.replace("\\%", "%")],
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    families = {f.name: f for f in text_string_to_metric_families((metrics / "keyfleet.prom").read_text())}
    assert families["keyfleet_coverage_ratio"].samples[0].value == 1.0
    assert {s.labels["outcome"]: s.value for s in families["keyfleet_last_run_hosts"].samples}["ok"] == 6


def test_windows_task_xml(prompting_lab: tuple[LabFiles, Path], keyfleet: Keyfleet, tmp_path: Path) -> None:
    lab, _ = prompting_lab
    run = keyfleet("schedule", "windows", "-i", str(lab.inventory), "--at", "22:45", "-o", str(tmp_path))
    assert run.returncode == 0, run.stderr
    data = (tmp_path / "keyfleet-backup.xml").read_bytes()
    assert data.startswith(b"\xff\xfe")  # UTF-16LE with a BOM, as Task Scheduler exports it
    root = ET.fromstring(data.decode("utf-16"))
    assert root.tag == f"{TASK}Task" and root.get("version") == "1.2"
    trigger = root.find(f"{TASK}Triggers/{TASK}CalendarTrigger")
    assert trigger is not None
    assert trigger.findtext(f"{TASK}StartBoundary", "").endswith("T22:45:00")
    assert trigger.findtext(f"{TASK}ScheduleByDay/{TASK}DaysInterval") == "1"
    assert root.findtext(f"{TASK}Settings/{TASK}MultipleInstancesPolicy") == "IgnoreNew"
    actions = root.findall(f"{TASK}Actions/{TASK}Exec")
    arguments = [a.findtext(f"{TASK}Arguments", "") for a in actions]
    assert len(actions) == 2 and all(Path(a.findtext(f"{TASK}Command", "")).is_absolute() for a in actions)
    assert arguments[0].startswith("-m orchestrator backup -i ") and str(lab.inventory) in arguments[0]
    assert arguments[1].startswith("-m orchestrator audit -i ") and "--format openmetrics -o " in arguments[1]
    printed = keyfleet("schedule", "windows", "-i", str(lab.inventory), "--at", "22:45")
    assert ET.fromstring(printed.stdout.encode()).tag == f"{TASK}Task"  # on stdout: UTF-8, and it says so


def test_a_bad_time_is_refused(lab_inventory: Callable[..., LabFiles], keyfleet: Keyfleet) -> None:
    lab = lab_inventory()
    run = keyfleet("schedule", "cron", "-i", str(lab.inventory), "--at", "24:00")
    assert (
        run.returncode == 2
        and run.stderr.strip() == "keyfleet: --at: '24:00' is not a time of day as HH:MM (00:00 to 23:59)"
    )
