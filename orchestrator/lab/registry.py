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

from orchestrator.inventory.model import LabHostSettings, Role
from orchestrator.lab.faults import Fault, find
from orchestrator.privatefile import create_private, write_private

# the same list as $KnownToolPaths in helpers/common.ps1 (a test keeps them equal)
_TOOL = r"\Tools\SecureStorageBackup\SecureStorageBackup.exe"
KNOWN_TOOL_PATHS = (
    r"C:\Program Files\Microsoft System Center\Service Manager" + _TOOL,
    r"C:\Program Files\Microsoft System Center\Service Manager 2022" + _TOOL,
    r"C:\Program Files\Microsoft System Center\Service Manager 2019" + _TOOL,
    r"C:\Program Files\Microsoft System Center\Service Manager 2016" + _TOOL,
    r"C:\Program Files\Microsoft System Center 2012 R2\Service Manager" + _TOOL,
)
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


@dataclass(frozen=True)
class Installation:
    """What the registry and disks of a simulated server show, machine faults included."""

    role: Role
    version: str
    tool_installed: bool
    tool_path: str
    faults: tuple[Fault, ...] = ()

    @classmethod
    def of(cls, role: Role, settings: LabHostSettings, faults: tuple[Fault, ...]) -> Installation:
        return cls(role, settings.version, settings.tool_installed, settings.tool_path or KNOWN_TOOL_PATHS[0], faults)

    def reported_role(self) -> str:
        """The role a helper detects ("SDK Service Type" 1 or 2, or PortalVirtualDirectory)."""
        fault = find(self.faults, "wrong-role")
        if fault is None:
            return self.role.value
        if fault.arg:
            return fault.arg
        if self.role is Role.DW_MANAGEMENT_SERVER:
            return Role.MANAGEMENT_SERVER.value
        return Role.DW_MANAGEMENT_SERVER.value

    def find_tool(self, configured: str | None) -> str | None:
        """SecureStorageBackup.exe at the configured path, else in a known location; None if absent."""
        if not self.tool_installed or find(self.faults, "tool-missing"):
            return None
        candidates = [configured] if configured else list(KNOWN_TOOL_PATHS)
        if any(c.lower() == self.tool_path.lower() for c in candidates):
            return configured or self.tool_path
        return None

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
