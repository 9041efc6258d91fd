"""Hypothesis strategies of *valid* inventories, each with the resolved host settings the format promises.

A drawn :class:`Drawn` holds the YAML document (defaults, management groups, hosts of the three roles,
host settings at each level) and, worked out here from the documented rules rather than by the loader,
what every host's settings must resolve to: the most specific level wins (host, then its group, then
``defaults``), then the schema's default; ``credential`` mappings merge key by key.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from orchestrator.inventory.schema import ROLES

LEVELS = ("defaults", "group", "host")
# setting -> (YAML value, resolved value) pairs a generated inventory may use; every pair is valid anywhere
CHOICES: dict[str, list[tuple[Any, Any]]] = {
    "role": [(role, role) for role in ROLES],
    "address": [(a, a) for a in ("10.1.2.3", "192.0.2.44", "scsm-a.contoso.com", "srv7.example.org")],
    "port": [(p, p) for p in (1, 443, 5985, 5986, 15986, 65535)],
    "scheme": [("http", "http"), ("https", "https")],
    "transport": [(t, t) for t in ("ntlm", "kerberos", "negotiate", "credssp", "basic", "certificate")],
    "domain": [(d, d) for d in ("contoso.com", "corp.example.org")],
    "kerberos_hostname": [(k, k) for k in ("alias.contoso.com", "node9")],
    "realm": [("contoso.com", "CONTOSO.COM"), ("CORP.EXAMPLE.ORG", "CORP.EXAMPLE.ORG")],
    "cert_validation": [(True, True), (False, False)],
    "cert_thumbprint": [("AB" * 20, "ab" * 20), (":".join(["0f"] * 32), "0f" * 32)],
    "allow_insecure": [(True, True), (False, False)],
    "connect_timeout": [("3s", 3.0), ("2m", 120.0), (7, 7.0), ("1.5m", 90.0)],
    "operation_timeout": [("5s", 5.0), ("1m", 60.0), (30, 30.0)],
    "host_timeout": [("90s", 90.0), ("1h", 3600.0), ("1d", 86400.0)],
    "tool_timeout": [("45s", 45.0), ("10m", 600.0)],
    "retries": [(r, r) for r in (0, 1, 5, 10)],
    "proxy": [(p, p) for p in ("http://proxy:3128", "https://gw.contoso.com")],
    "tool_path": [(p, p) for p in ("C:\\SCSM\\SecureStorageBackup.exe", "D:\\tools\\ssb.exe")],
    "tool_input": [(i, i) for i in ("auto", "stdin", "console")],
    # files, relative to the inventory's folder (FILES are written there before loading)
    "ca_bundle": [(f, f) for f in ("ca-a.pem", "certs/ca-b.pem")],
    "client_cert": [(f, f) for f in ("client.pem", "certs/other.pem")],
    "client_key": [(f, f) for f in ("client.key", "certs/other.key")],
}
PATHS = ("ca_bundle", "client_cert", "client_key")  # resolved against the inventory's folder
FILES = sorted({pair[0] for name in PATHS for pair in CHOICES[name]})
UNENCRYPTED = ("basic", "certificate")  # over http only with allow_insecure
# what a host gets when no level sets the setting (address, port and kerberos_hostname are computed)
DEFAULTS: dict[str, Any] = {
    "scheme": "http",
    "transport": "ntlm",
    "realm": None,
    "cert_validation": True,
    "cert_thumbprint": None,
    "allow_insecure": False,
    "connect_timeout": 10.0,
    "operation_timeout": 20.0,
    "host_timeout": 300.0,
    "tool_timeout": 120.0,
    "retries": 2,
    "proxy": None,
    "tool_path": None,
    "tool_input": "auto",
    "ca_bundle": None,
    "client_cert": None,
    "client_key": None,
}
CREDENTIAL_KEYS = {"username": ["CONTOSO\\svc-a", "svc-b@CONTOSO.COM"], "password": ["env:KF_PW_A", "env:KF_PW_B"]}
HOST_PREFIXES = ("scsm-ms", "scsm-dw", "portal", "web")
GROUP_NAMES = ("PROD", "DEV", "DR", "Lab_2", "eu.west")


@dataclass
class Drawn:
    """A valid inventory document and each host's expected resolved settings (by host name)."""

    document: dict[str, Any]
    expected: dict[str, dict[str, Any]]
    groups: dict[str, list[str]]  # group -> its hosts, in file order


def _layer(draw: st.DrawFn, names: list[str]) -> dict[str, tuple[Any, Any]]:
    """Some of ``names``, each with a drawn (YAML, resolved) pair."""
    chosen = draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names)))
    return {name: draw(st.sampled_from(CHOICES[name])) for name in chosen}


