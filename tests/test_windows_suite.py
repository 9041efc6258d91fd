"""The Windows-only parts, checked here since no Windows machine runs them: the pseudo console helper part
(conpty.ps1), the Pester suite and its stub tools, and the GitHub Actions workflow that runs them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import tree_sitter
import tree_sitter_powershell
import yaml

from orchestrator.inventory.loader import load_inventory
from orchestrator.secretrefs import resolve
from orchestrator.share.manifest import load_private_key, load_public_key

ROOT = Path(__file__).resolve().parent.parent
WINDOWS_TESTS = ROOT / "tests" / "windows"
WORKFLOW = ROOT / ".github" / "workflows" / "windows.yml"
STUBS = ("readline", "readkey", "failing", "hanging")
# the variables of conpty.ps1 that hold the password as text or bytes
SECRET_VARIABLES = ("$plain", "$keys")
_PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))


def _helper(name: str) -> bytes:
    return resources.files("orchestrator").joinpath("helpers", f"{name}.ps1").read_bytes()


CONPTY = _helper("conpty")
POWERSHELL_FILES = sorted(WINDOWS_TESTS.glob("*.ps1"))


def _walk(node: tree_sitter.Node) -> list[tree_sitter.Node]:
    found, stack = [], [node]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(current.children)
    return found


def _tree(source: bytes) -> tree_sitter.Node:
    return _PARSER.parse(source).root_node


def _text(node: tree_sitter.Node) -> str:
    return (node.text or b"").decode()


def _code_without_comments(source: bytes) -> str:
    """The script with its comments blanked, so that a comment may name what the code must not do."""
    text = bytearray(source)
    for node in _walk(_tree(source)):
        if node.type == "comment":
            text[node.start_byte : node.end_byte] = b" " * (node.end_byte - node.start_byte)
    return text.decode()


# -- parsing ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [pytest.param(CONPTY, id="conpty.ps1")]
    + [pytest.param(path.read_bytes(), id=f"tests/windows/{path.name}") for path in POWERSHELL_FILES]
    + [
        # conpty.ps1 between common.ps1 and a helper, as keyfleet sends it
        pytest.param(_helper("common") + b"\n" + CONPTY + b"\n" + _helper(name), id=f"common+conpty+{name}")
        for name in ("export", "restore", "probe")
    ],
)
def test_script_parses_without_error_nodes(source: bytes) -> None:
    bad = [
        f"{node.type} at line {node.start_point[0] + 1}: {_text(node)[:60]!r}"
        for node in _walk(_tree(source))
        if node.type == "ERROR" or node.is_missing
    ]
    assert not bad, bad


def test_the_windows_suite_is_there() -> None:
    assert [path.name for path in POWERSHELL_FILES] == ["HelperHarness.ps1", "Helpers.Tests.ps1"]
    for name in STUBS:
        assert (WINDOWS_TESTS / "stubs" / f"{name}.cs").is_file(), name


def test_conpty_keeps_the_one_param_block_of_common() -> None:
    """PowerShell allows one param block, first in a script: conpty.ps1 must add none."""
    sent = _tree(_helper("common") + b"\n" + CONPTY + b"\n" + _helper("export"))
    assert [c.type for c in sent.children if c.type != "comment"] == ["param_block", "statement_list"]
    assert not [n for n in _walk(_tree(CONPTY)) if n.type == "param_block"]


def test_conpty_uses_only_what_common_defines_and_builtin_cmdlets() -> None:
    defined = {
        _text(next(c for c in node.children if c.type == "function_name"))
        for source in (_helper("common"), CONPTY)
        for node in _walk(_tree(source))
        if node.type == "function_statement"
    }
    called = {_text(node) for node in _walk(_tree(CONPTY)) if node.type == "command_name"}
    assert called - defined <= {"Add-Type", "New-Object", "Join-Path"}, called - defined
    assert {"Stop-Helper", "Invoke-ToolConsole"} <= defined
    assert "$MaximumOutputChars" in _code_without_comments(CONPTY)  # common.ps1's output cap
    assert "$MaximumOutputChars = " in _helper("common").decode()


# -- Windows PowerShell 5.1 only ----------------------------------------------------------------------------------

# PowerShell 6+/7-only parameters, values and .NET Core-only APIs (the grammar already fails ??, ?. and ternaries)
_NOT_ON_51 = re.compile(
    r"-AsHashtable|-AsByteStream|utf8NoBOM|-Parallel\b|Kill\(\s*\$?true\s*\)|\$IsWindows|\$IsCoreCLR"
    r"|ToHexString|ProcessPath|ThrowIfNull|OperatingSystem\.|\bSpan<|AsSpan\(|ReadAllTextAsync|WaitForExitAsync",
    re.IGNORECASE,
)


def _not_on_windows_powershell_51(source: bytes) -> list[str]:
    code = _code_without_comments(source)
    found = [m.group(0) for m in _NOT_ON_51.finditer(code)]
    for node in _walk(_tree(source)):
        if node.type == "pipeline_chain_tail":
            found.append(f"&&/|| at line {node.start_point[0] + 1}")
        if node.type == "variable" and _text(node).lower() == "$input":
            found.append(f"$input at line {node.start_point[0] + 1}")
    return found


@pytest.mark.parametrize(
    "source",
    [pytest.param(CONPTY, id="conpty.ps1")]
    + [pytest.param(path.read_bytes(), id=f"tests/windows/{path.name}") for path in POWERSHELL_FILES],
)
def test_script_is_windows_powershell_51(source: bytes) -> None:
    assert _not_on_windows_powershell_51(source) == []


@pytest.mark.parametrize(
    "snippet",
    [
        b"$a = Get-Content x | ConvertFrom-Json -AsHashtable",
        b"$b = [IO.File]::ReadAllBytes('x') | Set-Content y -AsByteStream",
        b"Get-Item x && Get-Item y",
        b"$tool.Kill($true)",
        b"$x = $input | Out-String",
        b"Out-File -Encoding utf8NoBOM x",
    ],
)
def test_the_51_check_finds_powershell_7_constructs(snippet: bytes) -> None:
    assert _not_on_windows_powershell_51(snippet)


# C# 6+ syntax that the .NET Framework's csc.exe (C# 5, used by Add-Type on Windows PowerShell 5.1) refuses
_CSHARP_6 = re.compile(r'\$"|\?\.|\bnameof\(|\)\s*=>|\bout var\b|\bis var\b|\{\s*get;\s*\}\s*=')


def _csharp_sources() -> list[tuple[str, str]]:
    embedded = re.search(r"@'\n(.*?)\n'@", CONPTY.decode(), re.S)
    assert embedded is not None
    stubs = [(name, (WINDOWS_TESTS / "stubs" / f"{name}.cs").read_text()) for name in STUBS]
    return [("conpty.ps1", embedded.group(1)), *stubs]


@pytest.mark.parametrize(("name", "source"), _csharp_sources(), ids=[n for n, _ in _csharp_sources()])
def test_csharp_is_csharp_5(name: str, source: str) -> None:
    assert _CSHARP_6.findall(source) == [], name
    assert "Kill(true)" not in source  # .NET Core 3.0+ only


def test_the_stubs_read_as_their_names_say() -> None:
    sources = dict(_csharp_sources())
    assert sources["readline"].count("Console.ReadLine()") == 2
    assert "Console.ReadKey(true)" in sources["readkey"] and "Console.ReadLine" not in sources["readkey"]
    assert "return 2;" in sources["failing"] and "Console.Read" not in sources["failing"]
    assert "Thread.Sleep(Timeout.Infinite)" in sources["hanging"] and "Process.Start" in sources["hanging"]
    for name in STUBS:
        assert re.search(r"public static int Main\(string\[\] args\)", sources[name]), name


# -- the password in conpty.ps1 -----------------------------------------------------------------------------------


def _secret_misuses(source: bytes) -> list[str]:
    """Where a secret variable is bound to a command (cmdlet or function), piped, written to the output,
    expanded in a string or copied; allowed: .NET method arguments, assignments to it, conditions."""
    problems = []
    for node in _walk(_tree(source)):
        if node.type in ("expandable_string_literal", "expandable_here_string_literal"):
            problems += [f"{name} in a string" for name in SECRET_VARIABLES if name in _text(node).lower()]
        if node.type != "variable" or _text(node).lower() not in SECRET_VARIABLES:
            continue
        where = f"{_text(node)} at line {node.start_point[0] + 1}"
        context = None
        assigned_to = False
        parent = node.parent
        while parent is not None:
            if context is None and parent.type == "left_assignment_expression":
                assigned_to = True
            if parent.type == "command":
                problems.append(f"{where}: argument of a command")
                break
            if parent.type in ("pipeline", "pipeline_chain") and any(c.type == "|" for c in parent.children):
                problems.append(f"{where}: in a pipeline")
                break
            if context is None and parent.type in (
                "argument_list",  # a .NET method's arguments
                "assignment_expression",
                "if_statement",
                "while_statement",
                "statement_list",  # reached first: the value is written to the output
            ):
                context = parent.type
            parent = parent.parent
        else:
            if context == "statement_list":
                problems.append(f"{where}: written to the output")
            if context == "assignment_expression" and not assigned_to:
                problems.append(f"{where}: copied to another variable, out of sight of this check")
    return problems


def test_conpty_never_hands_the_password_to_a_cmdlet_or_a_pipeline() -> None:
    code = _code_without_comments(CONPTY).lower()
    for name in SECRET_VARIABLES:  # the check below looks at these names: they must be the ones in use
        assert code.count(name) >= 3, name
    assert "ptrtostringbstr($bstr)" in code and "zerofreebstr($bstr)" in code
    assert _secret_misuses(CONPTY) == []


@pytest.mark.parametrize(
    "snippet",
    [
        b"Write-Host $plain",
        b"$plain | Out-Null",
        b"$null = $keys | ForEach-Object { $_ }",
        b"Stop-Helper 'remote' \"typed $plain\"",
        b"function f { $plain }",
        b"return $keys",
        b"& $tool $plain",
        b"$copy = $plain",
    ],
)
def test_the_password_check_finds_each_misuse(snippet: bytes) -> None:
    assert _secret_misuses(snippet)


def test_the_password_check_accepts_net_calls() -> None:
    ok = b"""$plain = [Runtime.InteropServices.Marshal]::PtrToStringBSTR($bstr)
