"""Load an inventory YAML file into the resolved :class:`Inventory`, or raise one clear ConfigError.

Validation, defaults and inheritance (defaults -> management group -> host) all come from
``inventory.schema``; secret references are parsed here but never resolved.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from yaml.nodes import Node, SequenceNode

from orchestrator.errors import ConfigError
from orchestrator.inventory.model import (
    BackupPolicy,
    Credential,
    HostConfig,
    Inventory,
    LabConfig,
    LabHostSettings,
    Location,
    ManagementGroup,
    Role,
    SecretRef,
    ShareConfig,
    SigningConfig,
)
from orchestrator.inventory.schema import (
    HOST_SCOPES,
    SETTINGS,
    UNENCRYPTED_TRANSPORTS,
    Invalid,
    Kind,
    Scope,
    Setting,
    check_dns_name,
    check_group_name,
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
    Kind.STR_LIST: "a list of strings",
}
_PORTS = {"http": 5985, "https": 5986}


@dataclass(frozen=True)
class Value:
    """A converted setting and the YAML node it came from (for errors naming its line)."""

    value: Any
    node: Node


def load_inventory(path: str | Path) -> Inventory:
    """Parse, validate and resolve an inventory; raise ConfigError (file:line: key: what) on bad input."""
    return _Loader(Path(path)).load()


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class _Loader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.display = str(path)
        self.base_dir = path.absolute().parent
        self.doc = YamlDocument(path, self.display)
        self.lab: LabConfig | None = None

    def fail(self, message: str, node: Node | None, key: str | None) -> ConfigError:
        return self.doc.error(message, node, key)

    # -- generic, schema-driven conversion ----------------------------------------------------

    def section(self, node: Node, scope: Scope, prefix: str, *, complete: bool) -> dict[str, Value]:
        """Convert one mapping of ``scope``; ``complete``: also require its required keys."""
        allowed = settings_for(scope)
        values: dict[str, Value] = {}
        for name, (key_node, value_node) in self.doc.mapping(node, prefix).items():
            if scope is Scope.TOP and name.startswith("x-"):
                continue  # extension keys: a place for YAML anchors, as in docker compose
            setting = allowed.get(name)
            if setting is None:
                raise self.fail(self._unknown_key(name, allowed), key_node, _join(prefix, name))
            value = self.convert(setting, value_node, _join(prefix, name), inherited=scope in HOST_SCOPES)
            values[name] = Value(value, value_node)
        if complete:
            self.require(allowed, values, node, prefix)
        return values

    def require(self, allowed: dict[str, Setting], values: dict[str, Value], node: Node, prefix: str) -> None:
        for setting in allowed.values():
            if setting.required and setting.name not in values:
                choices = f" (one of {', '.join(setting.choices)})" if setting.choices else ""
                raise self.fail(f"missing required key {setting.name!r}{choices}", node, prefix or None)

    @staticmethod
    def _unknown_key(name: str, allowed: dict[str, Setting]) -> str:
        message = f"unknown key {name!r}"
        close = difflib.get_close_matches(name, list(allowed), n=1)
        if close:
            message += f"; did you mean {close[0]!r}?"
        elsewhere = sorted({where.value for s in SETTINGS if s.name == name for where in s.scopes})
        if elsewhere and not close:
            message += f" ({name!r} belongs in: {', '.join(elsewhere)})"
        return message + f" (valid keys here: {', '.join(allowed)})"

    def convert(self, setting: Setting, node: Node, key: str, *, inherited: bool) -> Any:
        """One value; mappings of host settings are completed only after inheritance."""
        kind = setting.kind
        if kind is Kind.MAPPING:
            assert setting.section is not None
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
                return parse_ref(
                    raw,
                    base_dir=self.base_dir,
                    allow_plain=self.lab is not None,
                    location=Location(self.display, line_of(node), key),
                )
            except ConfigError as exc:
                raise self.fail(exc.message, node, key) from None
        if kind is Kind.CHOICE and raw not in setting.choices:
            close = difflib.get_close_matches(raw, setting.choices, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise Invalid(f"unknown {setting.name} {raw!r}{hint} (choose from {', '.join(setting.choices)})")
        if kind is Kind.PATH and (not raw.strip() or "\0" in raw):
            raise Invalid("must be a non-empty path")
        return raw

    def resolve_path(self, raw: str) -> str:
        """A path setting resolved against the inventory's folder."""
        return os.path.normpath(self.base_dir / os.path.expanduser(raw))

    # -- the inventory ------------------------------------------------------------------------

    def load(self) -> Inventory:
        root = self.doc.root
        if root is None:
            raise self.fail("empty inventory: no management groups or hosts", None, None)
        top_pairs = self.doc.mapping(root, "")
        if not top_pairs:
            raise self.fail("empty inventory: no management groups or hosts", root, None)
        if "lab" in top_pairs:  # first: it decides whether plaintext secrets are allowed
            lab_node = top_pairs["lab"][1]
            lab = self.section(lab_node, Scope.LAB, "lab", complete=True)
            self.lab = LabConfig(
                serve=self._get(lab, Scope.LAB, "serve"),
                state_dir=Path(self.resolve_path(self._get(lab, Scope.LAB, "state_dir"))),
                seed=self._get(lab, Scope.LAB, "seed"),
            )
        top = self.section(root, Scope.TOP, "", complete=True)
        defaults = top["defaults"].value if "defaults" in top else {}
        groups, hosts = self.groups(top["management_groups"].value, defaults)
        return Inventory(
            path=self.path.absolute(),
            groups=groups,
            hosts=hosts,
            share=self.share(top.get("share")),
            backup=self.backup(top.get("backup")),
            signing=self.signing(top.get("signing")),
            lab=self.lab,
            raw=self.doc.construct(),
        )

    @staticmethod
    def _get(values: dict[str, Value], scope: Scope, name: str) -> Any:
        """The converted value, else the schema's default."""
        if name in values:
            return values[name].value
        setting = settings_for(scope)[name]
        if setting.kind is Kind.DURATION and setting.default is not None:
            return parse_duration(setting.default)
        return setting.default

    def groups(
        self, node: Node, defaults: dict[str, Value]
    ) -> tuple[dict[str, ManagementGroup], dict[str, HostConfig]]:
        key = "management_groups"
        groups: dict[str, ManagementGroup] = {}
        hosts: dict[str, HostConfig] = {}
        seen_groups: dict[str, int] = {}
        seen_hosts: dict[str, tuple[str, int]] = {}
        for group_name, (group_key_node, group_node) in self.doc.mapping(node, key).items():
            group_key = f"{key}.{group_name}"
            try:
                check_group_name(group_name)
            except Invalid as exc:
                raise self.fail(str(exc), group_key_node, group_key) from None
            if group_name.lower() in seen_groups:
                first = seen_groups[group_name.lower()]
                raise self.fail(
                    f"duplicate management group {group_name!r} (names are case-insensitive; first at line {first})",
                    group_key_node,
                    group_key,
                )
            seen_groups[group_name.lower()] = line_of(group_key_node)
            group = self.section(group_node, Scope.GROUP, group_key, complete=False)
            if "hosts" not in group:
                raise self.fail("missing required key 'hosts'", group_node, group_key)
            names: list[str] = []
            hosts_key = f"{group_key}.hosts"
            host_pairs = self.doc.mapping(group["hosts"].value, hosts_key)
            for host_name, (host_key_node, host_node) in host_pairs.items():
                host_key = f"{hosts_key}.{host_name}"
                try:
                    check_dns_name(host_name)
                except Invalid as exc:
                    raise self.fail(f"invalid host name: {exc}", host_key_node, host_key) from None
                if host_name.lower() in seen_hosts:
                    other, first = seen_hosts[host_name.lower()]
                    raise self.fail(
                        f"duplicate host {host_name!r}: already defined in group {other!r} at line {first}",
                        host_key_node,
                        host_key,
                    )
                seen_hosts[host_name.lower()] = (group_name, line_of(host_key_node))
                own = self.section(host_node, Scope.HOST, host_key, complete=False)
                hosts[host_name] = self.host(host_name, group_name, host_key, host_key_node, (defaults, group, own))
                names.append(host_name)
            groups[group_name] = ManagementGroup(group_name, self._get(group, Scope.GROUP, "description"), tuple(names))
        if not hosts:
            raise self.fail("the inventory has no hosts", node, key)
        return groups, hosts

    def host(self, name: str, group: str, key: str, key_node: Node, layers: tuple[dict[str, Value], ...]) -> HostConfig:
        allowed = settings_for(Scope.HOST)
        merged: dict[str, Value] = {}
        for layer in layers:  # defaults -> management group -> host; mappings merge key by key
            for setting_name, value in layer.items():
                if setting_name not in allowed:
                    continue
                earlier = merged.get(setting_name)
                if earlier is not None and isinstance(value.value, dict):
                    value = Value({**earlier.value, **value.value}, value.node)
                merged[setting_name] = value
        self.require(allowed, merged, key_node, key)

        def get(setting_name: str) -> Any:
            return self._get(merged, Scope.HOST, setting_name)

        scheme, transport = get("scheme"), get("transport")
        allow_insecure = get("allow_insecure")
        if scheme == "http" and transport in UNENCRYPTED_TRANSPORTS and not allow_insecure:
            raise self.fail(
                f"transport {transport} over plain http would send credentials and data unencrypted: "
                "use scheme: https, or set allow_insecure: true on this host",
                key_node,
                f"{key}.transport",
            )
        credential = None
        if "credential" in merged:
            credential = self.credential(merged["credential"], f"{key}.credential")
        elif transport in ("ntlm", "basic", "credssp"):
            raise self.fail(
                f"missing required key 'credential' (transport {transport} needs a username and password)",
                key_node,
                key,
            )
        if transport == "certificate":
            for needed in ("client_cert", "client_key"):
                if needed not in merged:
                    raise self.fail(f"missing required key {needed!r} (transport certificate)", key_node, key)
        return HostConfig(
            name=name,
            group=group,
            role=Role(get("role")),
            address=get("address") or name,
            port=get("port") or _PORTS[scheme],
            scheme=scheme,
            transport=transport,
            cert_validation=get("cert_validation"),
            ca_bundle=self.ca_bundle(merged.get("ca_bundle"), f"{key}.ca_bundle"),
            cert_thumbprint=get("cert_thumbprint"),
            allow_insecure=allow_insecure,
            credential=credential,
            client_cert=self.resolve_path(get("client_cert")) if "client_cert" in merged else None,
            client_key=self.resolve_path(get("client_key")) if "client_key" in merged else None,
            connect_timeout=get("connect_timeout"),
            operation_timeout=get("operation_timeout"),
            host_timeout=get("host_timeout"),
            retries=get("retries"),
            tool_path=get("tool_path"),
            tool_timeout=get("tool_timeout"),
            lab=self.lab_host(merged.get("lab"), f"{key}.lab") if self.lab is not None else None,
            location=Location(self.display, line_of(key_node), key),
        )

    def credential(self, value: Value, key: str) -> Credential:
        self.require(settings_for(Scope.CREDENTIAL), value.value, value.node, key)
        return Credential(username=value.value["username"].value, password=value.value["password"].value)

    def ca_bundle(self, value: Value | None, key: str) -> str | None:
        if value is None:
            return None
        if value.value == "lab":
            if self.lab is None:
                raise self.fail("ca_bundle: lab needs a lab: section (lab inventories only)", value.node, key)
            return str(self.lab.state_dir / "ca.pem")
        return self.resolve_path(value.value)

    def lab_host(self, value: Value | None, key: str) -> LabHostSettings:
        from orchestrator.lab.faults import parse_fault

        values: dict[str, Value] = value.value if value is not None else {}
        faults = self._get(values, Scope.HOST_LAB, "faults")
        for spec in faults:
            try:
                parse_fault(spec)
            except ConfigError as exc:
                raise self.fail(exc.message, values["faults"].node, f"{key}.faults") from None
        return LabHostSettings(
            version=self._get(values, Scope.HOST_LAB, "version"),
            admin=self._get(values, Scope.HOST_LAB, "admin"),
            tool_installed=self._get(values, Scope.HOST_LAB, "tool_installed"),
            tool_path=self._get(values, Scope.HOST_LAB, "tool_path"),
            faults=tuple(faults),
        )

    def share(self, value: Value | None) -> ShareConfig | None:
        if value is None:
            return None
        values: dict[str, Value] = value.value
        url_value = values["url"]
        url = url_value.value.strip()
        remote = url.lower().startswith("smb://") or url.startswith("\\\\")
        if url.lower().startswith("smb://"):
            server, _, share = url[len("smb://") :].partition("/")
            if not server or not share.strip("/"):
                raise self.fail("an smb URL is smb://server[:port]/share[/path]", url_value.node, "share.url")
        elif "://" in url:
            raise self.fail("unsupported share URL: use a path or smb://server/share/path", url_value.node, "share.url")
        elif not remote:
            url = self.resolve_path(url)
        credential = None
        if "credential" in values:
            if not remote:
                raise self.fail(
                    "a share credential is used only with smb:// or \\\\server\\share URLs",
                    values["credential"].node,
                    "share.credential",
                )
            credential = self.credential(values["credential"], "share.credential")
        return ShareConfig(url, credential, self._get(values, Scope.SHARE, "require_encryption"))

    def backup(self, value: Value | None) -> BackupPolicy:
        values: dict[str, Value] = value.value if value is not None else {}
        password: SecretRef | None = self._get(values, Scope.BACKUP, "password")
        return BackupPolicy(
            password=password,
            password_id=self._get(values, Scope.BACKUP, "password_id"),
            max_age=timedelta(seconds=self._get(values, Scope.BACKUP, "max_age")),
        )

    def signing(self, value: Value | None) -> SigningConfig | None:
        if value is None:
            return None
        values: dict[str, Value] = value.value
        return SigningConfig(
            private_key=self._get(values, Scope.SIGNING, "private_key"),
            public_key=self._get(values, Scope.SIGNING, "public_key"),
        )
