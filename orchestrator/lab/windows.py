"""Windows behaviour the lab models at the byte level: WinRS command options, console code pages,
.NET Framework's ``Process.StandardInput``, and powershell.exe's CLIXML error stream.

The helpers' own logic is simulated in ``helpersim``; what decides how bytes move between WinRS,
powershell.exe and SecureStorageBackup.exe is read from the shipped scripts here (``ScriptFacts``),
so a helper that writes its password the wrong way makes the lab's tool read the wrong password,
as a real server would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from xml.sax.saxutils import escape

from orchestrator.helpers import remote

UTF8_BOM = b"\xef\xbb\xbf"
UTF8_CODEPAGE = 65001
# WinRS: a shell opened without WINRS_CODEPAGE gets the server's OEM code page (437 on en-US)
DEFAULT_OEM_CODEPAGE = 437
# Windows builds: a pseudo console (CreatePseudoConsole) exists from 17763 (Windows Server 2019)
WINDOWS_BUILDS = {"2016": 14393, "2019": 17763, "2022": 20348, "2025": 26100}
CONPTY_MIN_BUILD = 17763
PSEUDO_CONSOLE_ENTER = b"\r"  # ConPTY input is keystrokes: Enter arrives as CR
# .NET Framework's Console.ReadKey under redirected stdin (System.Console, InvalidOperationException)
READKEY_REDIRECTED = (
    "Cannot read keys when either application does not have a console or when console input has "
    "been redirected from a file. Try Console.Read."
)
UNHANDLED_EXCEPTION_EXIT = -532462766  # 0xE0434352, the CLR's exit code for an unhandled exception
_CLIXML_NS = "http://schemas.microsoft.com/powershell/2004/04"


@dataclass(frozen=True)
class CommandOptions:
    """The WinRS options of one command (Create's WINRS_CODEPAGE, Command's two flags)."""

    console_mode_stdin: bool = False  # WINRS_CONSOLEMODE_STDIN; pywinrm's default is TRUE
    skip_cmd_shell: bool = True  # WINRS_SKIP_CMD_SHELL
    codepage: int = UTF8_CODEPAGE  # WINRS_CODEPAGE of the shell

    @classmethod
    def of(cls, shell_options: dict[str, str], command_options: dict[str, str], oem_codepage: int) -> CommandOptions:
        codepage = shell_options.get("WINRS_CODEPAGE", "")
        return cls(
            console_mode_stdin=command_options.get("WINRS_CONSOLEMODE_STDIN", "TRUE").upper() != "FALSE",
            skip_cmd_shell=command_options.get("WINRS_SKIP_CMD_SHELL", "FALSE").upper() == "TRUE",
            codepage=int(codepage) if codepage.isdigit() else oem_codepage,
        )


def codec(codepage: int) -> str:
    """The Python codec of a Windows code page."""
    return "utf-8" if codepage == UTF8_CODEPAGE else f"cp{codepage}"


def console_read_lines(data: bytes, codepage: int) -> list[str]:
    """What ``Console.ReadLine`` returns, line by line, for ``data`` on a redirected stdin.

    .NET Framework's Console.In decodes with the console's input code page and does not detect
    byte order marks, so a BOM reaches the first line as U+FEFF; lines end at LF, CR LF or CR.
    """
    text = data.decode(codec(codepage), "replace")
    return re.split(r"\r\n|\n|\r", text)


def encoding_preamble(codepage: int, *, utf8_without_bom: bool) -> bytes:
    """What a .NET Framework ``StreamWriter`` over ``Console.InputEncoding`` writes first.

    ``Encoding.GetEncoding(65001)`` is a UTF-8 encoding with a BOM, and Process.Start flushes the
    preamble of stdin's writer at once (dotnet/corefx#5556): only a console input encoding set to
    ``UTF8Encoding($false)`` (Ansible's exec wrapper) writes nothing first.
    """
    if codepage == UTF8_CODEPAGE and not utf8_without_bom:
        return UTF8_BOM
    return b""


@dataclass(frozen=True)
class ScriptFacts:
    """How the shipped helper scripts move bytes, read from their text (see the module docstring)."""

    sets_utf8_console_without_bom: bool  # [Console]::InputEncoding = New-Object Text.UTF8Encoding $false
    writes_stdin_bytes: bool  # StandardInput.BaseStream.Write of bytes encoded by the script
    writes_stdin_lines: bool  # StandardInput.WriteLine: text through the StreamWriter
    tool_folder_is_working_directory: bool  # WorkingDirectory = the tool's own folder
    checks_language_mode_first: bool  # the bootstrap's first statement tests the language mode
    uses_dollar_input: bool  # $input makes powershell.exe consume stdin itself


def _code(script: str) -> str:
    """A script without its comments (block comments, and # to the end of a line)."""
    script = re.sub(r"<#.*?#>", "", script, flags=re.S)
    return re.sub(r"(?m)(^|\s)#.*$", "", script)


@cache
def script_facts() -> ScriptFacts:
    """The facts of the scripts keyfleet ships (what a helper sends: common.ps1 first)."""
    return facts_of(
        remote.load_script("export").content.decode("utf-8"),
        remote.load_script(remote.BOOTSTRAP).content.decode("utf-8"),
    )


def facts_of(helper: str, bootstrap: str) -> ScriptFacts:
    """The facts of a helper script and a bootstrap, from their code (comments ignored)."""
    common, bootstrap = _code(helper), _code(bootstrap)
    without_bom = re.search(r"\$(\w+) = New-Object Text\.UTF8Encoding \$false", common)
    sets_console = without_bom is not None and f"[Console]::InputEncoding = ${without_bom.group(1)}" in common
    code = [line.strip() for line in bootstrap.splitlines() if line.strip()]
    return ScriptFacts(
        sets_utf8_console_without_bom=sets_console,
        writes_stdin_bytes=".StandardInput.BaseStream.Write(" in common,
        writes_stdin_lines=bool(re.search(r"StandardInput\.Write(Line)?\(|\$Writer\.Write(Line)?\(", common)),
        tool_folder_is_working_directory="WorkingDirectory = [IO.Path]::GetDirectoryName($ToolPath)" in common,
        checks_language_mode_first=bool(code) and code[0].startswith("if ($ExecutionContext.SessionState.LanguageMode"),
        uses_dollar_input=bool(re.search(r"\$input\b", bootstrap + common, re.IGNORECASE)),
    )


def tool_stdin_bytes(lines: list[str], shell_codepage: int, facts: ScriptFacts) -> tuple[bytes, int]:
    """The bytes SecureStorageBackup.exe reads on stdin when the helper types ``lines``, and the
    code page of the tool's console (inherited from powershell.exe's)."""
    codepage = UTF8_CODEPAGE if facts.sets_utf8_console_without_bom else shell_codepage
    data = encoding_preamble(codepage, utf8_without_bom=facts.sets_utf8_console_without_bom)
    text = "".join(line + "\r\n" for line in lines)  # CRLF: the script's own, and WriteLine's on Windows
    # bytes the script encoded itself (UTF-8) reach the tool as they are; text written through
    # Process.StandardInput (a StreamWriter) is encoded with the console's input code page
    own_bytes = facts.writes_stdin_bytes and not facts.writes_stdin_lines
    return data + text.encode("utf-8" if own_bytes else codec(codepage), "replace"), codepage


def clixml(records: list[tuple[str, str]]) -> bytes:
    """powershell.exe's CLIXML stderr: ``#< CLIXML`` and one ``<Objs>`` of (stream, text) strings,
    CR and LF escaped as ``_x000D_`` and ``_x000A_`` (PowerShell's serializer)."""
    parts = []
    for stream, text in records:
        body = escape(text).replace("\r", "_x000D_").replace("\n", "_x000A_")
        parts.append(f'<S S="{stream}">{body}</S>')
    return f'#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="{_CLIXML_NS}">{"".join(parts)}</Objs>'.encode()


def clixml_progress() -> bytes:
    """The progress record powershell.exe writes on stderr when it first loads a module."""
    return (
        f'#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="{_CLIXML_NS}"><Obj S="progress" RefId="0"><TN RefId="0">'
        "<T>System.Management.Automation.PSCustomObject</T><T>System.Object</T></TN><MS>"
        '<I64 N="SourceId">1</I64><PR N="Record"><AV>Preparing modules for first use.</AV><AI>0</AI><Nil />'
        "<PI>-1</PI><PC>-1</PC><T>Completed</T><SR>-1</SR><SD> </SD></PR></MS></Obj></Objs>"
    ).encode()


def clixml_terminating_error(message: str, line: int, column: int, statement: str) -> bytes:
    """A script-terminating error as powershell.exe -EncodedCommand reports it on stderr."""
    lines = [
        f"{message}\r\n",
        f"At line:{line} char:{column}\r\n",
        f"+ {statement}\r\n",
        "+ " + " " * (column - 1) + "~" * max(1, len(statement) - column + 1) + "\r\n",
        f"    + CategoryInfo          : OperationStopped: ({message[:40]}:String) [], RuntimeException\r\n",
        f"    + FullyQualifiedErrorId : {message[:60]}\r\n",
        " \r\n",
    ]
    return clixml([("Error", text) for text in lines])
