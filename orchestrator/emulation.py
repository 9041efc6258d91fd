"""The lab seam, the one door between the product and its optional lab: ``orchestrator.lab`` loads only for an inventory
with a ``lab:`` mapping (or a misspelt key that may be the lab's), and it alone declares and reads those mappings (the
inventory keeps them as opaque ``Section`` data)."""

from __future__ import annotations

import importlib
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from orchestrator.inventory.model import Inventory, Section

if TYPE_CHECKING:  # the reader imports this seam: its types only
    from yaml.nodes import Node

    from orchestrator.inventory.convert import SchemaReader, Value
    from orchestrator.inventory.settings import Scope, Setting


@dataclass(frozen=True)
class LabView:
    """What the product shows or needs of a lab inventory's lab: its settings as plain data."""

    serve: bool  # True: keyfleet serves the fleet itself for each command; False: `keyfleet lab up` does
    state_dir: Path  # absolute
    seed: int
    hosts: dict[str, dict[str, Any]]  # host name -> its lab settings as shown by `keyfleet inventory --json`


class Lab(Protocol):
    """What the lab provides to the product (implemented by ``orchestrator.lab.plugin``)."""

    def settings(self) -> tuple[Setting, ...]:
        """The lab's own settings: the keys of the ``lab:`` mappings (scopes LAB and HOST_LAB)."""

    def read(self, reader: SchemaReader, scope: Scope, node: Node, key: str) -> dict[str, Value]:
        """Convert one raw ``lab:`` mapping (scope LAB: the inventory's; HOST_LAB: a defaults, group or host
        one) with the reader's checks; a ConfigError names the file, line and key."""

    def section(self, reader: SchemaReader, scope: Scope, values: dict[str, Value], node: Node, key: str) -> Section:
        """The section the inventory carries for converted ``values`` (a host's: merged), defaults filled in."""

    def check_host(self, section: Section) -> None:
        """Validate one host's lab settings; a ConfigError names the file, line and key."""

    def ca_file(self, section: Section, base_dir: Path) -> str:
        """The lab CA's path (``ca_bundle: lab``) for the inventory ``lab:`` section in ``base_dir``."""

    def serving(self, inv: Inventory) -> AbstractContextManager[object]:
        """Serve the inventory's emulated fleet for the duration of a command when ``lab.serve`` is true."""

    def view(self, inv: Inventory) -> LabView:
        """The inventory's lab settings as plain data."""


LAB_MODULE = "orchestrator.lab.plugin"  # the plug-in, named here and loaded by name: the lab depends on this seam


def lab() -> Lab:
    """The lab, imported now (call only for an inventory with a ``lab:`` section)."""
    part: Lab = importlib.import_module(LAB_MODULE).EMBEDDED_LAB
    return part


def serving(inv: Inventory) -> AbstractContextManager[object]:
    """The inventory's lab fleet, served for a command when ``lab.serve`` is true; nothing (and no lab
    module loaded) for an inventory of real servers."""
    return nullcontext() if inv.lab is None else lab().serving(inv)


def view(inv: Inventory) -> LabView | None:
    """A lab inventory's lab settings; None for an inventory of real servers."""
    return None if inv.lab is None else lab().view(inv)
