"""Load an inventory YAML file into the resolved :class:`Inventory`, or raise one clear ConfigError.

Validation and defaults come from ``inventory.schema`` (converted by ``inventory.convert``); this
module adds inheritance (defaults -> management group -> host) and the rules that span settings.
Secret references are parsed but never resolved.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from yaml.nodes import Node

from orchestrator import emulation
from orchestrator.inventory.convert import SchemaReader, Value
from orchestrator.inventory.model import (
    BackupPolicy,
    Credential,
    HostConfig,
    Inventory,
    Location,
    ManagementGroup,
    Role,
    SecretRef,
    Section,
    ShareConfig,
    SigningConfig,
)
from orchestrator.inventory.schema import (
    LAB_CA,
    UNENCRYPTED_TRANSPORTS,
    Invalid,
    Scope,
    check_dns_name,
    check_group_name,
    is_loopback,
    settings_for,
)
from orchestrator.inventory.yamlnodes import YamlDocument, line_of
from orchestrator.secretrefs import PLAINTEXT_ADVICE

_PORTS = {"http": 5985, "https": 5986}
KERBEROS_TRANSPORTS = ("kerberos", "negotiate")


def _in_domain(name: str, domain: str | None) -> str:
    """The host's DNS name for its service principal: a name without a dot gets the inventory's domain."""
    return f"{name}.{domain}" if domain and "." not in name else name


def load_inventory(path: str | Path) -> Inventory:
    """Parse, validate and resolve an inventory; raise ConfigError (file:line: key: what) on bad input."""
    return _Loader(Path(path)).load()


def _smb_server(url: str) -> str | None:
    """The server of an ``smb://`` or ``\\\\server\\share`` URL; None for a local path."""
    if url.startswith("\\\\"):
        return url.lstrip("\\").split("\\")[0]
    if url.lower().startswith("smb://"):
        try:
            return urlsplit(url).hostname or None
        except ValueError:  # e.g. an unclosed [ in the server part: surely not a loopback address
            return url
    return None


