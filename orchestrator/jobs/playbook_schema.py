"""Runbook (playbook) files: the YAML format, validated with the file, line and key of every mistake,
and the plan a playbook makes with an inventory (which hosts, which steps) before anything runs.

```yaml
name: Post-deployment            # required
description: ...                 # optional
hosts: all                       # a --limit pattern; `all` = every host; --limit intersects it
on_failure: continue             # stop (default) | continue: failed hosts sit out later host steps
steps:                           # in order; a bare name or a one-key mapping with options
  - doctor: {require: [reachable, authenticated, administrator, role, tool]}
  - backup: {only_stale: 1d}
  - verify
  - audit: {max_age: 1h, require_coverage: 100}
  - restore: {entry: ID, confirm: true}
```
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from orchestrator.durations import format_duration
from orchestrator.errors import ConfigError
from orchestrator.inventory.limit import AtResolver, select_hosts
from orchestrator.inventory.model import HostConfig, Inventory
from orchestrator.inventory.schema import Invalid, parse_duration
from orchestrator.inventory.yamlnodes import YamlDocument, line_of
from orchestrator.jobs.doctor import CHECKS

STEP_NAMES = ("doctor", "backup", "verify", "audit", "restore")
ON_FAILURE = ("stop", "continue")
TOP_KEYS = ("name", "description", "hosts", "on_failure", "steps")


@dataclass(frozen=True)
class DoctorOptions:
    require: tuple[str, ...] = CHECKS  # the checks that must pass


@dataclass(frozen=True)
class BackupOptions:
    only_stale: timedelta | None = None  # skip servers with a backup younger than this


@dataclass(frozen=True)
class VerifyOptions:
    pass


@dataclass(frozen=True)
class AuditOptions:
    max_age: timedelta | None = None  # None: the inventory's backup.max_age
    require_coverage: float = 100.0  # percent of the playbook's servers that must be covered


@dataclass(frozen=True)
class RestoreOptions:
    entry: str | None = None  # None: the newest backup of the host
    confirm: bool = True  # ask on the terminal before replacing the server's key


StepOptions = DoctorOptions | BackupOptions | VerifyOptions | AuditOptions | RestoreOptions


@dataclass(frozen=True)
class Step:
    number: int  # 1-based position in the playbook
    name: str  # one of STEP_NAMES
    options: StepOptions
    line: int

    @property
    def title(self) -> str:
        return f"{self.number} {self.name}"


@dataclass(frozen=True)
class Playbook:
    path: Path
    name: str
    description: str
    hosts: str  # a --limit pattern, or "all"
    on_failure: str  # stop | continue
    steps: tuple[Step, ...]
    hosts_line: int | None = field(default=None, compare=False)

    def has(self, *names: str) -> bool:
        return any(step.name in names for step in self.steps)

    @property
    def touches_servers(self) -> bool:
        return self.has("doctor", "backup", "restore")

    @property
    def needs_share(self) -> bool:
        return self.has("backup", "verify", "audit", "restore")

    @property
    def needs_password(self) -> bool:
        return self.has("backup", "restore")

    @property
    def backs_up(self) -> bool:
        """Whether the playbook writes new key files (their password is asked twice)."""
        return self.has("backup")

    def confirmations(self) -> list[Step]:
        return [s for s in self.steps if isinstance(s.options, RestoreOptions) and s.options.confirm]


_Parser = Callable[[YamlDocument, Node, str], Any]


def _duration(doc: YamlDocument, node: Node, key: str) -> timedelta:
    try:
        return timedelta(seconds=parse_duration(doc.scalar(node, key)))
    except Invalid as exc:
        raise doc.error(str(exc), node, key) from None


def _percent(doc: YamlDocument, node: Node, key: str) -> float:
    value = doc.scalar(node, key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise doc.error("must be a percentage from 0 to 100", node, key)
    return float(value)


def _text(doc: YamlDocument, node: Node, key: str) -> str:
    value = doc.scalar(node, key)
    if not isinstance(value, str) or not value.strip():
        raise doc.error("must be a non-empty string", node, key)
    return value.strip()


def _flag(doc: YamlDocument, node: Node, key: str) -> bool:
    value = doc.scalar(node, key)
    if not isinstance(value, bool):
        raise doc.error("must be true or false", node, key)
    return value


def _checks(doc: YamlDocument, node: Node, key: str) -> tuple[str, ...]:
    if not isinstance(node, SequenceNode) or not node.value:
        raise doc.error(f"must be a non-empty list of checks ({', '.join(CHECKS)})", node, key)
    names = []
    for index, item in enumerate(node.value, 1):
        name = _text(doc, item, f"{key}[{index}]")
        if name not in CHECKS:
            raise doc.error(
                f"unknown check {name!r}{_did_you_mean(name, CHECKS)} (checks: {', '.join(CHECKS)})",
                item,
                f"{key}[{index}]",
            )
        names.append(name)
    return tuple(dict.fromkeys(names))


OPTIONS: dict[str, tuple[type[StepOptions], dict[str, _Parser]]] = {
    "doctor": (DoctorOptions, {"require": _checks}),
    "backup": (BackupOptions, {"only_stale": _duration}),
    "verify": (VerifyOptions, {}),
    "audit": (AuditOptions, {"max_age": _duration, "require_coverage": _percent}),
    "restore": (RestoreOptions, {"entry": _text, "confirm": _flag}),
}


def _did_you_mean(name: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def load_playbook(path: str | Path) -> Playbook:
    """Read and validate a playbook; ConfigError (exit 2) naming file, line and key otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("no such playbook file", file=str(path))
    doc = YamlDocument(path, str(path), document="playbook")
    if doc.root is None:
        raise ConfigError("the playbook is empty", file=str(path))
    top = doc.mapping(doc.root, "")
    for name, (key_node, _) in top.items():
        if name not in TOP_KEYS:
            raise doc.error(f"unknown key{_did_you_mean(name, TOP_KEYS)} (keys: {', '.join(TOP_KEYS)})", key_node, name)
    if "name" not in top:
        raise doc.error("a playbook needs a name", doc.root, "name")
    if "steps" not in top:
        raise doc.error("a playbook needs steps", doc.root, "steps")
    on_failure = _text(doc, top["on_failure"][1], "on_failure") if "on_failure" in top else "stop"
    if on_failure not in ON_FAILURE:
        raise doc.error(f"must be {' or '.join(ON_FAILURE)}", top["on_failure"][1], "on_failure")
    hosts_node = top["hosts"][1] if "hosts" in top else None
    return Playbook(
        path=path,
        name=_text(doc, top["name"][1], "name"),
        description=_text(doc, top["description"][1], "description") if "description" in top else "",
        hosts=_text(doc, hosts_node, "hosts") if hosts_node is not None else "all",
        on_failure=on_failure,
        steps=_steps(doc, top["steps"][1]),
        hosts_line=line_of(hosts_node) if hosts_node is not None else None,
    )


