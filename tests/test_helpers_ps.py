"""The shipped PowerShell helpers: they parse cleanly and agree with the Python side of the contract."""

from __future__ import annotations

import re
from importlib import resources

import pytest
import tree_sitter
import tree_sitter_powershell

from orchestrator import remote
from orchestrator.lab.registry import KNOWN_TOOL_PATHS

SCRIPTS = ("bootstrap", *remote.HELPERS)
_PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))


def _source(name: str) -> bytes:
    return resources.files("orchestrator").joinpath("helpers", f"{name}.ps1").read_bytes()


def _text(node: tree_sitter.Node) -> bytes:
    return node.text or b""


def _functions(name: str) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    stack = [_PARSER.parse(_source(name)).root_node]
    while stack:
        node = stack.pop()
        if node.type == "function_statement":
            title = next(c for c in node.children if c.type == "function_name")
            found[_text(title).decode()] = _text(node)
        stack.extend(node.children)
    return found


def test_every_script_is_shipped_as_package_data() -> None:
    shipped = {p.name for p in resources.files("orchestrator").joinpath("helpers").iterdir()}
    assert {f"{name}.ps1" for name in SCRIPTS} <= shipped


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_parses_without_error_nodes(name: str) -> None:
    tree = _PARSER.parse(_source(name))
    bad: list[str] = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            bad.append(f"{node.type} at line {node.start_point[0] + 1}: {_text(node)[:60]!r}")
        stack.extend(node.children)
    assert not tree.root_node.has_error and not bad, bad


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_is_plain_ascii_without_bom(name: str) -> None:
    _source(name).decode("ascii")


@pytest.mark.parametrize("name", remote.HELPERS)
def test_helper_declares_the_contract_version_and_parameters(name: str) -> None:
    text = _source(name).decode()
    assert f"$HelperVersion = '{remote.HELPER_VERSION}'" in text
    assert re.search(r"param\(\s*\[Parameter\(Mandatory = \$true\)\] \[psobject\] \$Params,", text)
    assert "[Security.SecureString] $Secret" in text
    assert "KEYFLEET-RESULT" not in text  # only the bootstrap writes the result line


@pytest.mark.parametrize("name", remote.HELPERS)
def test_known_tool_paths_match_the_lab(name: str) -> None:
    text = _source(name).decode()
    block = re.search(r"\$KnownToolPaths = @\((.*?)\n\)", text, re.S)
    assert block is not None
    assert tuple(re.findall(r"'([^']+)'", block.group(1))) == KNOWN_TOOL_PATHS


def test_shared_functions_are_identical_in_every_helper() -> None:
    functions = {name: _functions(name) for name in remote.HELPERS}
    names = set().union(*(f.keys() for f in functions.values()))
    for function in names:
        bodies = {f[function] for f in functions.values() if function in f}
        assert len(bodies) == 1, f"{function} differs between helpers"


def test_bootstrap_reads_all_stdin_and_verifies_the_script() -> None:
    text = _source("bootstrap").decode()
    assert "[Console]::In.ReadToEnd()" in text
    assert "SHA256" in text and "[ScriptBlock]::Create(" in text
    assert text.count("Write-KeyfleetResult @{") == 2  # one success, one failure path, each then exits


def test_bootstrap_command_line_fits_cmd_limits() -> None:
    assert len(remote.bootstrap_command_line()) < 8191  # cmd.exe's maximum command line
