"""YAML at node level: compose with the safe loader, refuse non-plain tags, keep every value's line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from orchestrator.errors import ConfigError
from orchestrator.textfile import NotText, decode_text

_CORE = "tag:yaml.org,2002:"
PLAIN_TAGS = frozenset(_CORE + t for t in ("str", "int", "float", "bool", "null", "map", "seq", "merge", "timestamp"))
MERGE_TAG = _CORE + "merge"
_FAST_LOADER = getattr(yaml, "CSafeLoader", None)  # libyaml's parser, Python's resolver: the same nodes and tags
_TYPE_NAMES = {
    _CORE + "str": "a string",
    _CORE + "int": "an integer",
    _CORE + "float": "a number",
    _CORE + "bool": "a boolean",
    _CORE + "null": "nothing (null)",
    _CORE + "timestamp": "a date",
    _CORE + "map": "a mapping",
    _CORE + "seq": "a list",
}


def _compose(text: str) -> Node | None:
    """Compose with libyaml's parser when PyYAML has it (ten times faster: a 1,000-host inventory
    costs 1 s in pure Python); on any error, the pure-Python parser words the message as always."""
    if _FAST_LOADER is not None:
        try:
            return yaml.compose(text, Loader=_FAST_LOADER)
        except yaml.YAMLError:
            pass
    return yaml.compose(text, Loader=yaml.SafeLoader)


def line_of(node: Node) -> int:
    return node.start_mark.line + 1


def type_name(node: Node) -> str:
    return _TYPE_NAMES.get(node.tag, "a value")


class YamlDocument:
    """One composed YAML file; builds ConfigErrors that name the file, the line and the key.

    ``document`` names what the file is in messages: "inventory" (the default) or "playbook".
    """

    def __init__(self, path: Path, display: str, document: str = "inventory") -> None:
        self.display = display
        self.document = document
        try:
            text = decode_text(path.read_bytes())
        except OSError as exc:
            raise ConfigError(f"cannot read the {document}: {exc.strerror}", file=display) from None
        except NotText as exc:
            raise ConfigError(str(exc), file=display) from None
        try:
            self.root: Node | None = _compose(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            # problem/context only: str(exc) would quote the offending line, which may hold a secret
            what = "; ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
            what = " ".join(what.split())
            raise ConfigError(
                f"YAML syntax error: {what}", file=display, line=mark.line + 1 if mark else None
            ) from None
        except yaml.YAMLError as exc:
            position = getattr(exc, "position", None)
            reason = getattr(exc, "reason", "invalid YAML")
            raise ConfigError(
                f"YAML error: {reason}" + (f" at character {position}" if position is not None else ""),
                file=display,
            ) from None
        except RecursionError:
            raise ConfigError("YAML nesting is too deep", file=display) from None
        if self.root is not None:
            self._refuse_tags(self.root)

    def error(self, message: str, node: Node | None, key: str | None) -> ConfigError:
        if key:  # keys come from the file: escape control characters so the error stays one line
            key = "".join(c if c.isprintable() else repr(c)[1:-1] for c in key)
        return ConfigError(message, file=self.display, line=line_of(node) if node else None, key=key or None)

    def _refuse_tags(self, root: Node) -> None:
        seen: set[int] = set()
        stack: list[Node] = [root]
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.tag not in PLAIN_TAGS:
                tag = node.tag.replace(_CORE, "!!")
                raise self.error(f"YAML tag {tag} is not allowed: the {self.document} is plain data", node, None)
            if isinstance(node, SequenceNode):
                stack.extend(node.value)
            elif isinstance(node, MappingNode):
                for k, v in node.value:
                    stack.extend((k, v))

    def scalar(self, node: Node, key: str) -> Any:
        """The Python value of a scalar node (str, int, float, bool, None, date)."""
        if not isinstance(node, ScalarNode):
            raise self.error(f"expected a single value, got {type_name(node)}", node, key)
        try:
            return SafeConstructor().construct_object(node)
        except (ValueError, yaml.YAMLError):
            raise self.error(f"invalid {type_name(node)[2:]} value", node, key) from None

    def mapping(self, node: Node, key: str, _merging: frozenset[int] = frozenset()) -> dict[str, tuple[Node, Node]]:
        """Key -> (key node, value node), refusing duplicate and non-string keys; merges ``<<``."""
        if id(node) in _merging:
            raise self.error("a YAML merge (<<) includes itself", node, key)
        if isinstance(node, ScalarNode) and node.tag == _CORE + "null":
            return {}
        if not isinstance(node, MappingNode):
            raise self.error(f"expected a mapping, got {type_name(node)}", node, key)
        explicit: dict[str, tuple[Node, Node]] = {}
        merged: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                for source in sources:
                    for name, pair in self.mapping(source, key, _merging | {id(node)}).items():
                        merged.setdefault(name, pair)
                continue
            name = self.scalar(key_node, key)
            if not isinstance(name, str):
                raise self.error(f"keys must be strings, got {type_name(key_node)}", key_node, key)
            if name in explicit:
                first = line_of(explicit[name][0])
                message = f"duplicate key {name!r} (first at line {first})"
                raise self.error(message, key_node, _join(key, name))
            explicit[name] = (key_node, value_node)
        return {**merged, **explicit}

    def construct(self) -> Any:
        """The whole document as plain Python data (called once it validated; ``x-`` keys were not)."""
        try:
            return SafeConstructor().construct_document(self.root) if self.root is not None else None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            line = mark.line + 1 if mark else None
            raise ConfigError(f"invalid YAML value: {exc.problem}", file=self.display, line=line) from None
        except (ValueError, RecursionError):
            raise ConfigError("a YAML value cannot be read (e.g. an impossible date)", file=self.display) from None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
