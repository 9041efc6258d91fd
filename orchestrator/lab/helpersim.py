"""The keyfleet bootstrap and helpers as a simulated SCSM server runs them, in Python.

Only the shipped scripts run: the request's script must match its SHA-256 and be byte-identical to
``remote.load_script(helper)``. Each helper is then simulated with the checks in the same order,
the same messages and the same result fields as bootstrap.ps1, common.ps1 and the helper's .ps1.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from orchestrator import remote
from orchestrator.lab.faults import find
from orchestrator.lab.keyfile import ToolRun, tool_backup, tool_restore
from orchestrator.lab.registry import Installation, Registry

DEFAULT_TOOL_TIMEOUT = 120.0
MIN_FREE_BYTES = 10 * 1024 * 1024
MAX_OUTPUT_CHARS = 8000
POWERSHELL_VERSION = "5.1.17763.6414"


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
    server: dict[str, object] | None = None  # role and version once detected, reported with a failure


class SimulatedHelpers:
    """The helpers of one simulated server: its SCSM installation and the key in its registry."""

    def __init__(self, computer_name: str, installation: Installation, registry: Registry) -> None:
        self.computer_name = computer_name
        self.installation = installation
        self.registry = registry

    def bootstrap(self, data: bytes, logon: Logon, cancel: threading.Event) -> tuple[dict[str, object], int]:
        """What bootstrap.ps1 does with its stdin: verify, run the helper; the result document and
        the exit code. Raises Cancelled when ``cancel`` is set while the tool runs."""
        helper: str | None = None
        call: HelperCall | None = None
        try:
            try:
                request = json.loads(data.decode("ascii"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise HelperError("protocol", "Invalid JSON primitive: stdin is not a JSON request") from None
            if not isinstance(request, dict) or request.get("format") != remote.REQUEST_FORMAT:
                raise HelperError("protocol", "stdin does not hold a keyfleet-helper/1 request")
            helper = str(request.get("helper"))
            try:
                code = base64.b64decode(str(request.get("script")), validate=True)
            except binascii.Error:
                raise HelperError("protocol", "The input is not a valid Base-64 string.") from None
            if hashlib.sha256(code).hexdigest() != str(request.get("sha256")):
                raise HelperError("protocol", f"the {helper} helper script does not match its SHA-256")
            if helper not in remote.HELPERS or code != remote.load_script(helper).content:
                raise HelperError(
                    "remote",
                    "keyfleet lab: this helper script is not byte-identical to one keyfleet ships; "
                    "the simulated server runs only shipped helpers",
                )
            secret = request.get("secret")
            params = request.get("params")
            if not isinstance(params, dict):
                raise HelperError("remote", "Cannot bind argument to parameter 'Params' because it is null.")
            run = {"export": self._export, "restore": self._restore, "probe": self._probe}[helper]
            call = HelperCall(params, secret if isinstance(secret, str) else None, logon, cancel)
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

    def _export(self, call: HelperCall) -> dict[str, object]:
        _require_admin(call.logon)
        role = self.installation.reported_role()
        call.server = {"role": role, "version": self.installation.version or None}
        secret = _require_secret(call, "no backup password was given")
        timeout = _tool_timeout(call.params)
        tool = self._require_tool(call.params)
        self._require_free_space(call.logon)
        key = self.registry.load().key
        installed = self.installation.role.value  # the key file names it, even under wrong-role
        run = self._run_tool(
            "Backup", lambda: tool_backup(key, secret, self.computer_name, installed), timeout, call.cancel
        )
        file = run.file or b""
        return {
            "file": base64.b64encode(file).decode("ascii"),
            "sha256": hashlib.sha256(file).hexdigest(),
            "size": len(file),
            **self._tool_fields(role, tool, run),
        }

    def _restore(self, call: HelperCall) -> dict[str, object]:
        _require_admin(call.logon)
        secret = _require_secret(call, "no password for the key file was given")
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
            label = str(expected_name).split(".")[0]
            if label.upper() != self.computer_name:
                raise HelperError(
                    "name-mismatch",
                    f"this server is {self.computer_name} but the key file belongs to {label}: a key can "
                    "only be restored onto a server with the same computer name",
                )
        role = self.installation.reported_role()
        expected_role = call.params.get("expected_role")
        if expected_role and role and role != expected_role:
            raise HelperError("role-mismatch", f"this server is a {role} but the key file belongs to a {expected_role}")
        tool = self._require_tool(call.params)
        self._require_free_space(call.logon)
        run = self._run_tool("Restore", lambda: tool_restore(data, secret, self.computer_name), timeout, call.cancel)
        self.registry.replace_key(run.key or b"")
        return {"sha256": sha256, **self._tool_fields(role, tool, run)}

    def _probe(self, call: HelperCall) -> dict[str, object]:
        tool = self.installation.find_tool(_text(call.params, "tool_path"))
        return {
            "computer_name": self.computer_name,
            "admin": call.logon.admin,
            "role": self.installation.reported_role(),
            "version": self.installation.version or None,
            "tool_path": tool,
            "tool_version": self.installation.version if tool else None,
            "temp_path": call.logon.temp_path,
            "temp_free_bytes": self.installation.free_bytes(),
            "powershell_version": POWERSHELL_VERSION,
            "helper_version": remote.HELPER_VERSION,
        }

    def _require_tool(self, params: dict[str, object]) -> str:
        tool = self.installation.find_tool(_text(params, "tool_path"))
        if tool is None:
            raise HelperError(
                "tool-missing",
                "SecureStorageBackup.exe not found: copy Tools\\SecureStorageBackup from the Service Manager "
                "installation media to this server and set tool_path (or install it in a known location)",
            )
        return tool

    def _require_free_space(self, logon: Logon) -> None:
        free = self.installation.free_bytes()
        if free < MIN_FREE_BYTES:
            raise HelperError(
                "disk-full",
                f"only {free} bytes free on C:\\ (temporary folder {logon.temp_path}); "
                f"at least {MIN_FREE_BYTES} needed",
            )

    def _tool_fields(self, role: str, tool: str, run: ToolRun) -> dict[str, object]:
        return {
            "role": role,
            "version": self.installation.version or None,
            "tool_path": tool,
            "tool_exit": run.exit_code,
            "tool_output": run.output,
            "computer_name": self.computer_name,
            "helper_version": remote.HELPER_VERSION,
        }

    def _run_tool(self, verb: str, run: Callable[[], ToolRun], timeout: float, cancel: threading.Event) -> ToolRun:
        """The tool as Invoke-Tool sees it, tool faults included: a finished, successful run or a
        HelperError; never waits past cancel."""
        faults = self.installation.faults
        if find(faults, "tool-hanging"):
            if cancel.wait(timeout):
                raise Cancelled
            raise HelperError(
                "tool-timeout",
                f"SecureStorageBackup.exe did not finish within {timeout:g} s and was stopped; it may be "
                "waiting for interactive input (a wizard page needs a desktop session). Run it once by "
                "hand on this server, or raise tool_timeout.",
            )
        if find(faults, "tool-failing"):
            what = "Backup" if verb == "Backup" else "Key Restore"
            result = ToolRun(2, f"Secure Storage {what} failed: Keyset does not exist (0x80090016).")
        else:
            result = run()
        output = result.output.strip()
        if len(output) > MAX_OUTPUT_CHARS:
            output = output[:MAX_OUTPUT_CHARS] + "..."
        if result.exit_code != 0:
            raise HelperError(
                "tool-failed", f"SecureStorageBackup.exe {verb} exited with code {result.exit_code}: {output}"
            )
        return replace(result, output=output)


def _require_admin(logon: Logon) -> None:
    if not logon.admin:
        raise HelperError(
            "not-admin",
            f"{logon.account.upper()} is not a local administrator; SecureStorageBackup.exe needs administrator rights",
        )


def _require_secret(call: HelperCall, missing: str) -> str:
    if not call.secret:
        raise HelperError("remote", missing)
    return call.secret


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