$keys = [Text.Encoding]::UTF8.GetBytes($plain + "`r")
$text = $session.Text($plain)
if ($null -ne $keys) { [Array]::Clear($keys, 0, $keys.Length) }
"""
    assert _secret_misuses(ok) == []


def test_conpty_answers_twice_with_carriage_returns_and_masks_what_it_returns() -> None:
    code = _code_without_comments(CONPTY)
    assert 'GetBytes($plain + "`r")' in code  # Enter on a console is a carriage return
    assert "$typed -lt 2" in code
    assert "SecureStringToBSTR($Secret)" in code
    assert "method = 'console'" in code
    assert "Stop-ToolTree $session.ProcessId" in code  # common.ps1's: taskkill.exe /T /F /PID
    common = _code_without_comments(_helper("common"))
    assert "taskkill.exe" in common and "/T /F /PID" in common
    assert "'console-unavailable'" in code and "Windows Server 2016" in code and "keyfleet collect" in code
    assert "creating-a-pseudoconsole-session" in CONPTY.decode()
    for call in (
        "CreatePipe",
        "CreatePseudoConsole",
        "InitializeProcThreadAttributeList",
        "UpdateProcThreadAttribute",
        "CreateProcessW",
        "ClosePseudoConsole",
    ):
        assert re.search(rf"static extern \w+ {call}\(", code), call


# -- the workflow -------------------------------------------------------------------------------------------------


def _workflow() -> dict:
    document = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(document, dict)
    return document


def _steps() -> dict[str, dict]:
    return {step["name"]: step for step in _workflow()["jobs"]["windows"]["steps"]}


def test_workflow_runs_on_windows_2022_with_python_311() -> None:
    workflow = _workflow()
    assert workflow.get("on", workflow.get(True)) is not None  # YAML 1.1 reads the key `on` as true
    job = workflow["jobs"]["windows"]
    assert job["runs-on"] == "windows-2022"
    steps = job["steps"]
    assert steps[0]["uses"].startswith("actions/checkout@")
    assert steps[1]["uses"].startswith("actions/setup-python@") and steps[1]["with"]["python-version"] == "3.11"
    assert "pip install ." in steps[2]["run"]


def test_workflow_enables_winrm_for_a_random_local_administrator() -> None:
    run = _steps()["Enable WinRM on localhost for a local administrator"]["run"]
    for needed in ("Enable-PSRemoting -Force", "New-LocalUser", "S-1-5-32-544", "LocalAccountTokenFilterPolicy"):
        assert needed in run, needed
    assert "RNGCryptoServiceProvider" in run and "::add-mask::" in run


def test_workflow_backs_up_audits_then_runs_pester_under_windows_powershell() -> None:
    steps = _steps()
    names = list(steps)
    order = [
        "Compile the stub tool and create the SCSM registry keys",
        "Write the inventory",
        "keyfleet doctor and keyfleet backup over WinRM",
        "keyfleet audit",
        "Pester tests of the helpers",
    ]
    assert [n for n in names if n in order] == order
    assert "New-StubTool 'readline'" in steps[order[0]]["run"] and "Set-ScsmRegistry" in steps[order[0]]["run"]
    assert "keyfleet backup -i" in steps[order[2]]["run"]
    assert "keyfleet audit -i" in steps[order[3]]["run"]
    assert "Invoke-Pester tests/windows -EnableExit" in steps[order[4]]["run"]
    assert "-RequiredVersion 3.4.0" in steps[order[4]]["run"]
    for name in (order[0], order[4]):
        assert steps[name]["shell"] == "powershell", name  # the helpers' side: Windows PowerShell 5.1, not pwsh
    # keyfleet's exit codes decide: a PowerShell step by itself fails only on its last command's
    check = "if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }"
    assert steps[order[2]]["run"].count(check) == 2 and steps[order[3]]["run"].count(check) == 1


def test_workflow_inventory_is_valid_and_its_keys_match(tmp_path: Path) -> None:
    """Run the workflow's inventory step here and load what it writes with keyfleet's own loader."""
    step = _steps()["Write the inventory"]
    assert step["shell"] == "python"
    environment = {
        **os.environ,
        "KEYFLEET_CI_DIR": str(tmp_path),
        "KEYFLEET_CI_TOOL": r"C:\keyfleet-ci\tool\SecureStorageBackup.exe",
        "COMPUTERNAME": "FV-AZ123-456",
    }
    subprocess.run([sys.executable, "-c", step["run"]], env=environment, check=True, timeout=60)
    inventory = load_inventory(tmp_path / "inventory.yml")
    (host,) = inventory.hosts.values()
    assert host.name == "fv-az123-456" and host.address == "127.0.0.1"
    assert host.scheme == "http" and host.transport == "ntlm"
    assert host.tool_path == environment["KEYFLEET_CI_TOOL"]
    assert inventory.signing is not None and inventory.signing.private_key is not None
    private = load_private_key(resolve(inventory.signing.private_key, purpose="manifest signing key"))
    assert private.public_key() == load_public_key(inventory.signing.public_key)
    assert inventory.backup.password is not None and inventory.backup.password.scheme == "env"


@pytest.mark.parametrize(
    "path",
    [
        ROOT / "orchestrator" / "helpers" / "conpty.ps1",
        WORKFLOW,
        *POWERSHELL_FILES,
        *(WINDOWS_TESTS / "stubs" / f"{name}.cs" for name in STUBS),
    ],
    ids=lambda path: path.name,
)
def test_file_is_plain_ascii(path: Path) -> None:
    """No BOM and no code page question: Windows PowerShell 5.1 reads a file without BOM as ANSI."""
    path.read_bytes().decode("ascii")