def _steps(doc: YamlDocument, node: Node) -> tuple[Step, ...]:
    if not isinstance(node, SequenceNode) or not node.value:
        raise doc.error("must be a non-empty list of steps", node, "steps")
    return tuple(_step(doc, item, number) for number, item in enumerate(node.value, 1))


def _step(doc: YamlDocument, node: Node, number: int) -> Step:
    key = f"steps[{number}]"
    options_node: Node | None = None
    name_node: Node
    if isinstance(node, ScalarNode):
        name, name_node = _text(doc, node, key), node
    elif isinstance(node, MappingNode):
        items = doc.mapping(node, key)
        if len(items) != 1:
            raise doc.error(
                f"a step is one of {', '.join(STEP_NAMES)} with its options (got {len(items)} keys)", node, key
            )
        ((name, (name_node, options_node)),) = items.items()
    else:
        raise doc.error("a step is a name or a mapping of one name to its options", node, key)
    if name not in OPTIONS:
        raise doc.error(
            f"unknown step {name!r}{_did_you_mean(name, STEP_NAMES)} (steps: {', '.join(STEP_NAMES)})", name_node, key
        )
    options_type, parsers = OPTIONS[name]
    values: dict[str, Any] = {}
    if options_node is not None:
        for option, (option_key, value_node) in doc.mapping(options_node, f"{key}.{name}").items():
            option_path = f"{key}.{name}.{option}"
            if option not in parsers:
                allowed = ", ".join(parsers) or "none"
                raise doc.error(
                    f"unknown option of {name}{_did_you_mean(option, list(parsers))} (options: {allowed})",
                    option_key,
                    option_path,
                )
            values[option] = parsers[option](doc, value_node, option_path)
    return Step(number, name, options_type(**values), line_of(name_node))


def select_playbook_hosts(
    playbook: Playbook, inv: Inventory, limit: str | None, at_resolver: AtResolver | None = None
) -> list[HostConfig]:
    """The playbook's ``hosts`` intersected with ``--limit``; a restore step needs exactly one."""
    try:
        hosts = list(inv.hosts.values()) if playbook.hosts == "all" else select_hosts(inv, playbook.hosts)
    except ConfigError as exc:
        raise ConfigError(exc.message, file=str(playbook.path), line=playbook.hosts_line, key="hosts") from None
    if limit:
        chosen = {h.name for h in select_hosts(inv, limit, at_resolver)}
        hosts = [h for h in hosts if h.name in chosen]
        if not hosts:
            raise ConfigError(
                f"the playbook's hosts ({playbook.hosts}) and {limit!r} have no host in common", key="--limit"
            )
    for step in playbook.steps:
        if step.name == "restore" and len(hosts) != 1:
            names = ", ".join(h.name for h in hosts[:5]) + (", ..." if len(hosts) > 5 else "")
            raise ConfigError(
                f"the restore step works on one server, but {len(hosts)} are selected ({names}): "
                "choose the rebuilt server with --limit HOST",
                file=str(playbook.path),
                line=step.line,
                key=f"steps[{step.number}]",
            )
    return hosts


def describe_plan(playbook: Playbook, hosts: list[HostConfig], share_url: str | None) -> list[str]:
    """The plan --check prints: every step and the hosts it would work on."""
    names = ", ".join(h.name for h in hosts)
    lines = [
        f"playbook {playbook.name!r} ({playbook.path}): {len(hosts)} host(s), on_failure: {playbook.on_failure}",
        *([f"  {playbook.description}"] if playbook.description else []),
        *([f"  share: {share_url}"] if share_url else []),
    ]
    for step in playbook.steps:
        options = ", ".join(f"{k}: {_option_text(v)}" for k, v in vars(step.options).items() if v is not None)
        target = "every selected server (coverage)" if step.name == "audit" else names
        lines.append(f"  step {step.title}{f' ({options})' if options else ''}: {target}")
    return lines


def _option_text(value: object) -> str:
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)