class _Loader(SchemaReader):
    """Builds the resolved inventory from the converted sections: inheritance and cross-setting rules."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(YamlDocument(path, str(path)), path.absolute().parent)
        self.lab: Section | None = None
        self.lab_part: emulation.Lab | None = None  # the lab, loaded for an inventory with a lab: section only

    def load(self) -> Inventory:
        root = self.doc.root
        if root is None:
            raise self.fail("empty inventory: no management groups or hosts", None, None)
        top_pairs = self.doc.mapping(root, "")
        if not top_pairs:
            raise self.fail("empty inventory: no management groups or hosts", root, None)
        if "lab" in top_pairs:  # first: it decides whether plaintext secrets are allowed
            lab_node = top_pairs["lab"][1]
            self.lab_part = emulation.lab()
            lab = self.lab_part.read(self, Scope.LAB, lab_node, "lab")
            self.allow_plain = True
            self.lab = self.lab_part.section(self, Scope.LAB, lab, lab_node, "lab")
        top = self.section(root, Scope.TOP, "", complete=True)
        defaults = top["defaults"].value if "defaults" in top else {}
        groups, hosts = self.groups(top["management_groups"].value, defaults)
        share = self.share(top.get("share"))
        self.refuse_plaintext_off_loopback(hosts, share)
        self.doc.construct()  # every value must be plain YAML data, x- extensions too (not kept: it holds secrets)
        return Inventory(
            path=self.path.absolute(),
            groups=groups,
            hosts=hosts,
            share=share,
            backup=self.backup(top.get("backup")),
            signing=self.signing(top.get("signing")),
            lab=self.lab,
        )

    def refuse_plaintext_off_loopback(self, hosts: dict[str, HostConfig], share: ShareConfig | None) -> None:
        """A lab section alone does not allow plaintext secrets: every server must be on loopback too."""
        if not self.plaintext:
            return
        remote = [
            f"host {h.name}" + (f" ({h.address})" if h.address != h.name else "")
            for h in hosts.values()
            if not is_loopback(h.address)
        ]
        server = _smb_server(share.url) if share is not None else None
        if server is not None and not is_loopback(server):
            remote.append(f"share server {server}")
        if remote:
            more = f" (and {len(remote) - 1} more)" if len(remote) > 1 else ""
            node, key = min(self.plaintext, key=lambda pair: line_of(pair[0]))
            message = f"plaintext secret, but {remote[0]}{more} is not on loopback (127.0.0.0/8): {PLAINTEXT_ADVICE}"
            raise self.fail(message, node, key)

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
            groups[group_name] = ManagementGroup(
                group_name, self.value_of(group, Scope.GROUP, "description"), tuple(names)
            )
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
                    inherited = dict(earlier.value)
                    if setting_name == "credential":  # a password and a keytab replace each other
                        for own, other in (("keytab", "password"), ("password", "keytab")):
                            if own in value.value:
                                inherited.pop(other, None)
                    value = Value({**inherited, **value.value}, value.node)
                merged[setting_name] = value
        self.require(allowed, merged, key_node, key)

        def get(setting_name: str) -> Any:
            return self.value_of(merged, Scope.HOST, setting_name)

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
        if credential is not None and credential.keytab is not None and transport not in KERBEROS_TRANSPORTS:
            raise self.fail(
                f"a keytab is used only with transport kerberos or negotiate, not {transport}",
                merged["credential"].node,
                f"{key}.credential.keytab",
            )
        if transport in ("ntlm", "basic", "credssp") and (credential is None or credential.password is None):
            missing = "credential" if credential is None else "credential.password"
            raise self.fail(
                f"missing required key {missing!r} (transport {transport} needs a username and password)",
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
            client_cert=get("client_cert"),  # resolved and checked on conversion
            client_key=get("client_key"),
            connect_timeout=get("connect_timeout"),
            operation_timeout=get("operation_timeout"),
            host_timeout=get("host_timeout"),
            retries=get("retries"),
            tool_path=get("tool_path"),
            tool_timeout=get("tool_timeout"),
            tool_input=get("tool_input"),
            lab=self.lab_host(merged.get("lab"), key_node, f"{key}.lab"),
            location=Location(self.display, line_of(key_node), key),
            proxy=get("proxy"),
            kerberos_hostname=get("kerberos_hostname") or _in_domain(name, get("domain")),
            realm=get("realm"),
        )

    def credential(self, value: Value, key: str) -> Credential:
        values: dict[str, Value] = value.value
        self.require(settings_for(Scope.CREDENTIAL), values, value.node, key)
        if "password" in values and "keytab" in values:
            raise self.fail("give a password or a keytab, not both", values["keytab"].node, f"{key}.keytab")
        keytab = self.resolve_path(values["keytab"].value) if "keytab" in values else None
        return Credential(values["username"].value, values["password"].value if "password" in values else None, keytab)

    def ca_bundle(self, value: Value | None, key: str) -> str | None:
        if value is None:
            return None
        if value.value == LAB_CA:
            if self.lab is None or self.lab_part is None:
                raise self.fail("ca_bundle: lab needs a lab: section (lab inventories only)", value.node, key)
            return self.lab_part.ca_file(self.lab, self.base_dir)
        return str(value.value)  # resolved and checked on conversion

    def lab_host(self, value: Value | None, key_node: Node, key: str) -> Section | None:
        """A host's lab settings, completed and checked by the lab (lab inventories only: elsewhere the lab
        converts them, and they are ignored)."""
        if self.lab_part is None:
            return None
        section = self.lab_part.section(self, Scope.HOST_LAB, value.value if value is not None else {}, key_node, key)
        self.lab_part.check_host(section)
        return section

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
            if credential.password is None or credential.keytab is not None:
                raise self.fail(
                    "a share credential is {username, password}", values["credential"].node, "share.credential"
                )
        return ShareConfig(url, credential, self.value_of(values, Scope.SHARE, "require_encryption"))

    def backup(self, value: Value | None) -> BackupPolicy:
        values: dict[str, Value] = value.value if value is not None else {}
        password: SecretRef | None = self.value_of(values, Scope.BACKUP, "password")
        return BackupPolicy(
            password=password,
            password_id=self.value_of(values, Scope.BACKUP, "password_id"),
            max_age=timedelta(seconds=self.value_of(values, Scope.BACKUP, "max_age")),
        )

    def signing(self, value: Value | None) -> SigningConfig | None:
        if value is None:
            return None
        values: dict[str, Value] = value.value
        return SigningConfig(
            private_key=self.value_of(values, Scope.SIGNING, "private_key"),
            public_key=self.value_of(values, Scope.SIGNING, "public_key"),
        )
