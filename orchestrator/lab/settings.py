"""The lab's own inventory settings: the keys of the ``lab:`` mappings, declared and read with the inventory's types."""

from __future__ import annotations

import functools

from yaml.nodes import Node

from orchestrator.inventory import reference
from orchestrator.inventory.convert import SchemaReader, Value
from orchestrator.inventory.model import Section
from orchestrator.inventory.schema import SETTINGS as PRODUCT_SETTINGS
from orchestrator.inventory.schema import Kind, Scope, Setting, check_not_empty
from orchestrator.inventory.values import check_realm
from orchestrator.lab.windows import WINDOWS_BUILDS

WINDOWS_RELEASES = tuple(WINDOWS_BUILDS)  # the releases the lab emulates

SETTINGS: tuple[Setting, ...] = (
    # the inventory's lab: mapping
    Setting("serve", Kind.BOOL, (Scope.LAB,), "Start the embedded lab fleet for each command.", True),
    Setting(
        "state_dir",
        Kind.PATH,
        (Scope.LAB,),
        "Lab CA, certificates and simulated registries (relative to the inventory's folder).",
        "lab-state",
    ),
    Setting("seed", Kind.INT, (Scope.LAB,), "Seed of the simulated keys.", 0),
    Setting(
        "kerberos",
        Kind.BOOL,
        (Scope.LAB,),
        "Also run a private MIT KDC (krb5kdc on loopback) for kerberos and negotiate hosts; "
        "needs `bash .ci/setup kerberos`.",
        False,
    ),
    Setting("realm", Kind.STR, (Scope.LAB,), "Realm of the lab KDC.", "LAB.TEST", check=check_realm),
    # a host's lab: mapping (in defaults, a management group or the host)
    Setting("version", Kind.STR, (Scope.HOST_LAB,), "Simulated SCSM version.", "10.22.1068.0", check=check_not_empty),
    Setting("admin", Kind.BOOL, (Scope.HOST_LAB,), "Whether the WinRM user is an administrator.", True),
    Setting("tool_installed", Kind.BOOL, (Scope.HOST_LAB,), "Whether SecureStorageBackup.exe exists.", True),
    Setting(
        "tool_path",
        Kind.STR,
        (Scope.HOST_LAB,),
        "Where the simulated tool lives.",
        default_doc="the SCSM install folder",
    ),
    Setting(
        "install_dir",
        Kind.STR,
        (Scope.HOST_LAB,),
        "Setup's InstallDirectory.",
        default_doc="the version's default folder",
        check=check_not_empty,
    ),
    Setting(
        "extra_roles",
        Kind.STR_LIST,
        (Scope.HOST_LAB,),
        "Further SCSM roles installed on the same server.",
        (),
    ),
    Setting("windows", Kind.CHOICE, (Scope.HOST_LAB,), "Windows Server release.", "2022", choices=WINDOWS_RELEASES),
    Setting(
        "server_version_value",
        Kind.BOOL,
        (Scope.HOST_LAB,),
        "Whether Setup records ServerVersion in the registry.",
        True,
    ),
    Setting("codepage", Kind.INT, (Scope.HOST_LAB,), "OEM code page of a shell opened without one.", 437),
    Setting(
        "faults",
        Kind.STR_LIST,
        (Scope.HOST_LAB,),
        "Fault specs, e.g. `latency:0.5`, `http500:Receive`, `tool-hanging`.",
        (),
    ),
)


@functools.cache
def settings_for(scope: Scope) -> dict[str, Setting]:
    """The lab settings allowed in one lab mapping (scope LAB or HOST_LAB), by name."""
    return {s.name: s for s in SETTINGS if scope in s.scopes}


def read(reader: SchemaReader, scope: Scope, node: Node, key: str) -> dict[str, Value]:
    """One raw ``lab:`` mapping converted by the reader (its messages, file, line and key) against the lab's table."""
    return reader.read(node, settings_for(scope), key, complete=scope is Scope.LAB)


def section(reader: SchemaReader, scope: Scope, values: dict[str, Value], node: Node, key: str) -> Section:
    """The located section the inventory carries: every lab setting of ``scope``, defaults filled in."""
    return Section(
        values=tuple((s.name, reader.value_or_default(values, s)) for s in settings_for(scope).values()),
        where=reader.location(node, key),
        locations=tuple((name, reader.location(value.node, f"{key}.{name}")) for name, value in values.items()),
    )


def documented() -> tuple[Setting, ...]:
    """The product's settings with the lab's own after the block of each lab hook's scopes (the README's order)."""
    rows = list(PRODUCT_SETTINGS)
    for hook in PRODUCT_SETTINGS:
        if not hook.plugin or hook.section is None:
            continue
        last = max(i for i, s in enumerate(rows) if s.scopes == hook.scopes)
        rows[last + 1 : last + 1] = settings_for(hook.section).values()
    return tuple(rows)


def settings_reference_markdown() -> str:
    """The README's settings reference: the product's settings and the lab's."""
    return reference.settings_reference_markdown(documented())
