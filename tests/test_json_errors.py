"""--json on every error path: one document with exit_code and error {kind, message, hint} on stdout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO

PLAYBOOK = str(REPO / "playbooks" / "backup-all.yml")
# every command with --json: its words, then what follows -i INV (the share: the inventory's or --share)
COMMANDS = {
    "backup": (["backup"], []),
    "collect": (["collect"], []),
    "password rotate": (["password", "rotate"], ["--from", "lab", "--to", "lab-2"]),
    "run": (["run", PLAYBOOK], ["--yes"]),
    "restore": (["restore"], ["--host", "t-ms01", "--yes"]),
    "doctor": (["doctor"], []),
    "inventory": (["inventory"], []),
    "prune": (["prune"], ["--keep", "1"]),
}


def argv(command: str, inventory: Path, *more: str) -> list[str]:
    words, options = COMMANDS[command]
    return [*words, "-i", str(inventory), *options, *more, "--json"]


def error_document(run, code: int, kind: str) -> dict:
    assert run.returncode == code, run.stderr
    assert "Traceback" not in run.stderr
    document = json.loads(run.stdout)  # exactly one document
    assert document["exit_code"] == code
    assert document["error"]["kind"] == kind, document
    assert document["error"]["message"] and document["error"]["hint"]
    assert isinstance(document["outcomes"], list)
    return document


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_inventory_error_is_a_json_document(keyfleet, tmp_path: Path, command):
    inventory = tmp_path / "bad.yml"
    inventory.write_text("management_groups:\n  G:\n    hosts:\n      h1: {role: no_such_role}\n")
    run = keyfleet(*argv(command, inventory))
    document = error_document(run, 2, "config")
    assert "bad.yml" in document["error"]["message"]


@pytest.mark.parametrize("command", ["backup", "collect", "password rotate", "restore", "prune", "run"])
def test_a_share_that_is_a_file_is_a_json_document(keyfleet, lab_inventory, tmp_path: Path, command):
    lab = lab_inventory()
    not_a_folder = tmp_path / "share-file"
    not_a_folder.write_text("not a share")
    run = keyfleet(*argv(command, lab.inventory, "--share", str(not_a_folder)))
    document = error_document(run, 2, "config")
    assert "is not a folder" in run.stderr
    assert document["command"] == command.split()[0]


@pytest.mark.parametrize("command", ["backup", "collect", "password rotate", "restore", "prune", "run"])
def test_an_empty_share_option_is_refused_not_ignored(keyfleet, lab_inventory, command):
    """``--share "$UNSET"`` must not fall back to the inventory's share."""
    lab = lab_inventory()
    run = keyfleet(*argv(command, lab.inventory, "--share", ""))
    document = error_document(run, 2, "config")
    assert "--share is empty" in document["error"]["message"]
    assert not (lab.share / "runs").exists()


@pytest.mark.parametrize("command", ["backup", "prune"])
def test_a_tampered_manifest_is_a_json_document(keyfleet, lab_inventory, command):
    lab = lab_inventory()
    assert keyfleet("backup", "-i", str(lab.inventory), "--limit", "t-ms01").returncode == 0
    # the host's entry, wherever the signed history keeps it (the checkpoint or a log segment)
    tampered = 0
    for part in [lab.share / "manifest.json", *sorted((lab.share / "log").glob("*.json"))]:
        text = part.read_text()
        if "t-ms01" in text:
            part.write_text(text.replace("t-ms01", "t-ms02"))
            tampered += 1
    assert tampered
    run = keyfleet(*argv(command, lab.inventory))
    error_document(run, 3, "integrity")


def test_a_usage_error_after_parsing_is_a_json_document(keyfleet, lab_inventory):
    lab = lab_inventory()
    run = keyfleet("backup", "-i", str(lab.inventory), "--only-stale", "soon", "--json")
    document = error_document(run, 2, "config")
    assert "--only-stale" in document["error"]["message"]
