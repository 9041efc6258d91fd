"""A lab fleet: simulated SCSM servers behind real WS-Management listeners on loopback addresses."""

from __future__ import annotations

import dataclasses
import errno
import os
import secrets
import shutil
import socket
import ssl
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from orchestrator.errors import ConfigError, KeyfleetError
from orchestrator.inventory.model import Inventory, Role
from orchestrator.lab.config import LabHostSettings, host_settings, lab_config
from orchestrator.lab.faults import find, parse_faults
from orchestrator.lab.httpserver import HostListener, LabHTTPServer
from orchestrator.lab.journal import Journal
from orchestrator.lab.kdc import LabKDC
from orchestrator.lab.machine import Machine
from orchestrator.lab.ntlm import write_user_file
from orchestrator.lab.pki import LabPKI
from orchestrator.lab.wsman import ServiceLimits, WinRSService
from orchestrator.session.kerberos import principal_name, tls_server_end_point

AUTH_MODES = ("ntlm", "basic")
KERBEROS_TRANSPORTS = ("kerberos", "negotiate")  # served as ntlm hosts that also hold HTTP/<name> keys


@dataclass(frozen=True)
class LabHostSpec:
    """One lab host: where it listens, how it authenticates, who may log on, what it simulates."""

    name: str
    group: str
    role: Role
    address: str
    port: int  # 0: any free port, see LabFleet.spec(name).port after start()
    scheme: str  # http | https
    auth: str  # ntlm | basic
    users: dict[str, tuple[str, bool]] = field(repr=False)  # user name -> (password, admin)
    settings: LabHostSettings = field(default_factory=LabHostSettings)
    limits: ServiceLimits = field(default_factory=ServiceLimits)
    allow_unencrypted: bool = False  # Windows' AllowUnencrypted=true: Basic over plain HTTP
    kerberos_name: str | None = None  # with a KDC: the host's service principal is HTTP/<kerberos_name>

    def __post_init__(self) -> None:
        if self.auth not in AUTH_MODES:
            raise ConfigError(f"lab host {self.name}: auth {self.auth!r} is not {' or '.join(AUTH_MODES)}")
        if self.scheme not in ("http", "https"):
            raise ConfigError(f"lab host {self.name}: scheme {self.scheme!r} is not http or https")
        if self.auth == "basic" and self.scheme == "http" and not self.allow_unencrypted:
            raise ConfigError(f"lab host {self.name}: Basic authentication is served over https only")

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{self.address}:{self.port}/wsman"


