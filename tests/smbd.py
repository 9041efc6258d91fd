"""A private Samba smbd on 127.0.0.1 for tests: own config, user database, port and share folder.

Import the session fixture into a test module with ``from tests.smbd import smbd_server  # noqa: F401``.
Where smbd is missing the tests skip, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from orchestrator.secret import Secret

SMB_USER = "keyfleetsmb"
SHARE_NAME = "backup"
ENCRYPTED_SHARE_NAME = "sealed"
_START_TIMEOUT = 15.0
_PR_SET_PDEATHSIG = 1
_TOOLS = ("smbd", "smbpasswd", "smbstatus", "useradd")


def _tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


def missing_requirement() -> str | None:
    """Why a private smbd cannot run here, or None when it can."""
    for name in _TOOLS:
        if _tool(name) is None:
            return f"{name} is not installed (apt-get install --no-install-recommends samba)"
    if os.geteuid() != 0:
        return "starting a private smbd needs root (it creates a Unix account and switches users)"
    return None


def _terminate_with_parent() -> None:
    """In the child before exec: get SIGTERM if the test runner dies (even by SIGKILL)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ensure_unix_user(name: str) -> None:
    """Create the account once; pytest-xdist workers race here, the loser finds it made (or /etc/passwd locked)."""
    useradd = [_tool("useradd") or "useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]
    for _ in range(50):
        if subprocess.run(["id", "-u", name], capture_output=True, check=False).returncode == 0:
            return
        if subprocess.run(useradd, capture_output=True, check=False).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(useradd, check=True, capture_output=True)  # still failing: raise with its exit status


def _config(base: Path, port: int) -> str:
    return f"""[global]
    server role = standalone server
    workgroup = KEYFLEET
    netbios name = KEYFLEETTEST
    smb ports = {port}
    interfaces = lo
    bind interfaces only = yes
    disable netbios = yes
    server min protocol = SMB2_10
    passdb backend = tdbsam:{base}/private/passdb.tdb
    private dir = {base}/private
    lock directory = {base}/lock
    state directory = {base}/state
    cache directory = {base}/cache
    pid directory = {base}/pid
    ncalrpc dir = {base}/ncalrpc
    usershare path = {base}/usershares
    log file = {base}/log/smbd.log
    log level = 1
    max log size = 0
    map to guest = never
    load printers = no
    printing = bsd
    printcap name = /dev/null
    disable spoolss = yes

[{SHARE_NAME}]
    path = {base}/share
    read only = no
    valid users = {SMB_USER}
    create mask = 0600
    directory mask = 0700

[{ENCRYPTED_SHARE_NAME}]
    path = {base}/sealed
    read only = no
    valid users = {SMB_USER}
    server smb encrypt = required
"""


@dataclass
class SmbServer:
    """A running private smbd and how to reach it. ``root`` is the share's folder on disk."""

    base: Path
    port: int
    host: str = "127.0.0.1"
    share: str = SHARE_NAME
    encrypted_share: str = ENCRYPTED_SHARE_NAME
    user: str = SMB_USER
    password: Secret = field(default_factory=lambda: Secret(secrets.token_urlsafe(18), "test smbd password"))
    _process: subprocess.Popen[bytes] | None = None

    @property
    def root(self) -> Path:
        return self.base / "share"

    @property
    def sealed_root(self) -> Path:
        return self.base / "sealed"

    @property
    def config(self) -> Path:
        return self.base / "smb.conf"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def setup(self) -> None:
        """Write the configuration, the folders and the SMB user (once)."""
        self.base.chmod(0o711)  # the SMB user must traverse into its share folders
        (self.base / "private").mkdir(mode=0o700)
        # As in a packaged Samba, the rest must be readable by smbd children running as the user: they
        # check whether another child is alive via lock/msg.lock/<pid>, and treat "cannot read" as dead
        # (which silently drops that child's share modes: a "no sharing" open would not exclude).
        for name in ("lock", "state", "cache", "pid", "ncalrpc", "usershares", "log"):
            folder = self.base / name
            folder.mkdir()
            folder.chmod(0o755)
        _ensure_unix_user(self.user)
        for folder in (self.root, self.sealed_root):
            folder.mkdir(mode=0o700)
            shutil.chown(folder, user=self.user)
        self.config.write_text(_config(self.base, self.port))
        secret = self.password.reveal()
        subprocess.run(
            [_tool("smbpasswd") or "smbpasswd", "-c", str(self.config), "-s", "-a", self.user],
            input=f"{secret}\n{secret}\n".encode(),
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        """Start smbd; it calls setsid() itself, so signals to its process group never reach the runner.

        (Never ``--no-process-group``: on SIGTERM smbd signals its whole process group. Nor
        ``start_new_session``: smbd's own setsid() then fails and it exits.)
        """
        if self.running:
            return
        stdout = (self.base / "log" / "smbd.stdout").open("ab")
        with stdout:
            self._process = subprocess.Popen(
                [_tool("smbd") or "smbd", "--foreground", f"--configfile={self.config}"],
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                preexec_fn=_terminate_with_parent,
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"smbd exited with {self._process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                if os.getpgid(self._process.pid) == self._process.pid:  # its setsid() is done
                    return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"smbd did not listen on {self.host}:{self.port}:\n{self.log_tail()}")

    def _signal_group(self, signum: int, wait: float) -> None:
        process = self._process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
        try:
            process.wait(timeout=wait)
        finally:
            # The per-connection children and helpers share its process group: none may outlive it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=wait)
            self._process = None

    def stop(self) -> None:
        """Stop smbd cleanly (SIGTERM to its process group) and wait for it."""
        self._signal_group(signal.SIGTERM, wait=10.0)

    def kill(self) -> None:
        """Kill smbd and every child at once, as a crash or a power cut would."""
        self._signal_group(signal.SIGKILL, wait=10.0)

    def status(self) -> dict[str, Any]:
        """What the server reports (``smbstatus --json``): sessions, tree connects, open files."""
        result = subprocess.run(
            [_tool("smbstatus") or "smbstatus", "-s", str(self.config), "--json"],
            capture_output=True,
            check=True,
            text=True,
        )
        return dict(json.loads(result.stdout))

    def open_file_encryption(self, filename: str) -> str:
        """The encryption degree ("full", "none") of the tree connect that holds ``filename`` open."""
        status = self.status()
        pids = {
            held["server_id"]["pid"]
            for path, entry in status["open_files"].items()
            if path.endswith(filename)
            for held in entry["opens"].values()
        }
        degrees = {
            tcon["encryption"]["degree"] for tcon in status["tcons"].values() if tcon["server_id"]["pid"] in pids
        }
        if len(degrees) != 1:
            raise AssertionError(f"expected one tree connect holding {filename}, found {degrees}")
        return degrees.pop()

    def log_tail(self, lines: int = 30) -> str:
        text = ""
        for name in ("smbd.log", "smbd.stdout"):
            path = self.base / "log" / name
            if path.exists():
                text += path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def url(self, path: str = "", share: str | None = None) -> str:
        """The share URL a controller uses (the password goes in ``KEYFLEET_SHARE_PASSWORD``)."""
        tail = f"/{path}" if path else ""
        return f"smb://{self.user}@{self.host}:{self.port}/{share or self.share}{tail}"

    def share_env(self) -> dict[str, str]:
        """The environment that gives a keyfleet process this server's credentials."""
        return {"KEYFLEET_SHARE_USER": self.user, "KEYFLEET_SHARE_PASSWORD": self.password.reveal()}


@pytest.fixture(scope="session")
def smbd_server() -> Iterator[SmbServer]:
    """One private smbd for the whole test session; stopped and removed afterwards."""
    reason = missing_requirement()
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but the SMB tests cannot run: {reason}")
        pytest.skip(f"SMB tests skipped: {reason}")
    server = SmbServer(base=Path(tempfile.mkdtemp(prefix="keyfleet-smbd-")), port=_free_port())
    try:
        server.setup()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.base, ignore_errors=True)
