"""Every command's --help describes each of its options; no-terminal errors name the fix for that case."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator

import pytest
import yaml

from orchestrator.cli import build_parser
from tests.conftest import CliRun, LabFiles


def parsers(parser: argparse.ArgumentParser, name: str = "keyfleet") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from parsers(sub, f"{name} {sub_name}")


def test_every_option_of_every_command_has_a_description() -> None:
    undocumented = [
        f"{name} {action.dest}"
        for name, parser in parsers(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction | argparse._VersionAction)
        and action.help != argparse.SUPPRESS
        and not (action.help or "").strip()
    ]
    assert undocumented == []


def test_vault_help_names_every_action_and_the_password_variables(keyfleet: Callable[..., CliRun]) -> None:
    run = keyfleet("vault", "--help")
    assert run.returncode == 0
    for word in (
        "create",
        "view",
        "edit",
        "encrypt",
        "decrypt",
        "rekey",
        "KEYFLEET_VAULT_PASSWORD_FILE",
        "KEYFLEET_NEW_VAULT_PASSWORD_FILE",
        "$EDITOR",
    ):
        assert word in run.stdout, word


@pytest.mark.parametrize(
    ("backup", "fix"),
    [
        (
            {"password": "prompt"},
            "backup.password: backup password: no terminal to prompt on; set KEYFLEET_BACKUP_PASSWORD_FILE (a file, "
            "mode 0600) or KEYFLEET_BACKUP_PASSWORD, or write env:NAME",
        ),
        (
            {"password": None},
            "backup password: no terminal to prompt on; set KEYFLEET_BACKUP_PASSWORD_FILE (a file, mode 0600) or "
            "KEYFLEET_BACKUP_PASSWORD, or backup.password in the inventory",
        ),
    ],
    ids=["prompt-reference", "no-reference"],
)
def test_a_backup_without_terminal_names_the_variable_that_fixes_it(
    backup: dict[str, object], fix: str, lab_inventory: Callable[..., LabFiles], keyfleet: Callable[..., CliRun]
) -> None:
    lab = lab_inventory(backup=backup)
    document = yaml.safe_load(lab.inventory.read_text())
    document["backup"] = {k: v for k, v in document["backup"].items() if v is not None}
    lab.inventory.write_text(yaml.safe_dump(document, sort_keys=False))
    run = keyfleet("backup", "-i", str(lab.inventory))
    assert run.returncode == 2
    assert fix in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert not lab.journal.exists()