class LabFleet:
    """Start with ``start()`` or ``with LabFleet(...) as fleet:``; every host listens until ``stop()``."""

    def __init__(
        self,
        specs: list[LabHostSpec],
        state_dir: Path,
        seed: int = 0,
        journal_path: Path | None = None,
        kdc: LabKDC | None = None,
        keytabs: dict[str, Path] | None = None,
    ) -> None:
        """``kdc``: a KDC (not started) the fleet starts and stops, with a user principal for every lab user;
        ``keytabs``: user name -> keytab file the fleet exports that user's keys to (unattended logons)."""
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ConfigError("lab fleet: duplicate host names")
        self.state_dir = Path(state_dir).resolve()
        self.seed = seed
        self._specs = {s.name: s for s in specs}
        self._journal_path = journal_path
        self.journal = Journal(None)
        self._pki = LabPKI(self.state_dir)
        self._machines: dict[str, Machine] = {}
        self._services: list[WinRSService] = []
        self._server: LabHTTPServer | None = None
        self._users_dir: Path | None = None  # this fleet's own NTLM user files and keytabs, removed by stop()
        self.kdc = kdc
        self._keytabs = dict(keytabs or {})

    @property
    def ca_path(self) -> Path:
        return self._pki.ca_path

    @property
    def specs(self) -> list[LabHostSpec]:
        """The hosts as served (with the ports actually bound)."""
        return list(self._specs.values())

    def spec(self, name: str) -> LabHostSpec:
        return self._specs[name]

    def machine(self, name: str) -> Machine:
        return self._machines[name]

    def start(self) -> LabFleet:
        if self._server is not None:
            raise KeyfleetError("lab fleet already started")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._pki.ensure_ca()
        self.journal = Journal(self._journal_path)
        server = self._server = LabHTTPServer(self.journal)
        try:
            # Unique per fleet: another fleet on the same state_dir (a second command on the same lab
            # inventory) must neither overwrite nor delete the user files this one is serving with.
            self._users_dir = Path(tempfile.mkdtemp(prefix=".ntlm-users-", dir=self.state_dir))
            if self.kdc is not None:
                self._start_kdc(self.kdc)
            for spec in list(self._specs.values()):
                self._specs[spec.name] = self._start_host(server, spec)
        except BaseException:
            self.stop()
            raise
        server.start()
        return self

    def _start_host(self, server: LabHTTPServer, spec: LabHostSpec) -> LabHostSpec:
        faults = parse_faults(list(spec.settings.faults))
        machine = Machine(spec.name, spec.role, spec.settings, self.state_dir, self.seed)
        self._machines[spec.name] = machine
        if find(faults, "down"):
            return dataclasses.replace(spec, port=spec.port or _free_port(spec.address))
        service = WinRSService(spec.name, machine, spec.limits)
        self._services.append(service)
        assert self._users_dir is not None
        user_file = self._users_dir / f"{spec.name}.ntlm-users"
        write_user_file(user_file, {name: pw for name, (pw, _) in spec.users.items()})
        keytab = None
        if self.kdc is not None and spec.kerberos_name and not find(faults, "no-spn"):
            keytab = self._users_dir / f"{spec.name}.keytab"
            # the computer account holds host/<name>, and Active Directory maps HTTP/ and WSMAN/ to it
            # (sPNMappings): WinRM clients ask for any of them (pywinrm HTTP, pypsrp host or WSMAN)
            names = ("HTTP", "WSMAN", "host")
            self.kdc.add_service([f"{service}/{spec.kerberos_name}" for service in names], keytab)
        listener = HostListener(
            spec.name,
            spec.scheme,
            spec.auth,
            dict(spec.users),
            service,
            faults,
            ntlm_user_file=user_file,
            allow_unencrypted=spec.allow_unencrypted,
            keytab=keytab,
        )
        if spec.scheme == "https":
            cert = self._pki.host_certificate(spec.name, spec.address)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(cert.cert_path, cert.key_path)
            listener.ssl_context = ctx
            listener.channel_bindings = tls_server_end_point(cert.der)
        try:
            port = server.listen(listener, spec.address, spec.port)
        except OSError as exc:
            hint = {
                errno.EADDRINUSE: "is another lab fleet or WinRM listener using it?",
                errno.EADDRNOTAVAIL: "this system does not route all of 127.0.0.0/8 to loopback "
                f"(macOS: sudo ifconfig lo0 alias {spec.address})",
            }.get(exc.errno or 0, "")
            raise KeyfleetError(
                f"lab host {spec.name} cannot listen on {spec.address}:{spec.port}: "
                f"{exc.strerror or exc}{'; ' + hint if hint else ''}"
            ) from None
        return dataclasses.replace(spec, port=port)

    def _start_kdc(self, kdc: LabKDC) -> None:
        kdc.start()
        users: dict[str, str] = {}
        for spec in self._specs.values():
            if spec.kerberos_name:
                users.update({name: password for name, (password, _) in spec.users.items()})
        for name, password in users.items():
            kdc.add_user(principal_name(name, kdc.realm), password)
        for name, keytab in self._keytabs.items():
            keytab.parent.mkdir(parents=True, exist_ok=True)
            keytab.unlink(missing_ok=True)
            kdc.export_keytab(principal_name(name, kdc.realm), keytab)

    def stop(self) -> None:
        if self.kdc is not None:
            self.kdc.stop()
        for service in self._services:
            service.stop()
        if self._server is not None:
            self._server.stop()
            self._server = None
        self._services.clear()
        if self._users_dir is not None:
            shutil.rmtree(self._users_dir, ignore_errors=True)
            self._users_dir = None
        self.journal.close()

    def __enter__(self) -> LabFleet:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _free_port(address: str) -> int:
    """A port nothing listens on at ``address`` (for hosts with the ``down`` fault)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def lab_machine(inv: Inventory, name: str) -> Machine:
    """The simulated server behind lab host ``name`` (its state persists between commands)."""
    host = inv.hosts.get(name)
    if host is None:
        raise ConfigError(f"no host {name!r} in the inventory", file=str(inv.path), key="--host")
    config = lab_config(inv)
    return Machine(host.name, host.role, host_settings(host), config.state_dir, config.seed)


def fleet_from_inventory(inv: Inventory) -> LabFleet:
    """The fleet an inventory with a ``lab:`` section describes (credentials resolved now)."""
    from orchestrator.secretrefs import resolve

    config = lab_config(inv)
    state_dir = config.state_dir
    specs = []
    keytabs: dict[str, Path] = {}
    kerberos = config.kerberos
    for host in inv.hosts.values():
        loc = host.location
        served = AUTH_MODES + (KERBEROS_TRANSPORTS if kerberos else ())
        if host.transport not in served:
            extra = "" if kerberos else " (kerberos and negotiate need lab.kerberos: true)"
            raise ConfigError(
                f"the lab serves {', '.join(served)} only, not {host.transport!r}{extra}",
                file=loc.file,
                line=loc.line,
                key=loc.key,
            )
        credential = host.credential
        if credential is None or (credential.password is None and credential.keytab is None):
            raise ConfigError("a lab host needs a credential with a password or keytab", file=loc.file, line=loc.line)
        settings = host_settings(host)
        if credential.password is not None:
            password = resolve(credential.password, purpose=f"lab password of {host.name}").reveal()
        else:
            assert credential.keytab is not None
            keytabs[credential.username] = Path(credential.keytab)
            password = secrets.token_urlsafe(18)  # the account's password nobody knows: only its keytab logs on
        kerberos_host = host.transport in KERBEROS_TRANSPORTS
        specs.append(
            LabHostSpec(
                name=host.name,
                group=host.group,
                role=host.role,
                address=host.address,
                port=host.port,
                scheme=host.scheme,
                auth="ntlm" if kerberos_host else host.transport,
                users={credential.username: (password, settings.admin)},
                settings=settings,
                allow_unencrypted=host.allow_insecure,
                kerberos_name=host.kerberos_hostname if kerberos else None,
            )
        )
    kdc = LabKDC(state_dir / "kdc", realm=config.realm) if kerberos else None
    return LabFleet(specs, state_dir, config.seed, journal_path=state_dir / "journal.jsonl", kdc=kdc, keytabs=keytabs)


@contextmanager
def serving(inv: Inventory) -> Iterator[LabFleet | None]:
    """Serve the inventory's lab fleet for the duration of a command when ``lab.serve`` is true."""
    if inv.lab is None or not lab_config(inv).serve:
        yield None
        return
    with fleet_from_inventory(inv) as fleet:
        if fleet.kdc is None:
            yield fleet
            return
        # the embedded lab's realm is found through its krb5.conf by keyfleet's own Kerberos logons
        previous = os.environ.get("KRB5_CONFIG")
        os.environ["KRB5_CONFIG"] = str(fleet.kdc.krb5_conf_path)
        try:
            yield fleet
        finally:
            if previous is None:
                os.environ.pop("KRB5_CONFIG", None)
            else:
                os.environ["KRB5_CONFIG"] = previous
