"""The lab's simulated registry and disks: the SCSM installation a helper can see, and each
host's encryption key, kept on disk.

State lives in ``<state_dir>/hosts/<name>.json`` (0600, folder 0700), created on first start and
reused, so a backup made by one process and a restore made by another see the same key. Files are
published atomically: created with a hard link (never overwriting a concurrent creator's key),
replaced with ``os.replace``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

from orchestrator.helpers.remote import DEFAULT_OUTBOX
from orchestrator.inventory.model import Role
from orchestrator.lab.config import LabHostSettings
from orchestrator.lab.faults import Fault, find
from orchestrator.privatefile import create_private, write_private

# the same list as $DefaultInstallFolders in helpers/common.ps1 (a test keeps them equal):
# SCSM 2019 and later, then SCSM 2016 (Microsoft's deployment documentation)
DEFAULT_INSTALL_FOLDERS = (
    r"C:\Program Files\Microsoft System Center\Service Manager",
    r"C:\Program Files\Microsoft System Center 2016\Service Manager",
)
TOOL_NAME = "SecureStorageBackup.exe"
TOOL_SUBFOLDER = r"Tools\SecureStorageBackup"
SETUP_KEY = r"HKLM:\SOFTWARE\Microsoft\System Center\2010\Service Manager\Setup"
SDK_SERVICE_KEY = r"HKLM:\SOFTWARE\Microsoft\System Center\2010\Common\SDK Service"
# what else a real server's Uninstall key lists: a third-party add-on that names Service Manager
# with a higher version, and Microsoft's own console (neither is the server's version)
UNINSTALL_NOISE = (
    {"DisplayName": "Cireson Portal for Service Manager", "DisplayVersion": "12.8.0.2016", "Publisher": "Cireson"},
    {
        "DisplayName": "Microsoft System Center Service Manager Console",
        "DisplayVersion": "10.99.0.0",
        "Publisher": "Microsoft Corporation",
    },
)
OUTBOX_PATH = DEFAULT_OUTBOX  # the agreed folder for keys made with the wizard
FREE_BYTES = 52_613_349_376
DISK_FULL_FREE_BYTES = 4_194_304
STATE_FORMAT = "keyfleet-lab-host/1"
_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()


@dataclass(frozen=True)
class HostState:
    """What the simulated server's registry holds."""

    name: str
    role: str
    version: str
    key: bytes = field(repr=False)
    generation: int = 0  # how many times the server was rebuilt


def default_install_folder(version: str) -> str:
    """Where Setup of this SCSM version installs by default (2016 is 7.5.x)."""
    return DEFAULT_INSTALL_FOLDERS[1] if version.startswith("7.5.") else DEFAULT_INSTALL_FOLDERS[0]


def windows_join(folder: str, *parts: str) -> str:
    """[IO.Path]::Combine for Windows paths."""
    return "\\".join([folder.rstrip("\\"), *parts])


@dataclass(frozen=True)
class Installation:
    """What the registry and disks of a simulated server show, machine faults included."""

    role: Role
    version: str
    tool_installed: bool
    tool_path: str  # where SecureStorageBackup.exe is on the simulated disk
    install_dir: str  # Setup's InstallDirectory
    extra_roles: tuple[str, ...] = ()  # roles co-hosted on this server (a portal beside a management server)
    windows_build: int = 20348
    server_version_value: bool = True  # whether Setup records ServerVersion
    oem_codepage: int = 437
    faults: tuple[Fault, ...] = ()

    @classmethod
    def of(cls, role: Role, settings: LabHostSettings, faults: tuple[Fault, ...]) -> Installation:
        install_dir = settings.install_dir or default_install_folder(settings.version)
        return cls(
            role,
            settings.version,
            settings.tool_installed,
            settings.tool_path or windows_join(install_dir, TOOL_SUBFOLDER, TOOL_NAME),
            install_dir,
            tuple(settings.extra_roles),
            settings.windows_build,
            settings.server_version_value,
            settings.oem_codepage,
            faults,
        )

    def installed_roles(self) -> tuple[str, ...]:
        """The roles installed on this server, as its registry records them (wrong-role faults included)."""
        fault = find(self.faults, "wrong-role")
        if fault is None:
            main = self.role.value
        elif fault.arg:
            main = fault.arg
        elif self.role is Role.DW_MANAGEMENT_SERVER:
            main = Role.MANAGEMENT_SERVER.value
        else:
            main = Role.DW_MANAGEMENT_SERVER.value
        return (main, *(r for r in self.extra_roles if r != main))

    def registry_values(self) -> dict[str, dict[str, object]]:
        """The registry keys the helpers read, by path (as Get-ItemProperty sees them)."""
        roles = self.installed_roles()
        setup: dict[str, object] = {"InstallDirectory": self.install_dir + "\\"}
        if self.server_version_value:
            setup["ServerVersion"] = self.version
        if Role.SELF_SERVICE_PORTAL.value in roles:
            setup["PortalVirtualDirectory"] = "SMPortal"
        values: dict[str, dict[str, object]] = {SETUP_KEY.lower(): setup}
        sdk = [1 if r == Role.MANAGEMENT_SERVER.value else 2 for r in roles if r != Role.SELF_SERVICE_PORTAL.value]
        if sdk:
            values[SDK_SERVICE_KEY.lower()] = {"SDK Service Type": sdk[0]}
        return values

    def uninstall_entries(self) -> list[dict[str, str]]:
        """HKLM\\...\\Uninstall\\* entries: Service Manager itself and the usual neighbours."""
        name = (
            "Microsoft System Center 2016 Service Manager"
            if self.version.startswith("7.5.")
            else ("Microsoft System Center Service Manager")
        )
        own = {"DisplayName": name, "DisplayVersion": self.version, "Publisher": "Microsoft Corporation"}
        return [own, *UNINSTALL_NOISE]

    def file_exists(self, path: str) -> bool:
        """[IO.File]::Exists on the simulated disk, which holds only the tool."""
        if not self.tool_installed or find(self.faults, "tool-missing"):
            return False
        return path.lower() == self.tool_path.lower()

    def free_bytes(self) -> int:
        """Free bytes on the drive of the temporary folder."""
        return DISK_FULL_FREE_BYTES if find(self.faults, "disk-full") else FREE_BYTES