def _credential(draw: st.DrawFn, *, complete: bool) -> dict[str, str]:
    keys = list(CREDENTIAL_KEYS) if complete else draw(st.lists(st.sampled_from(list(CREDENTIAL_KEYS)), unique=True))
    return {key: draw(st.sampled_from(CREDENTIAL_KEYS[key])) for key in keys}


def _resolve(name: str, layers: list[dict[str, tuple[Any, Any]]], credentials: list[dict[str, str]]) -> dict[str, Any]:
    """The documented inheritance: the most specific layer that sets a setting wins."""
    resolved: dict[str, Any] = dict(DEFAULTS)
    for layer in layers:  # defaults, group, host: a later layer overrides an earlier one
        resolved.update({setting: pair[1] for setting, pair in layer.items()})
    domain = resolved.pop("domain", None)
    resolved.setdefault("address", name)
    resolved.setdefault("port", 5986 if resolved["scheme"] == "https" else 5985)
    resolved.setdefault("kerberos_hostname", f"{name}.{domain}" if domain else name)
    credential: dict[str, str] = {}
    for layer_credential in credentials:
        credential.update(layer_credential)
    resolved["credential"] = credential
    return resolved


@st.composite
def inventories(draw: st.DrawFn) -> Drawn:
    """A valid inventory: 1-4 management groups of 1-4 hosts, settings drawn at every level."""
    settings = list(CHOICES)
    defaults = _layer(draw, settings)
    defaults.setdefault("role", draw(st.sampled_from(CHOICES["role"])))  # required: the defaults always have one
    credentials = [_credential(draw, complete=True)]  # ntlm, credssp and basic need a username and password
    document: dict[str, Any] = {"defaults": {**{k: v[0] for k, v in defaults.items()}, "credential": credentials[0]}}
    if draw(st.booleans()):
        document["backup"] = {"password": "env:KF_BACKUP", "password_id": "p-1", "max_age": "7d"}
    if draw(st.booleans()):
        document["share"] = {"url": "\\\\files.contoso.com\\keys"}
    groups: dict[str, Any] = {}
    members: dict[str, list[str]] = {}
    expected: dict[str, dict[str, Any]] = {}
    counter = 0
    for group_name in draw(st.lists(st.sampled_from(GROUP_NAMES), min_size=1, max_size=4, unique=True)):
        group_layer = _layer(draw, settings)
        group_credential = _credential(draw, complete=False) if draw(st.booleans()) else {}
        hosts: dict[str, Any] = {}
        for _ in range(draw(st.integers(1, 4))):
            counter += 1
            name = f"{draw(st.sampled_from(HOST_PREFIXES))}{counter:02d}"
            host_layer = _layer(draw, settings)
            host_credential = _credential(draw, complete=False) if draw(st.booleans()) else {}
            layers = [defaults, group_layer, host_layer]
            resolved = _resolve(name, layers, [credentials[0], group_credential, host_credential])
            unencrypted = resolved["scheme"] == "http" and resolved["transport"] in UNENCRYPTED
            if unencrypted and not resolved["allow_insecure"]:
                host_layer["allow_insecure"] = (True, True)  # refused over http without it
                resolved["allow_insecure"] = True
            for needed in ("client_cert", "client_key"):
                if resolved["transport"] == "certificate" and resolved[needed] is None:
                    host_layer[needed] = CHOICES[needed][0]  # the certificate transport needs both
                    resolved[needed] = CHOICES[needed][0][1]
            host = {k: v[0] for k, v in host_layer.items()}
            if host_credential:
                host["credential"] = host_credential
            hosts[name] = host
            expected[name] = resolved
        group: dict[str, Any] = {k: v[0] for k, v in group_layer.items()}
        if group_credential:
            group["credential"] = group_credential
        if draw(st.booleans()):
            group["description"] = f"the {group_name} group"
        group["hosts"] = hosts
        groups[group_name] = group
        members[group_name] = list(hosts)
    document["management_groups"] = groups
    return Drawn(document, expected, members)


ORDERED = ("management_groups", "hosts")  # mappings whose order is the inventory's order (groups, hosts)


def reorder(document: Any, rng: random.Random, parent: str = "") -> Any:
    """``document`` with the keys of every mapping shuffled, except where order means file order."""
    if not isinstance(document, dict):
        return document
    items = [(key, reorder(value, rng, key)) for key, value in document.items()]
    if parent not in ORDERED:
        rng.shuffle(items)
    return dict(items)
