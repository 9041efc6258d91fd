"""The keyfleet bootstrap and helpers as a simulated SCSM server runs them, in Python.

Only the shipped scripts run: the request's script must match its SHA-256 and be byte-identical to
``remote.load_script(helper)``. Each helper is then simulated with the checks in the same order,
the same messages and the same result fields as bootstrap.ps1, common.ps1, conpty.ps1 and the
helper's .ps1; functions named after a PowerShell function do what it does. How the password's
bytes reach SecureStorageBackup.exe follows the shipped scripts (``windows.script_facts``) and
.NET Framework's behaviour (``windows``), and the tool (``tool``) reads them as a real one would.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from orchestrator.helpers import remote
from orchestrator.inventory.model import netbios_name
from orchestrator.lab.faults import find
from orchestrator.lab.keyfile import ToolRun, tool_backup, tool_restore
from orchestrator.lab.registry import (
    DEFAULT_INSTALL_FOLDERS,
    OUTBOX_PATH,
    SDK_SERVICE_KEY,
    SETUP_KEY,
    TOOL_NAME,
    TOOL_SUBFOLDER,
    Installation,
    Registry,
    windows_join,
)
from orchestrator.lab.tool import Behaviour, Exited, ToolProcess
from orchestrator.lab.windows import (
    CONPTY_MIN_BUILD,
    CommandOptions,
    console_read_lines,
    script_facts,
    tool_stdin_bytes,
)

DEFAULT_TOOL_TIMEOUT = 120.0
MIN_FREE_BYTES = 10 * 1024 * 1024
MAX_OUTPUT_CHARS = 8000
POWERSHELL_VERSION = "5.1.20348.2849"
MASKED_READ = remote.MASKED_READ_MESSAGE
STALL_SECONDS = 15  # $StallSeconds in common.ps1
_MICROSOFT_SM = re.compile(r"^(Microsoft )?System Center( \d{4})?( R2)? Service Manager( \d{4})?$")
_VT = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


class HelperError(Exception):
    """A failure the helper reports in its result line (kind as in Exception.Data['KeyfleetKind'])."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class Cancelled(Exception):
    """The command was terminated (Signal, Delete, server stop) while the helper ran."""


@dataclass(frozen=True)
class Logon:
    """The logon session a helper runs in, as the server sets it up for the WinRM user."""

    account: str  # DOMAIN\\name, as whoami prints it
    admin: bool  # the token is an administrator's
    temp_path: str  # [IO.Path]::GetTempPath() of the user's profile


@dataclass
class HelperCall:
    """One helper run: what the bootstrap passes it (-Params, -Secret) and the session it runs in."""

    params: dict[str, object]
    secret: str | None = field(repr=False)
    logon: Logon
    cancel: threading.Event
    options: CommandOptions
    server: dict[str, object] | None = None  # roles and version once detected, reported with a failure


