"""The shipped PowerShell helpers: they parse cleanly and agree with the Python side of the contract."""

from __future__ import annotations

import re
from importlib import resources

import pytest
import tree_sitter
import tree_sitter_powershell

from orchestrator import remote
from orchestrator.lab.registry import KNOWN_TOOL_PATHS

FILES = (remote.BOOTSTRAP, remote.COMMON, *remote.HELPERS)
_PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))


def _source(name: str) -> bytes:
    return resources.files("orchestrator").joinpath("helpers", f"{name}.ps1").read_bytes()


def _sent(name: str) -> bytes:
    """The script as keyfleet sends it (for a helper: common.ps1 + <helper>.ps1)."""
    return remote.load_script(name).content


def _text(node: tree_sitter.Node) -> bytes:
    return node.text or b""


def _nodes(source: bytes, node_type: str) -> list[tree_sitter.Node]:
    found: list[tree_sitter.Node] = []
    stack = [_PARSER.parse(source).root_node]
    while stack:
        node = stack.pop()
        if node.type == node_type:
            found.append(node)
        stack.extend(node.children)
    return found


def _defined(source: bytes) -> set[str]:
    """Names of the functions a script defines."""
    return {
        _text(next(c for c in node.children if c.type == "function_name")).decode()
        for node in _nodes(source, "function_statement")
    }


def _called(source: bytes) -> set[str]:
    """Names of the commands a script calls."""
    return {_text(node).decode() for node in _nodes(source, "command_name")}


def test_every_script_is_shipped_as_package_data() -> None:
    shipped = {p.name for p in resources.files("orchestrator").joinpath("helpers").iterdir()}
    assert {f"{name}.ps1" for name in FILES} <= shipped


@pytest.mark.parametrize(
    "source",
    [pytest.param(_source(name), id=f"{name}.ps1") for name in FILES]
    + [pytest.param(_sent(name), id=f"sent-{name}") for name in remote.HELPERS],
)
def test_script_parses_without_error_nodes(source: bytes) -> None:
    tree = _PARSER.parse(source)
    bad: list[str] = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            bad.append(f"{node.type} at line {node.start_point[0] + 1}: {_text(node)[:60]!r}")
        stack.extend(node.children)
    assert not tree.root_node.has_error and not bad, bad


@pytest.mark.parametrize("name", FILES)
def test_script_is_plain_ascii_without_bom(name: str) -> None:
    _source(name).decode("ascii")


@pytest.mark.parametrize("name", remote.HELPERS)
def test_sent_helper_declares_the_contract_version_and_parameters(name: str) -> None:
    text = _sent(name).decode()
    assert text.count(f"$HelperVersion = '{remote.HELPER_VERSION}'") == 1
    assert re.search(r"param\(\s*\[Parameter\(Mandatory = \$true\)\] \[psobject\] \$Params,", text)
    assert "[Security.SecureString] $Secret" in text
    assert "KEYFLEET-RESULT" not in text  # only the bootstrap writes the result line
    # one param block, before any statement, as PowerShell requires of a script block
    top = [c.type for c in _PARSER.parse(_sent(name)).root_node.children if c.type != "comment"]
    assert top == ["param_block", "statement_list"]
    assert len(_nodes(_sent(name), "param_block")) == 1


def test_known_tool_paths_match_the_lab() -> None:
    block = re.search(r"\$KnownToolPaths = @\((.*?)\n\)", _source(remote.COMMON).decode(), re.S)
    assert block is not None
    assert tuple(re.findall(r"'([^']+)'", block.group(1))) == KNOWN_TOOL_PATHS


@pytest.mark.parametrize("name", remote.HELPERS)
def test_helper_uses_the_common_functions_and_redefines_none(name: str) -> None:
    common = _defined(_source(remote.COMMON))
    helper = _source(name)
    assert not _defined(helper) & common, f"{name}.ps1 redefines common functions"
    assert _called(helper) & common, f"{name}.ps1 calls no common function"
    for settled in ("param(", "Set-StrictMode", "$HelperVersion =", "$KnownToolPaths ="):
        assert settled not in helper.decode(), f"{name}.ps1 repeats {settled!r} from common.ps1"


def test_every_common_function_is_used() -> None:
    common = _source(remote.COMMON)
    calls = _called(common).union(*(_called(_source(name)) for name in remote.HELPERS))
    assert _defined(common) - calls == set()


def test_bootstrap_reads_all_stdin_and_verifies_the_script() -> None:
    text = _source(remote.BOOTSTRAP).decode()
    assert "[Console]::In.ReadToEnd()" in text
    assert "SHA256" in text and "[ScriptBlock]::Create(" in text
    assert text.count("Write-KeyfleetResult ") == 2  # one success, one failure path, each then exits
    assert "$failure.server = $global:KeyfleetServer" in text  # a failure still reports role and version


def test_bootstrap_command_line_fits_cmd_limits() -> None:
    assert len(remote.bootstrap_command_line()) < 8191  # cmd.exe's maximum command line