def initial_key(seed: int, name: str, generation: int) -> bytes:
    """The key a fresh installation gets: deterministic per seed, host and rebuild."""
    return hashlib.sha256(f"keyfleet-lab-key/{seed}/{name}/{generation}".encode()).digest()


def _lock_for(path: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(path, threading.Lock())


class Registry:
    """One host's persisted state. Thread-safe within a process; atomic on disk across processes."""

    def __init__(self, state_dir: Path, name: str, role: str, version: str, seed: int) -> None:
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"invalid lab host name {name!r}")
        self.path = Path(state_dir) / "hosts" / f"{name}.json"
        self.name, self.role, self.version, self.seed = name, role, version, seed
        self._lock = _lock_for(self.path.resolve())

    def load(self) -> HostState:
        """The current state, created (fresh installation) when the host has none yet."""
        with self._lock:
            return self._load()

    @property
    def outbox_dir(self) -> Path:
        """Where the simulated disk keeps this host's outbox folder (OUTBOX_PATH on the server)."""
        return self.path.parent.parent / "outbox" / self.name

    def outbox_files(self) -> list[tuple[str, bytes, float]]:
        """The *.bin files of the outbox: name, bytes and time written."""
        folder = self.outbox_dir
        if not folder.is_dir():
            return []
        return [(p.name, p.read_bytes(), p.stat().st_mtime) for p in sorted(folder.glob("*.bin")) if p.is_file()]

    def save_to_outbox(self, name: str, data: bytes) -> None:
        """What an administrator does with the wizard: save a key file into the outbox."""
        if not name.endswith(".bin") or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"invalid outbox file name {name!r}")
        self.outbox_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(self.outbox_dir / name, data)

    def remove_from_outbox(self, name: str) -> None:
        (self.outbox_dir / name).unlink()

    def replace_key(self, key: bytes) -> HostState:
        """Put another key in the registry (what a successful restore does)."""
        with self._lock:
            state = replace(self._load(), key=key)
            self._write(state, exclusive=False)
            return state

    def rebuild(self) -> HostState:
        """A reinstalled server: the old key is gone, Setup made a new one."""
        with self._lock:
            old = self._load()
            generation = old.generation + 1
            state = replace(old, key=initial_key(self.seed, self.name, generation), generation=generation)
            self._write(state, exclusive=False)
            return state

    def _load(self) -> HostState:
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            state = HostState(self.name, self.role, self.version, initial_key(self.seed, self.name, 0))
            if self._write(state, exclusive=True):
                return state
            document = json.loads(self.path.read_text(encoding="utf-8"))
        if document.get("format") != STATE_FORMAT:
            raise ValueError(f"{self.path}: not a {STATE_FORMAT} file")
        # role and version follow the inventory; the key and rebuild count are the server's own
        return HostState(
            name=self.name,
            role=self.role,
            version=self.version,
            key=base64.b64decode(document["key"]),
            generation=int(document.get("generation", 0)),
        )

    def _write(self, state: HostState, *, exclusive: bool) -> bool:
        """Write atomically; with ``exclusive``, only if no file exists (False if one did)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        document = {
            "format": STATE_FORMAT,
            "name": state.name,
            "role": state.role,
            "version": state.version,
            "key": base64.b64encode(state.key).decode("ascii"),
            "generation": state.generation,
        }
        data = (json.dumps(document, indent=2) + "\n").encode("utf-8")
        if exclusive:
            return create_private(self.path, data)
        write_private(self.path, data)
        return True
