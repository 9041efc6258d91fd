"""The shipped PowerShell helpers: they parse cleanly and agree with the Python side of the contract."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest
import tree_sitter
import tree_sitter_powershell

from orchestrator.helpers import remote
from orchestrator.lab.registry import DEFAULT_INSTALL_FOLDERS

FILES = (remote.BOOTSTRAP, remote.COMMON, remote.CONPTY, *remote.HELPERS)
_PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))


def _source(name: str) -> bytes:
    return resources.files("orchestrator").joinpath("helpers", f"{name}.ps1").read_bytes()


def _sent(name: str) -> bytes:
    """The script as keyfleet sends it (for a helper: common.ps1 + conpty.ps1 + <helper>.ps1)."""
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


def test_default_install_folders_match_the_lab() -> None:
    block = re.search(r"\$DefaultInstallFolders = @\((.*?)\n\)", _source(remote.COMMON).decode(), re.S)
    assert block is not None
    assert tuple(re.findall(r"'([^']+)'", block.group(1))) == DEFAULT_INSTALL_FOLDERS
    assert DEFAULT_INSTALL_FOLDERS == (
        r"C:\Program Files\Microsoft System Center\Service Manager",  # SCSM 2019, 2022, 2025
        r"C:\Program Files\Microsoft System Center 2016\Service Manager",  # SCSM 2016
    )


@pytest.mark.parametrize("name", remote.HELPERS)
def test_helper_uses_the_common_functions_and_redefines_none(name: str) -> None:
    common = _defined(_source(remote.COMMON))
    helper = _source(name)
    assert not _defined(helper) & common, f"{name}.ps1 redefines common functions"
    assert _called(helper) & common, f"{name}.ps1 calls no common function"
    for settled in ("param(", "Set-StrictMode", "$HelperVersion =", "$DefaultInstallFolders ="):
        assert settled not in helper.decode(), f"{name}.ps1 repeats {settled!r} from common.ps1"


def test_every_common_function_is_used() -> None:
    shared = _source(remote.COMMON) + b"\n" + _source(remote.CONPTY)
    calls = _called(shared).union(*(_called(_source(name)) for name in remote.HELPERS))
    assert _defined(shared) - calls == set()


def test_bootstrap_reads_two_lines_and_verifies_the_script() -> None:
    text = _source(remote.BOOTSTRAP).decode()
    assert text.count("[Console]::In.ReadLine()") == 2 and "ReadToEnd" not in text
    assert "$secretLine = [Console]::In.ReadLine()" in text
    assert "SHA256" in text and "[ScriptBlock]::Create(" in text
    assert text.count("Write-KeyfleetResult ") == 2  # one success, one failure path, each then exits
    assert "$failure.server = $global:KeyfleetServer" in text  # a failure still reports role and version


def test_bootstrap_command_line_fits_cmd_limits() -> None:
    assert len(remote.bootstrap_command_line()) < 8191  # cmd.exe's maximum command line


# -- the secret never passes through a cmdlet (module logging 4103 records parameter bindings) ------

_PLAIN_SOURCES = ("PtrToStringBSTR",)  # where a helper turns the SecureString into text


def _variables(node: tree_sitter.Node) -> list[tree_sitter.Node]:
    found = []
    stack = [node]
    while stack:
        current = stack.pop()
        if current.type == "variable":
            found.append(current)
        stack.extend(current.children)
    return found


def _name(variable: tree_sitter.Node) -> str:
    return _text(variable).decode().lower().replace("{", "").replace("}", "").replace("$script:", "$")


def _ancestors(node: tree_sitter.Node) -> list[tree_sitter.Node]:
    found = []
    while node.parent is not None:
        node = node.parent
        found.append(node)
    return found


# methods whose first argument is the secret they remove from what they return:
# String.Replace(secret, mask), and conpty.ps1's PseudoConsoleSession.Text(secret) (the screen, masked)
_MASKING_METHODS = (b"Replace", b"Text")


def _masked(variable: tree_sitter.Node) -> bool:
    """``$x.Replace($secret, '...')``: the secret is what is removed, the result holds none of it."""
    for node in _ancestors(variable):
        if node.type == "argument_expression":
            args = node.parent
            call = args.parent.parent if args is not None and args.parent is not None else None
            if call is None or call.type != "invokation_expression":
                return False
            member = next((c for c in call.children if c.type == "member_name"), None)
            first = next(c for c in args.children if c.type == "argument_expression")
            return member is not None and _text(member) in _MASKING_METHODS and first == node
    return False


def _tainted_variables(source: bytes, seeds: set[str]) -> set[str]:
    """Variables that hold the secret in plain form (text, bytes or chars), to a fixed point."""
    tainted = set(seeds)
    assignments = [*_nodes(source, "assignment_expression"), *_nodes(source, "foreach_statement")]
    changed = True
    while changed:
        changed = False
        for node in assignments:
            if node.type == "assignment_expression":
                target, value = node.children[0], node.children[-1]
            else:  # foreach ($item in <value>)
                target = next(c for c in node.children if c.type == "variable")
                value = next(c for c in node.children if c.type == "pipeline")
            names = {_name(v) for v in _variables(target)}
            holds = any(src.encode() in _text(value) for src in _PLAIN_SOURCES) or any(
                _name(v) in tainted and not _masked(v) for v in _variables(value)
            )
            if holds and not names <= tainted:
                tainted |= names
                changed = True
    return tainted


def _sinks(source: bytes, tainted: set[str], reads: tuple[str, ...] = ("[Console]::In.",)) -> list[str]:
    """Where a plain-secret variable, or a read of stdin (``reads``), reaches a command (cmdlet,
    function, script block) or a pipeline."""
    found = []
    candidates = [v for v in _variables(_PARSER.parse(source).root_node) if _name(v) in tainted]
    candidates += [
        n for n in _nodes(source, "invokation_expression") if any(_text(n).startswith(r.encode()) for r in reads)
    ]
    for variable in candidates:
        for node in _ancestors(variable):
            if node.type in ("command", "flow_control_statement") or (
                node.type == "pipeline_chain" and any(c.type == "|" for c in node.children)
            ):
                line = variable.start_point[0] + 1
                found.append(f"line {line}: {_text(variable).decode()} in {node.type}: {_text(node)[:80]!r}")
                break
    return found


@pytest.mark.parametrize(
    ("name", "seeds"),
    [(remote.BOOTSTRAP, {"$secretline"}), *((helper, set()) for helper in remote.HELPERS)],
)
def test_the_plain_secret_never_reaches_a_command_or_a_pipeline(name: str, seeds: set[str]) -> None:
    source = _sent(name)
    tainted = _tainted_variables(source, seeds)
    assert tainted, "the analysis found no variable holding the secret: it would prove nothing"
    assert _sinks(source, tainted) == []


def test_the_taint_check_catches_what_the_first_release_did() -> None:
    release1 = (Path(__file__).parent / "data" / "release1-bootstrap.ps1").read_bytes()
    # the whole request, password included, was piped into ConvertFrom-Json
    assert any("ConvertFrom-Json" in sink for sink in _sinks(release1, set()))
    bad = b'$plain = [Runtime.InteropServices.Marshal]::PtrToStringBSTR($bstr)\n$line = "$plain`r`n"\n'
    bad += b"Write-Verbose $line\n$bytes = $enc.GetBytes($plain)\n$bytes | Out-Null\n"
    sinks = _sinks(bad, _tainted_variables(bad, set()))
    assert len(sinks) == 2
    assert any("Write-Verbose" in sink for sink in sinks) and any("Out-Null" in sink for sink in sinks)
    masked = b"$plain = [M]::PtrToStringBSTR($b)\n$out = $out.Replace($plain, '*')\nWrite-Output $out\n"
    assert _sinks(masked, _tainted_variables(masked, set())) == []


# -- Windows PowerShell 5.1 and .NET Framework only ------------------------------------------------

_PS7_ONLY = {
    "null-coalescing ??": r"\?\?",
    "null-conditional ?.": r"\?\.|\?\[",
    "pipeline chain &&": r"&&",
    "pipeline chain ||": r"\|\|",
    "ternary": r"\)\s*\?\s*[\$'\"\w(]",
    "ConvertFrom-Json -AsHashtable": r"-AsHashtable",
    "ConvertFrom-Json -Depth/-NoEnumerate": r"ConvertFrom-Json[^\n]*-(Depth|NoEnumerate)",
    "-AsByteStream": r"-AsByteStream",
    "utf8NoBOM": r"utf8NoBOM",
    "ForEach-Object -Parallel": r"-Parallel",
    "Process.Kill($true)": r"\.Kill\(\s*\$true",
    "Join-Path -AdditionalChildPath": r"-AdditionalChildPath",
    ".NET Core: Convert.ToHexString": r"ToHexString",
    ".NET Core: HashData": r"\]::HashData",
    ".NET Core: RandomNumberGenerator statics": r"RandomNumberGenerator\]::(Fill|GetBytes|GetInt32)",
    ".NET Core: Path.Join": r"Path\]::Join",
    ".NET Core: System.Text.Json": r"System\.Text\.Json",
    "PowerShell 7 Get-Error": r"\bGet-Error\b",
    "clean block": r"^\s*clean\s*\{",
}


def _code_only(source: bytes) -> str:
    """The script with comments and string literals blanked out."""
    data = bytearray(source)
    for kind in ("comment", "string_literal", "expandable_string_literal", "verbatim_string_characters"):
        for node in _nodes(source, kind):
            data[node.start_byte : node.end_byte] = b" " * (node.end_byte - node.start_byte)
    return data.decode()


@pytest.mark.parametrize("name", FILES)
def test_no_powershell_7_or_dotnet_core_construct(name: str) -> None:
    code = _code_only(_source(name))
    found = [what for what, pattern in _PS7_ONLY.items() if re.search(pattern, code, re.M | re.I)]
    assert found == []


def test_the_ps7_check_finds_each_construct() -> None:
    samples = [
        b"$a = $b ?? 'x'", b"$a = $b?.Name", b"git pull && git push", b"$a = ($b) ? 1 : 2",
        b"$x | ConvertFrom-Json -AsHashtable", b"$p.Kill($true)", b"[Convert]::ToHexString($b)",
        b"1..3 | ForEach-Object -Parallel { $_ }",
    ]  # fmt: skip
    for sample in samples:
        code = _code_only(sample)
        assert any(re.search(p, code, re.M | re.I) for p in _PS7_ONLY.values()), sample
    assert not any(re.search(p, _code_only(b"# a ?? b && c\n'x ?? y'"), re.M) for p in _PS7_ONLY.values())


@pytest.mark.parametrize("name", FILES)
def test_no_dollar_input(name: str) -> None:
    """$input in the command text makes powershell.exe read stdin itself (PowerShell ConsoleHost)."""
    assert not re.search(r"\$input\b", _code_only(_source(name)), re.I)


def test_every_kind_a_helper_stops_with_is_one_the_controller_knows() -> None:
    """A kind the controller does not map becomes ``remote`` and loses its hint: the helpers, and the lab
    that models them, stop only with kinds of the contract."""
    known = set(remote._HELPER_KINDS)
    for name in FILES:
        used = set(re.findall(rb"Stop-Helper '([a-z-]+)'", _source(name)))
        assert {kind.decode() for kind in used} <= known, name
    simulated = resources.files("orchestrator").joinpath("lab", "helpersim.py").read_text()
    kinds = set(re.findall(r'HelperError\(\s*"([a-z-]+)"', simulated))
    assert kinds and kinds <= known, kinds - known
