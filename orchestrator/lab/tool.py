"""The simulated SecureStorageBackup.exe as a process: how it reads its password and what it prints.

Three behaviours, as a real server may show (Microsoft documents only the wizard for Service
Manager; the command-line form with "enter the password" / "re-enter your password" prompts comes
from Operations Manager): ``stdin`` reads two lines with ``Console.ReadLine`` (from a pipe or a
console); ``readkey`` reads masked keys with ``Console.ReadKey(true)``, which throws under a
redirected stdin; ``wizard-only`` shows no prompt and waits for a desktop. Bytes are decoded as
.NET Framework decodes them (``windows.console_read_lines``), so a BOM or a wrong line end makes
the password differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from orchestrator.lab.keyfile import ToolRun
from orchestrator.lab.windows import (
    PSEUDO_CONSOLE_ENTER,
    READKEY_REDIRECTED,
    UNHANDLED_EXCEPTION_EXIT,
    console_read_lines,
)

PROMPT = "Enter the password: "
CONFIRM = "Re-enter your password: "
MISMATCH = "The passwords do not match."
NO_INPUT = "No password was entered."
EARLY_EXIT = "The Service Manager Data Access service could not be contacted; no key was read."
DLL_LOAD_FAILURE = (
    "Unhandled Exception: System.IO.FileNotFoundException: Could not load file or assembly "
    "'Microsoft.EnterpriseManagement.Core, Version=7.0.5000.0, Culture=neutral, PublicKeyToken=31bf3856ad364e35' "
    "or one of its dependencies. The system cannot find the file specified."
)


class Behaviour(StrEnum):
    STDIN = "stdin"
    READKEY = "readkey"
    WIZARD_ONLY = "wizard-only"
    HANGING = "hanging"  # asks for the password, then never finishes (the tool-hanging fault)


@dataclass(frozen=True)
class Hang:
    """The tool is still running when the helper stops waiting (a desktop, or a key never typed)."""

    output: str


@dataclass(frozen=True)
class Exited:
    """The tool finished; ``read_stdin`` is False when it ended without reading its stdin (a write
    to it then fails with a broken pipe)."""

    run: ToolRun
    read_stdin: bool = True


Outcome = Hang | Exited
# the helper at the pseudo console: given the screen so far, the keystrokes it types (None: it waits)
Typist = Callable[[str], bytes | None]


@dataclass(frozen=True)
class ToolProcess:
    """One start of the tool: its behaviour, its faults, and what it does with a password."""

    behaviour: Behaviour
    finish: Callable[[str], ToolRun]  # Backup or Restore, given the password read
    exits_early: bool = False  # the tool-exits-early fault
    in_own_folder: bool = True  # started with its own folder as working directory

    def _refusal(self) -> Exited | None:
        if not self.in_own_folder:  # Operations Manager's documentation: it fails to load its DLLs
            return Exited(ToolRun(UNHANDLED_EXCEPTION_EXIT, DLL_LOAD_FAILURE), read_stdin=False)
        if self.exits_early:
            return Exited(ToolRun(1, EARLY_EXIT), read_stdin=False)
        return None

    def run_redirected(self, stdin: bytes, codepage: int) -> Outcome:
        """The tool with stdin, stdout and stderr redirected to pipes; ``stdin`` is all it will get."""
        refused = self._refusal()
        if refused:
            return refused
        if self.behaviour is Behaviour.WIZARD_ONLY:
            return Hang("")
        if self.behaviour is Behaviour.HANGING:
            return Hang(PROMPT)
        if self.behaviour is Behaviour.READKEY:
            trace = (
                "   at System.Console.ReadKey(Boolean intercept)\r\n   at SecureStorageBackup.Program.ReadPassword()"
            )
            message = f"Unhandled Exception: System.InvalidOperationException: {READKEY_REDIRECTED}\r\n{trace}"
            return Exited(ToolRun(UNHANDLED_EXCEPTION_EXIT, PROMPT + "\r\n" + message))
        lines = console_read_lines(stdin, codepage)
        if len(lines) < 3:  # two lines, each ended (the text after the last line end is the rest)
            return Exited(ToolRun(1, PROMPT + "\r\n" + NO_INPUT))
        return Exited(self._compare(lines[0], lines[1], PROMPT + "\r\n" + CONFIRM + "\r\n"))

    def run_console(self, typist: Typist) -> Outcome:
        """The tool attached to a pseudo console: it prints prompts and reads keystrokes."""
        refused = self._refusal()
        if refused:
            return refused
        screen = ""
        if self.behaviour is Behaviour.WIZARD_ONLY:
            typist(screen)
            return Hang(screen)
        if self.behaviour is Behaviour.HANGING:
            typist(PROMPT)
            return Hang(PROMPT)
        keys = ""
        entries: list[str] = []
        for prompt in (PROMPT, CONFIRM):
            screen += prompt
            while PSEUDO_CONSOLE_ENTER.decode() not in keys:
                typed = typist(screen)
                if typed is None:
                    return Hang(screen)
                keys += typed.decode("utf-8", "replace")
            entry, _, keys = keys.partition(PSEUDO_CONSOLE_ENTER.decode())
            entries.append(entry)
            # ReadKey(true) echoes nothing, the tool prints a star a key; ReadLine's cooked mode echoes
            screen += ("*" * len(entry) if self.behaviour is Behaviour.READKEY else entry) + "\r\n"
        return Exited(self._compare(entries[0], entries[1], screen))

    def _compare(self, first: str, second: str, shown: str) -> ToolRun:
        if first != second:
            return ToolRun(1, shown + MISMATCH)
        run = self.finish(first)
        return ToolRun(run.exit_code, shown + run.output, run.file, run.key)