class SimulatedHelpers:
    """The helpers of one simulated server: its SCSM installation and the key in its registry."""

    def __init__(self, computer_name: str, installation: Installation, registry: Registry) -> None:
        self.computer_name = computer_name
        self.installation = installation
        self.registry = registry

    def bootstrap(
        self, data: bytes, logon: Logon, cancel: threading.Event, options: CommandOptions | None = None
    ) -> tuple[dict[str, object], int]:
        """What bootstrap.ps1 does with its stdin: verify, run the helper; the result document and
        the exit code. Raises Cancelled when ``cancel`` is set while the tool runs."""
        helper: str | None = None
        call: HelperCall | None = None
        options = options or CommandOptions()
        try:
            lines = read_lines(data, options.codepage)
            if len(lines) < 2:
                raise HelperError("protocol", "stdin ended before a whole keyfleet-helper/2 request arrived")
            request_line, secret_line = lines[0], lines[1]
            try:
                request = json.loads(request_line)
            except json.JSONDecodeError:
                raise HelperError("protocol", "Invalid JSON primitive: the request line is not JSON") from None
            if not isinstance(request, dict) or request.get("format") != remote.REQUEST_FORMAT:
                raise HelperError("protocol", "stdin does not hold a keyfleet-helper/2 request")
            helper = str(request.get("helper"))
            code = _base64(str(request.get("script")))
            if hashlib.sha256(code).hexdigest() != str(request.get("sha256")):
                raise HelperError("protocol", f"the {helper} helper script does not match its SHA-256")
            if helper not in remote.HELPERS or code != remote.load_script(helper).content:
                raise HelperError(
                    "remote",
                    "keyfleet lab: this helper script is not byte-identical to one keyfleet ships; "
                    "the simulated server runs only shipped helpers",
                )
            secret = _base64(secret_line).decode("utf-8", "replace") if secret_line else None
            params = request.get("params")
            if not isinstance(params, dict):
                raise HelperError("remote", "Cannot bind argument to parameter 'Params' because it is null.")
            run: Callable[[HelperCall], dict[str, object]] = {
                "export": self._export,
                "restore": self._restore,
                "probe": self._probe,
                "smoke": self._smoke,
                "collect": self._collect,
            }[helper]
            call = HelperCall(params, secret, logon, cancel, options)
            result = run(call)
        except HelperError as exc:
            failure: dict[str, object] = {
                "ok": False,
                "helper": helper,
                "error": {"kind": exc.kind, "message": exc.message},
            }
            if call is not None and call.server is not None:
                failure["server"] = call.server
            return failure, 1
        return {"ok": True, "helper": helper, "result": result}, 0

    # -- helpers ----------------------------------------------------------------------------------

    def _export(self, call: HelperCall) -> dict[str, object]:
        _assert_administrator(call.logon)
        roles, version = self.get_scsm_roles(), self.get_scsm_version()
        call.server = {"roles": roles, "version": version}
        _require_secret(call, "no backup password was given")
        timeout = _tool_timeout(call.params)
        tool = self.get_required_tool(call.params)
        folder = self._new_private_folder(call.logon)
        key = self.registry.load().key
        installed = self.installation.role.value  # the key file names it, even under wrong-role
        try:
            run = self.invoke_tool(
                call, tool, "Backup", lambda pw: tool_backup(key, pw, self.computer_name, installed), timeout
            )
            if run.exit_code != 0:
                raise HelperError(
                    "tool-failed", f"SecureStorageBackup.exe Backup exited with code {run.exit_code}: {run.output}"
                )
            if run.file is None:
                raise HelperError(
                    "tool-failed",
                    f"SecureStorageBackup.exe Backup exited with code 0 but wrote no key file: {run.output}",
                )
            result: dict[str, object] = {
                "file": base64.b64encode(run.file).decode("ascii"),
                "sha256": hashlib.sha256(run.file).hexdigest(),
                "size": len(run.file),
                **self._tool_fields(roles, version, tool, run),
            }
        finally:
            cleanup = self._remove_private_folder(folder)
        if cleanup:
            result["cleanup_warning"] = cleanup
        return result

    def _restore(self, call: HelperCall) -> dict[str, object]:
        _assert_administrator(call.logon)
        _require_secret(call, "no password for the key file was given")
        timeout = _tool_timeout(call.params)
        encoded = call.params.get("file")
        if not encoded:
            raise HelperError("protocol", "the request holds no key file")
        try:
            data = base64.b64decode(str(encoded), validate=True)
        except binascii.Error:
            raise HelperError("protocol", "the key file in the request is not valid base64") from None
        if len(data) > remote.MAX_KEY_FILE_BYTES:
            raise HelperError(
                "protocol", f"the key file in the request is larger than {remote.MAX_KEY_FILE_BYTES} bytes"
            )
        sha256 = hashlib.sha256(data).hexdigest()
        if sha256 != str(call.params.get("sha256")):
            raise HelperError("integrity", "the key file received does not match its SHA-256; nothing was restored")
        expected_name = call.params.get("expected_computer_name")
        if expected_name:
            label = netbios_name(str(expected_name))  # restore.ps1: the first label, compared without case
            if label != self.computer_name:
                raise HelperError(
                    "name-mismatch",
                    f"this server is {self.computer_name} but the key file belongs to {label}: a key can "
                    "only be restored onto a server with the same computer name",
                )
        roles = self.get_scsm_roles()
        expected_role = call.params.get("expected_role")
        if expected_role and roles and expected_role not in roles:
            raise HelperError(
                "role-mismatch", f"this server is a {' and '.join(roles)} but the key file belongs to a {expected_role}"
            )
        version = self.get_scsm_version()
        tool = self.get_required_tool(call.params)
        folder = self._new_private_folder(call.logon)
        try:
            run = self.invoke_tool(
                call, tool, "Restore", lambda pw: tool_restore(data, pw, self.computer_name), timeout
            )
            if run.exit_code != 0:
                raise HelperError(
                    "tool-failed", f"SecureStorageBackup.exe Restore exited with code {run.exit_code}: {run.output}"
                )
            self.registry.replace_key(run.key or b"")
            result: dict[str, object] = {"sha256": sha256, **self._tool_fields(roles, version, tool, run)}
        finally:
            cleanup = self._remove_private_folder(folder)
        if cleanup:
            result["cleanup_warning"] = cleanup
        return result

    def _probe(self, call: HelperCall) -> dict[str, object]:
        tool = self.find_tool(call.params)
        return {
            "computer_name": self.computer_name,
            "admin": call.logon.admin,
            "roles": self.get_scsm_roles(),
            "version": self.get_scsm_version(),
            "tool_path": tool,
            "tool_version": self.installation.version if tool else None,
            "tool_candidates": self.get_tool_candidates(call.params),
            "temp_path": call.logon.temp_path,
            "temp_free_bytes": self.installation.free_bytes(),
            "powershell_version": POWERSHELL_VERSION,
            "os_build": self.installation.windows_build,
            "helper_version": remote.HELPER_VERSION,
        }

    def _smoke(self, call: HelperCall) -> dict[str, object]:
        _assert_administrator(call.logon)
        timeout = _tool_timeout(call.params)
        tool = self.get_required_tool(call.params)
        call.secret = base64.b64encode(uuid.uuid4().bytes + uuid.uuid4().bytes[:2]).decode("ascii")  # throwaway
        key = self.registry.load().key
        installed = self.installation.role.value
        attempts: list[dict[str, object]] = []
        works: str | None = None
        cleanup: str | None = None
        for method in ("stdin", "console"):
            folder = self._new_private_folder(call.logon)
            try:
                finish = lambda pw: tool_backup(key, pw, self.computer_name, installed)  # noqa: E731
                try:
                    if method == "stdin":
                        run, stalled = self.invoke_tool_stdin(call, tool, finish, timeout, watch_stall=True)
                    else:
                        run, stalled = self.invoke_tool_console(call, tool, finish, timeout), False
                    wrote = bool(run.file)
                    attempts.append(
                        {
                            "method": method,
                            "exit": run.exit_code,
                            "output": run.output,
                            "stalled": stalled,
                            "wrote_file": wrote,
                        }
                    )
                    if run.exit_code == 0 and wrote:
                        works = method
                except HelperError as exc:
                    attempts.append(
                        {"method": method, "exit": None, "output": exc.message, "kind": exc.kind, "wrote_file": False}
                    )
            finally:
                cleanup = self._remove_private_folder(folder)
            if works:
                break
        result: dict[str, object] = {
            "tool_path": tool,
            "works": works,
            "attempts": attempts,
            "os_build": self.installation.windows_build,
            "computer_name": self.computer_name,
            "helper_version": remote.HELPER_VERSION,
        }
        if cleanup:
            result["cleanup_warning"] = cleanup
        return result

    def _collect(self, call: HelperCall) -> dict[str, object]:
        _assert_administrator(call.logon)
        folder = str(call.params.get("path") or "")
        if not folder:
            raise HelperError("remote", "no outbox folder was given")
        roles, version = self.get_scsm_roles(), self.get_scsm_version()
        call.server = {"roles": roles, "version": version}
        if folder.rstrip("\\").lower() != OUTBOX_PATH.lower() or not self.registry.outbox_dir.is_dir():
            raise HelperError(
                "no-key-file",
                f"the outbox folder {folder} does not exist: run the wizard (SecureStorageBackup.exe) and save "
                "the key file there",
            )
        files = self.registry.outbox_files()
        if call.params.get("action") == "remove":
            name = str(call.params.get("name") or "").replace("/", "\\").rsplit("\\", 1)[-1]
            target = windows_join(folder, name)
            found = next((data for n, data, _ in files if n.lower() == name.lower()), None)
            if found is None:
                raise HelperError("remote", f"{target} no longer exists")
            if hashlib.sha256(found).hexdigest() != str(call.params.get("sha256")):
                raise HelperError("integrity", f"{target} changed since keyfleet collected it; it was not removed")
            self.registry.remove_from_outbox(name)
            return {"removed": target, "computer_name": self.computer_name, "helper_version": remote.HELPER_VERSION}
        if not files:
            raise HelperError(
                "no-key-file",
                f"no key file (*.bin) in {folder}: run the wizard (SecureStorageBackup.exe) and save the key "
                "file there",
            )
        name, data, written = max(files, key=lambda f: f[2])
        if not 0 < len(data) <= remote.MAX_KEY_FILE_BYTES:
            raise HelperError(
                "tool-failed",
                f"{windows_join(folder, name)} has {len(data)} bytes (expected 1 to {remote.MAX_KEY_FILE_BYTES})",
            )
        return {
            "file": base64.b64encode(data).decode("ascii"),
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "name": name,
            "written": datetime.fromtimestamp(written, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "roles": roles,
            "version": version,
            "method": "wizard",
            "computer_name": self.computer_name,
            "helper_version": remote.HELPER_VERSION,
        }

    # -- common.ps1 -------------------------------------------------------------------------------

    def get_scsm_roles(self) -> list[str]:
        values = self.installation.registry_values()
        roles = []
        sdk_type = values.get(SDK_SERVICE_KEY.lower(), {}).get("SDK Service Type")
        if sdk_type == 1:
            roles.append("management_server")
        elif sdk_type == 2:
            roles.append("dw_management_server")
        if values.get(SETUP_KEY.lower(), {}).get("PortalVirtualDirectory") is not None:
            roles.append("self_service_portal")
        return roles

    def get_scsm_version(self) -> str | None:
        server_version = self.installation.registry_values().get(SETUP_KEY.lower(), {}).get("ServerVersion")
        if server_version:
            return str(server_version)
        best: tuple[int, ...] | None = None
        for entry in self.installation.uninstall_entries():
            if entry.get("Publisher") != "Microsoft Corporation" or not _MICROSOFT_SM.match(entry["DisplayName"]):
                continue
            parsed = tuple(int(p) for p in entry["DisplayVersion"].split("."))
            if best is None or parsed > best:
                best = parsed
        return None if best is None else ".".join(str(p) for p in best)

    def get_tool_folders(self) -> list[str]:
        folders = list(DEFAULT_INSTALL_FOLDERS)
        install_directory = self.installation.registry_values().get(SETUP_KEY.lower(), {}).get("InstallDirectory")
        if install_directory:
            folders.insert(0, str(install_directory).rstrip("\\"))
        return folders

    def get_tool_candidates(self, params: dict[str, object]) -> list[str]:
        candidates = []
        configured = _text(params, "tool_path")
        if configured:
            candidates.append(configured)
        for folder in self.get_tool_folders():
            candidates.append(windows_join(folder, TOOL_NAME))
            candidates.append(windows_join(folder, TOOL_SUBFOLDER, TOOL_NAME))
        return candidates

    def find_tool(self, params: dict[str, object]) -> str | None:
        return next((c for c in self.get_tool_candidates(params) if self.installation.file_exists(c)), None)

    def get_required_tool(self, params: dict[str, object]) -> str:
        tool = self.find_tool(params)
        if tool is None:
            where = "; ".join(self.get_tool_folders())
            configured = _text(params, "tool_path")
            if configured:
                where = f"tool_path {configured}; {where}"
            raise HelperError(
                "tool-missing",
                f"SecureStorageBackup.exe not found in {where} (each folder also under Tools\\SecureStorageBackup): "
                "copy Tools\\SecureStorageBackup from the Service Manager installation media to this server and "
                "set tool_path",
            )
        return tool

    def _new_private_folder(self, logon: Logon) -> str:
        free = self.installation.free_bytes()
        if free < MIN_FREE_BYTES:
            raise HelperError(
                "disk-full",
                f"only {free} bytes free on C:\\ (temporary folder {logon.temp_path}); "
                f"at least {MIN_FREE_BYTES} needed",
            )
        return f"{logon.temp_path}keyfleet-{uuid.uuid4().hex}"

    def _remove_private_folder(self, folder: str) -> str | None:
        if find(self.installation.faults, "cleanup-locked") is None:
            return None
        return (
            f"could not remove the temporary folder {folder} after 5 attempts: The process cannot access the file "
            f"'{folder}\\SMBackupkey.bin' because it is being used by another process."
        )

    def _tool_process(self, finish: Callable[[str], ToolRun]) -> ToolProcess:
        faults = self.installation.faults
        behaviour = Behaviour.STDIN
        if find(faults, "tool-readkey"):
            behaviour = Behaviour.READKEY
        elif find(faults, "tool-wizard-only"):
            behaviour = Behaviour.WIZARD_ONLY
        elif find(faults, "tool-hanging"):
            behaviour = Behaviour.HANGING
        if find(faults, "tool-failing"):
            failing = ToolRun(2, "Secure Storage Backup failed: Keyset does not exist (0x80090016).")
            finish = lambda _pw: failing  # noqa: E731
        return ToolProcess(
            behaviour,
            finish,
            exits_early=find(faults, "tool-exits-early") is not None,
            in_own_folder=script_facts().tool_folder_is_working_directory,
        )

    def invoke_tool(
        self, call: HelperCall, tool: str, verb: str, finish: Callable[[str], ToolRun], timeout: float
    ) -> ToolRun:
        """Invoke-Tool: tool_input stdin, console, or auto (stdin, then the console after a masked read)."""
        mode = _text(call.params, "tool_input") or "auto"
        if mode not in ("auto", "stdin", "console"):
            raise HelperError("remote", f"tool_input must be auto, stdin or console, not '{mode}'")
        if mode == "console":
            return self.invoke_tool_console(call, tool, finish, timeout)
        run, stalled = self.invoke_tool_stdin(call, tool, finish, timeout, watch_stall=mode == "auto")
        masked = stalled or (run.exit_code != 0 and MASKED_READ in run.output)
        if mode == "auto" and masked:
            return self.invoke_tool_console(call, tool, finish, timeout)
        return run

    def invoke_tool_stdin(
        self, call: HelperCall, tool: str, finish: Callable[[str], ToolRun], timeout: float, *, watch_stall: bool
    ) -> tuple[ToolRun, bool]:
        """Invoke-ToolStdin: the tool with redirected stdin; the password written as the script writes it."""
        password = call.secret or ""
        data, codepage = tool_stdin_bytes([password, password], call.options.codepage, script_facts())
        outcome = self._tool_process(finish).run_redirected(data, codepage)
        if not isinstance(outcome, Exited):
            if watch_stall and "password" in outcome.output.lower() and timeout > STALL_SECONDS:
                # a prompt, then no output for $StallSeconds: a masked read (Invoke-ToolStdin stops the tool)
                self._wait(call.cancel, STALL_SECONDS)
                return _bounded(ToolRun(-1, outcome.output), outcome.output, "stdin"), True
            self._wait(call.cancel, timeout)
            if not outcome.output:
                raise HelperError(
                    "tool-interactive",
                    f"SecureStorageBackup.exe showed no prompt in {timeout:g} s and was stopped: it waits for a "
                    "desktop (the wizard): run the wizard on this server (a backup's key file is then taken with "
                    "keyfleet collect).",
                )
            raise HelperError(
                "tool-timeout",
                f"SecureStorageBackup.exe did not finish within {timeout:g} s and was stopped. Run keyfleet doctor "
                "--tool-smoke, or raise tool_timeout.",
            )
        run = outcome.run
        return _bounded(run, run.output.replace(password, "********") if password else run.output, "stdin"), False

    def invoke_tool_console(
        self, call: HelperCall, tool: str, finish: Callable[[str], ToolRun], timeout: float
    ) -> ToolRun:
        """Invoke-ToolConsole (conpty.ps1): the tool on a pseudo console; the helper waits for each
        password prompt and types the password and Enter (CR)."""
        if self.installation.windows_build < CONPTY_MIN_BUILD:
            raise HelperError(
                "console-unavailable",
                f"this server runs Windows build {self.installation.windows_build}: Windows Server 2016 has no pseudo "
                "console (ConPTY needs Windows Server 2019, build 17763). Use tool_input stdin if the tool reads "
                "stdin, or run the wizard (a backup's key file is then taken with keyfleet collect).",
            )
        password = call.secret or ""
        answered = 0

        def typist(screen: str) -> bytes | None:
            nonlocal answered
            prompts = _VT.sub("", screen).lower().count("password")
            if prompts > answered:
                answered += 1
                return password.encode("utf-8") + b"\r"
            return None

        outcome = self._tool_process(finish).run_console(typist)
        if not isinstance(outcome, Exited):
            self._wait(call.cancel, timeout)
            kind = "tool-timeout" if "password" in outcome.output.lower() else "tool-interactive"
            raise HelperError(
                kind,
                f"SecureStorageBackup.exe did not finish within {timeout:g} s on the pseudo console and was stopped"
                + (
                    ""
                    if kind == "tool-timeout"
                    else ": it showed no password prompt (the wizard): run the wizard on the server (a backup's key "
                    "file is then taken with keyfleet collect)"
                ),
            )
        run = outcome.run
        output = _VT.sub("", run.output)
        return _bounded(run, output.replace(password, "********") if password else output, "console")

    def _wait(self, cancel: threading.Event, timeout: float) -> None:
        if cancel.wait(timeout):
            raise Cancelled

    def _tool_fields(self, roles: list[str], version: str | None, tool: str, run: ToolRun) -> dict[str, object]:
        return {
            "roles": roles,
            "version": version,
            "tool_path": tool,
            "tool_exit": run.exit_code,
            "tool_output": run.output,
            "method": run.method,
            "computer_name": self.computer_name,
            "helper_version": remote.HELPER_VERSION,
        }


def _bounded(run: ToolRun, output: str, method: str) -> ToolRun:
    output = output.strip()
    if len(output) > MAX_OUTPUT_CHARS:
        output = output[:MAX_OUTPUT_CHARS] + "..."
    return replace(run, output=output, method=method)


def read_lines(data: bytes, codepage: int) -> list[str]:
    """What successive ``Console.ReadLine`` calls return before null (end of stream)."""
    if not data:
        return []
    lines = console_read_lines(data, codepage)
    if lines and lines[-1] == "":
        lines.pop()  # the text after the last line end is empty: no further line
    return lines


def _assert_administrator(logon: Logon) -> None:
    if not logon.admin:
        raise HelperError(
            "not-admin",
            f"{logon.account.upper()} is not a local administrator; SecureStorageBackup.exe needs administrator rights",
        )


def _require_secret(call: HelperCall, missing: str) -> str:
    if not call.secret:
        raise HelperError("remote", missing)
    return call.secret


def _base64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise HelperError("protocol", "The input is not a valid Base-64 string.") from None


def _text(params: dict[str, object], name: str) -> str | None:
    value = params.get(name)
    return None if value is None or value == "" else str(value)


def _tool_timeout(params: dict[str, object]) -> float:
    value = params.get("tool_timeout")
    if value is None:
        return DEFAULT_TOOL_TIMEOUT
    try:
        seconds = float(value) if isinstance(value, int | float | str) and not isinstance(value, bool) else 0.0
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise HelperError("remote", f"tool_timeout must be a positive number of seconds, not '{value}'")
    return seconds
