"""The lab's own reading of an inventory's ``lab:`` sections: its settings types and their checks."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ConfigError
from orchestrator.inventory.model import HostConfig, Inventory, Section
from orchestrator.inventory.schema import ROLES
from orchestrator.lab.faults import parse_fault
from orchestrator.lab.windows import WINDOWS_BUILDS


@dataclass(frozen=True)
class LabConfig:
    """An inventory's ``lab:`` section: the emulated fleet it describes."""

    serve: bool  # True: the controller starts the lab itself for the duration of a command
    state_dir: Path  # CA, host certificates and simulated registries live here (absolute)
    seed: int = 0
    kerberos: bool = False  # the lab also runs its own KDC (MIT krb5kdc) for kerberos and negotiate hosts
    realm: str = "LAB.TEST"


@dataclass(frozen=True)
class LabHostSettings:
    """Lab-only simulation settings of one host (a host's ``lab:`` mapping)."""

    version: str = "10.22.1068.0"
    admin: bool = True
    tool_installed: bool = True
    tool_path: str | None = None  # where the simulated SecureStorageBackup.exe lives
    faults: tuple[str, ...] = ()  # fault specs, e.g. "down", "latency:0.5", "http500:Receive"
    install_dir: str | None = None  # Setup's InstallDirectory; None: the version's default folder
    extra_roles: tuple[str, ...] = ()  # further SCSM roles on the same server
    windows_build: int = 20348  # Windows Server 2022
    server_version_value: bool = True  # Setup records ServerVersion
    oem_codepage: int = 437  # the console code page of a shell opened without WINRS_CODEPAGE


def state_dir_of(section: Section, base_dir: Path) -> Path:
    """``lab.state_dir`` resolved against the inventory's folder."""
    return Path(os.path.normpath(base_dir / os.path.expanduser(section.get("state_dir"))))


def lab_config(inv: Inventory) -> LabConfig:
    """The inventory's ``lab:`` section; a ConfigError when it has none."""
    if inv.lab is None:
        raise ConfigError("the inventory has no lab: section", file=str(inv.path))
    section = inv.lab
    return LabConfig(
        serve=section.get("serve"),
        state_dir=state_dir_of(section, inv.path.parent),
        seed=section.get("seed"),
        kerberos=section.get("kerberos"),
        realm=section.get("realm"),
    )


def _fail(message: str, section: Section, name: str) -> ConfigError:
    where = section.location(name)
    return ConfigError(message, file=where.file, line=where.line, key=where.key)


def check_host(section: Section) -> None:
    """A host's lab settings beyond their types: known extra roles, valid fault specs."""
    for extra in section.get("extra_roles"):
        if extra not in ROLES:
            raise _fail(f"unknown role {extra!r} (choose from {', '.join(ROLES)})", section, "extra_roles")
    for spec in section.get("faults"):
        try:
            parse_fault(spec)
        except ConfigError as exc:
            raise _fail(exc.message, section, "faults") from None


def host_settings(host: HostConfig) -> LabHostSettings:
    """What the lab simulates on ``host`` (the defaults for a host without lab settings)."""
    section = host.lab
    if section is None:
        return LabHostSettings()
    return LabHostSettings(
        version=section.get("version"),
        admin=section.get("admin"),
        tool_installed=section.get("tool_installed"),
        tool_path=section.get("tool_path"),
        faults=tuple(section.get("faults")),
        install_dir=section.get("install_dir"),
        extra_roles=tuple(section.get("extra_roles")),
        windows_build=WINDOWS_BUILDS[section.get("windows")],
        server_version_value=section.get("server_version_value"),
        oem_codepage=section.get("codepage"),
    )
