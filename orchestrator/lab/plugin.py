"""The lab's side of ``orchestrator.emulation``: what the product may ask of an inventory's lab."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from yaml.nodes import Node

from orchestrator.emulation import LabView
from orchestrator.inventory.convert import SchemaReader, Value
from orchestrator.inventory.model import Inventory, Section
from orchestrator.inventory.settings import Scope, Setting
from orchestrator.lab import settings
from orchestrator.lab.config import LabHostSettings, check_host, host_settings, lab_config, state_dir_of


def _host_document(settings: LabHostSettings) -> dict[str, Any]:
    return {
        "version": settings.version,
        "admin": settings.admin,
        "tool_installed": settings.tool_installed,
        "tool_path": settings.tool_path,
        "faults": list(settings.faults),
    }


class EmbeddedLab:
    """The lab behind ``orchestrator.emulation.Lab``."""

    def settings(self) -> tuple[Setting, ...]:
        return settings.SETTINGS

    def read(self, reader: SchemaReader, scope: Scope, node: Node, key: str) -> dict[str, Value]:
        return settings.read(reader, scope, node, key)

    def section(self, reader: SchemaReader, scope: Scope, values: dict[str, Value], node: Node, key: str) -> Section:
        return settings.section(reader, scope, values, node, key)

    def check_host(self, section: Section) -> None:
        check_host(section)

    def ca_file(self, section: Section, base_dir: Path) -> str:
        return str(state_dir_of(section, base_dir) / "ca.pem")

    def serving(self, inv: Inventory) -> AbstractContextManager[object]:
        if not lab_config(inv).serve:
            return nullcontext()
        from orchestrator.lab.fleet import serving  # the HTTP server, KDC and PKI: only to serve

        return serving(inv)

    def view(self, inv: Inventory) -> LabView:
        config = lab_config(inv)
        hosts = {h.name: _host_document(host_settings(h)) for h in inv.hosts.values() if h.lab is not None}
        return LabView(serve=config.serve, state_dir=config.state_dir, seed=config.seed, hosts=hosts)


EMBEDDED_LAB = EmbeddedLab()
