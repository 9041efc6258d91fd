"""The README's settings reference is the schema's own rendering, and its commands exist."""

from __future__ import annotations

import re
from pathlib import Path

from orchestrator.cli import build_parser
from orchestrator.errors import ErrorKind
from orchestrator.lab.settings import settings_reference_markdown

README = Path(__file__).resolve().parent.parent / "README.md"


def test_settings_reference_matches_the_schema():
    text = README.read_text()
    block = re.search(r"<!-- settings:begin -->\n(.*)<!-- settings:end -->", text, re.S)
    assert block, "README lacks the settings block"
    assert block.group(1).strip() == settings_reference_markdown().strip(), (
        "README settings reference is stale: regenerate it from orchestrator.inventory.schema"
    )


def test_every_documented_command_parses():
    parser = build_parser()
    for line in re.findall(r"^\| `keyfleet (\w+)", README.read_text(), re.M):
        assert line in parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]


def test_every_failure_kind_is_listed_and_explained():
    text = README.read_text()
    listed = re.search(r"`kind` \(failures\) is one of (.*?)\(each explained", text, re.S)
    assert listed, "README lacks the list of failure kinds"
    assert set(re.findall(r"`([a-z-]+)`", listed.group(1))) == {kind.value for kind in ErrorKind}
    explained = set(re.findall(r"^\| `([a-z-]+)` \|", text, re.M))
    assert {kind.value for kind in ErrorKind} <= explained, "Troubleshooting lacks a row per kind"
