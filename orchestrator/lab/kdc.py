"""A private MIT Kerberos KDC for the lab: own realm, database, krb5.conf, port on loopback, keytabs.

Debian packages krb5-kdc and krb5-admin-server provide ``krb5kdc``, ``kdb5_util`` and ``kadmin.local``.
Secrets (the database master key, user passwords) reach those tools on stdin, never on a command line.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.errors import KeyfleetError
from orchestrator.privatefile import write_private

_TOOLS = ("krb5kdc", "kdb5_util", "kadmin.local")
_START_TIMEOUT = 15.0
_TOOL_TIMEOUT = 60.0
ENCTYPES = "aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal"


def tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


def missing_requirement() -> str | None:
    """Why a private KDC cannot run here, or None when it can."""
    for name in _TOOLS:
        if tool(name) is None:
            return f"{name} is not installed (bash .ci/setup kerberos, or apt-get install krb5-kdc krb5-admin-server)"
    from orchestrator.session.kerberos import INSTALL_HINT, missing_bindings

    missing = missing_bindings()
    return f"the Python module {missing} is not installed: {INSTALL_HINT}" if missing else None


def krb5_conf(realm: str, port: int, domain: str) -> str:
    """A krb5.conf for the lab realm: the KDC on loopback, no DNS, no reverse DNS, no clock fixing."""
    return (
        "[libdefaults]\n"
        f"  default_realm = {realm}\n"
        "  dns_lookup_kdc = false\n"
        "  dns_lookup_realm = false\n"
        "  dns_canonicalize_hostname = false\n"
        "  rdns = false\n"
        "  kdc_timesync = 0\n"  # a skewed controller clock must fail as on Windows, not be corrected silently
        "  udp_preference_limit = 1\n"
        "  forwardable = false\n"
        "[realms]\n"
        f"  {realm} = {{\n    kdc = 127.0.0.1:{port}\n  }}\n"
        "[domain_realm]\n"
        f"  .{domain} = {realm}\n  {domain} = {realm}\n"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LabKDC:
    """Start with ``start()``; principals and keytabs are added afterwards; ``stop()`` ends the KDC."""

    state_dir: Path
    realm: str = "LAB.TEST"
    domain: str = "lab.test"
    port: int = 0  # 0: a free port chosen at start
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def krb5_conf_path(self) -> Path:
        return self.state_dir / "krb5.conf"

    @property
    def env(self) -> dict[str, str]:
        """The environment of the KDC tools and of any Kerberos client of this realm."""
        return {"KRB5_CONFIG": str(self.krb5_conf_path), "KRB5_KDC_PROFILE": str(self.state_dir / "kdc.conf")}

    def start(self) -> LabKDC:
        reason = missing_requirement()
        if reason:
            raise KeyfleetError(f"the Kerberos lab needs MIT Kerberos: {reason}")
        self.state_dir = self.state_dir.resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.port = self.port or _free_port()
        database = self.state_dir / "principal"
        write_private(self.state_dir / "kadm5.acl", b"")
        kdc_conf = (
            "[kdcdefaults]\n"
            f"  kdc_listen = 127.0.0.1:{self.port}\n"
            f"  kdc_tcp_listen = 127.0.0.1:{self.port}\n"
            "[realms]\n"
            f"  {self.realm} = {{\n"
            f"    database_name = {database}\n"
            f"    key_stash_file = {self.state_dir / 'stash'}\n"
            f"    acl_file = {self.state_dir / 'kadm5.acl'}\n"
            f"    supported_enctypes = {ENCTYPES}\n"
            "    max_life = 10h\n"
            "  }\n"
            "[logging]\n"
            f"  kdc = FILE:{self.state_dir / 'kdc.log'}\n"
        )
        write_private(self.state_dir / "kdc.conf", kdc_conf.encode())
        write_private(self.krb5_conf_path, krb5_conf(self.realm, self.port, self.domain).encode())
        for stale in self.state_dir.glob("principal*"):
            stale.unlink()
        master = secrets.token_urlsafe(24)
        self._tool("kdb5_util", "-r", self.realm, "create", "-s", stdin=f"{master}\n{master}\n")
        self._process = subprocess.Popen(
            [tool("krb5kdc") or "krb5kdc", "-n", "-r", self.realm],
            env={**os.environ, **self.env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_end_with_parent,
        )
        self._wait_listening()
        return self

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                raise KeyfleetError(f"the lab KDC did not start: {err.strip()[:300]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise KeyfleetError(f"the lab KDC did not listen on 127.0.0.1:{self.port} within {_START_TIMEOUT:.0f}s")

    def _tool(self, name: str, *args: str, stdin: str = "") -> str:
        proc = subprocess.run(
            [tool(name) or name, *args],
            input=stdin.encode(),
            env={**os.environ, **self.env},
            capture_output=True,
            timeout=_TOOL_TIMEOUT,
        )
        if proc.returncode != 0:
            detail = proc.stderr.decode(errors="replace").strip()[:300]
            raise KeyfleetError(f"lab KDC: {name} {args[-1] if args else ''} failed: {detail}")
        return proc.stdout.decode(errors="replace")

    def _kadmin(self, query: str) -> None:
        # kadmin.local reads its requests from stdin: passwords stay off every command line
        out = self._tool("kadmin.local", "-r", self.realm, stdin=query + "\n")
        if "error" in out.lower() or "cannot" in out.lower():
            raise KeyfleetError(f"lab KDC: {query.split()[0]} failed: {out.strip()[:300]}")

    def principal(self, name: str) -> str:
        return name if "@" in name else f"{name}@{self.realm}"

    def add_user(self, name: str, password: str) -> str:
        """A user principal (pre-authentication required, as in Active Directory)."""
        if any(c in password for c in "\r\n"):
            raise KeyfleetError("lab KDC: a password cannot contain a line break")
        principal = self.principal(name)
        self._kadmin(f'addprinc +requires_preauth -pw "{_quoted(password)}" {principal}')
        return principal

    def add_service(self, spns: list[str], keytab: Path) -> None:
        """Service principals with random keys, exported together to one keytab (the host's own)."""
        keytab.parent.mkdir(parents=True, exist_ok=True)
        keytab.unlink(missing_ok=True)
        for spn in spns:
            self._kadmin(f"addprinc -randkey {self.principal(spn)}")
            self._kadmin(f"ktadd -k {keytab} {self.principal(spn)}")
        os.chmod(keytab, 0o600)

    def export_keytab(self, name: str, keytab: Path) -> None:
        """Add a keytab entry for an existing user principal (its key is renewed, as ktpass does)."""
        self._kadmin(f"ktadd -k {keytab} {self.principal(name)}")
        os.chmod(keytab, 0o600)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        if process.stderr:
            process.stderr.close()

    def __enter__(self) -> LabKDC:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _end_with_parent() -> None:
    """In the KDC before exec: SIGTERM when the process that started it dies, even by SIGKILL."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _quoted(password: str) -> str:
    return password.replace("\\", "\\\\").replace('"', '\\"')
