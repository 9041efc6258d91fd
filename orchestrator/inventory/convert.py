"""Schema-driven conversion of inventory YAML: each mapping of one scope -> its checked values.

Every converted value keeps the node it came from, so each error names the file, line and key.
Secret references are parsed, never resolved; plaintext ones pass only while ``allow_plain`` is
set (a lab inventory), and where they stand is kept in ``plaintext`` for the loader's loopback rule.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yaml.nodes import Node, SequenceNode

from orchestrator import emulation
from orchestrator.errors import ConfigError
from orchestrator.inventory.model import Location
from orchestrator.inventory.schema import (
    HOST_SCOPES,
    LAB_CA,
    SETTINGS,
    Invalid,
    Kind,
    Scope,
    Setting,
    check_file,
    parse_duration,
    settings_for,
)
from orchestrator.inventory.yamlnodes import YamlDocument, line_of, type_name
from orchestrator.secretrefs import parse_ref

_EXPECTED = {
    Kind.STR: "a string",
    Kind.BOOL: "a boolean (true or false)",
    Kind.INT: "an integer",
    Kind.DURATION: "a duration (30d, 12h, 90m, 45s or seconds)",
    Kind.SECRET: "a string (a secret reference such as env:NAME)",
    Kind.CHOICE: "a string",
    Kind.PATH: "a path string",
    Kind.FILE: "a path string",
    Kind.STR_LIST: "a list of strings",
}


@dataclass(frozen=True)
class Value:
    """A converted setting and the YAML node it came from (for errors naming its line)."""

    value: Any
    node: Node


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class SchemaReader:
    """Converts the mappings of one YAML document by the settings of their scope."""

    def __init__(self, doc: YamlDocument, base_dir: Path) -> None:
        self.doc = doc
        self.display = doc.display
        self.base_dir = base_dir
        self.allow_plain = False
        self.plaintext: list[tuple[Node, str]] = []  # plaintext secrets read so far: value node, key

    def fail(self, message: str, node: Node | None, key: str | None) -> ConfigError:
        return self.doc.error(message, node, key)

    def section(self, node: Node, scope: Scope, prefix: str, *, complete: bool) -> dict[str, Value]:
        """Convert one mapping of ``scope``; ``complete``: also require its required keys."""
        return self.read(
            node, settings_for(scope), prefix, complete=complete, inherited=scope in HOST_SCOPES, top=scope is Scope.TOP
        )

    def read(
        self,
        node: Node,
        allowed: Mapping[str, Setting],
        prefix: str,
        *,
        complete: bool,
        inherited: bool = False,
        top: bool = False,
    ) -> dict[str, Value]:
        """Convert one mapping by the settings ``allowed`` in it (the lab plug-in's too); ``inherited``: its
        nested mappings are completed after inheritance; ``top``: the document's root (``x-`` keys skipped)."""
        values: dict[str, Value] = {}
        for name, (key_node, value_node) in self.doc.mapping(node, prefix).items():
            if top and name.startswith("x-"):
                continue  # extension keys: a place for YAML anchors, as in docker compose
            setting = allowed.get(name)
            if setting is None:
                raise self.fail(self._unknown_key(name, allowed), key_node, _join(prefix, name))
            value = self.convert(setting, value_node, _join(prefix, name), inherited=inherited)
            values[name] = Value(value, value_node)
        if complete:
            self.require(allowed, values, node, prefix)
        return values

    def require(self, allowed: Mapping[str, Setting], values: dict[str, Value], node: Node, prefix: str) -> None:
        for setting in allowed.values():
            if setting.required and setting.name not in values:
                choices = f" (one of {', '.join(setting.choices)})" if setting.choices else ""
                raise self.fail(f"missing required key {setting.name!r}{choices}", node, prefix or None)

    @staticmethod
    def _unknown_key(name: str, allowed: Mapping[str, Setting]) -> str:
        message = f"unknown key {name!r}"
        close = difflib.get_close_matches(name, list(allowed), n=1)
        if close:
            message += f"; did you mean {close[0]!r}?"
        else:  # the lab's settings too: the lab, loaded through the seam, names where its keys belong
            known = (*SETTINGS, *emulation.lab().settings())
            elsewhere = sorted({where.value for s in known if s.name == name for where in s.scopes})
            if elsewhere:
                message += f" ({name!r} belongs in: {', '.join(elsewhere)})"
        return message + f" (valid keys here: {', '.join(allowed)})"

    def convert(self, setting: Setting, node: Node, key: str, *, inherited: bool) -> Any:
        """One value; mappings of host settings are completed only after inheritance."""
        kind = setting.kind
        if kind is Kind.MAPPING:
            assert setting.section is not None
            if setting.plugin:  # a lab: mapping, read by the lab's own settings
                return emulation.lab().read(self, setting.section, node, key)
            complete = not inherited and setting.section not in HOST_SCOPES
            return self.section(node, setting.section, key, complete=complete)
        if kind in (Kind.GROUPS, Kind.HOSTS):
            return node
        if kind is Kind.STR_LIST:
            if not isinstance(node, SequenceNode):
                raise self.fail(f"expected a list of strings, got {type_name(node)}", node, key)
            items = [self.doc.scalar(item, key) for item in node.value]
            for item_node, item in zip(node.value, items, strict=True):
                if not isinstance(item, str):
                    raise self.fail(f"list items must be strings, got {type_name(item_node)}", item_node, key)
            return tuple(items)
        raw = self.doc.scalar(node, key)
        try:
            value = self._scalar(setting, raw, node, key)
            return setting.check(value) if setting.check else value
        except Invalid as exc:
            raise self.fail(str(exc), node, key) from None

    def _scalar(self, setting: Setting, raw: Any, node: Node, key: str) -> Any:
        kind = setting.kind
        if kind is Kind.DURATION:
            return parse_duration(raw)
        mismatch = f"expected {_EXPECTED[kind]}, got {type_name(node)}"
        if kind in (Kind.BOOL, Kind.INT):
            wanted = bool if kind is Kind.BOOL else int
            if not isinstance(raw, wanted) or (wanted is int and isinstance(raw, bool)):
                raise self.fail(mismatch, node, key)
            return raw
        if not isinstance(raw, str):
            raise self.fail(mismatch, node, key)
        if kind is Kind.SECRET:
            try:
                ref = parse_ref(
                    raw,
                    base_dir=self.base_dir,
                    allow_plain=self.allow_plain,
                    location=Location(self.display, line_of(node), key),
                )
            except ConfigError as exc:
                raise self.fail(exc.message, node, key) from None
            if ref.scheme == "plain":
                self.plaintext.append((node, key))
            return ref
        if kind is Kind.CHOICE and raw not in setting.choices:
            close = difflib.get_close_matches(raw, setting.choices, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise Invalid(f"unknown {setting.name} {raw!r}{hint} (choose from {', '.join(setting.choices)})")
        if kind in (Kind.PATH, Kind.FILE) and (not raw.strip() or "\0" in raw):
            raise Invalid("must be a non-empty path")
        if kind is Kind.FILE and not (setting.name == "ca_bundle" and raw == LAB_CA):
            # not the lab CA: the lab writes it only when it starts
            return check_file(self.resolve_path(raw), relative=not os.path.isabs(os.path.expanduser(raw)))
        return raw

    def resolve_path(self, raw: str) -> str:
        """A path setting resolved against the inventory's folder."""
        return os.path.normpath(self.base_dir / os.path.expanduser(raw))

    def location(self, node: Node, key: str) -> Location:
        """Where ``node`` stands: this document, its line, the dotted key."""
        return Location(self.display, line_of(node), key)

    @staticmethod
    def value_of(values: dict[str, Value], scope: Scope, name: str) -> Any:
        """The converted value, else the schema's default."""
        return SchemaReader.value_or_default(values, settings_for(scope)[name])

    @staticmethod
    def value_or_default(values: dict[str, Value], setting: Setting) -> Any:
        """The converted value of ``setting``, else its default."""
        if setting.name in values:
            return values[setting.name].value
        if setting.kind is Kind.DURATION and setting.default is not None:
            return parse_duration(setting.default)
        return setting.default
