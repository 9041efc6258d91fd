"""The fleet ``keyfleet lab up`` serves: its hosts, its secrets (kept across starts) and its ready inventory."""

from __future__ import annotations

import ipaddress
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml

from orchestrator.errors import ConfigError
from orchestrator.inventory.model import Role
from orchestrator.lab.config import LabHostSettings
from orchestrator.lab.fleet import LabFleet, LabHostSpec
from orchestrator.privatefile import create_private, write_private
from orchestrator.secret import Secret
from orchestrator.share.manifest import (
    load_private_key,
    load_public_key,
    new_signing_key_pair,
    public_key_sha256,
)

LAB_USER = "LAB\\keyfleet"
MAX_HOSTS = 1000
SECRETS_FILE = "lab-up-secrets.json"
_SECRETS_FORMAT = "keyfleet-lab-secrets/1"
_ROLES = (Role.MANAGEMENT_SERVER, Role.DW_MANAGEMENT_SERVER, Role.SELF_SERVICE_PORTAL)
_ROLE_ABBR = {Role.MANAGEMENT_SERVER: "ms", Role.DW_MANAGEMENT_SERVER: "dw", Role.SELF_SERVICE_PORTAL: "portal"}
# (scheme, auth) by host index: NTLM over HTTP with encryption, Basic over HTTPS, NTLM over HTTPS (CBT).
_MODES = (("http", "ntlm"), ("https", "basic"), ("http", "ntlm"), ("https", "ntlm"))
_GROUPS = (("LAB-PROD", "prod"), ("LAB-TEST", "test"))
_HEADER = "# Written by `keyfleet lab up`: valid while it runs. Plaintext secrets are lab-only.\n"


def plan_hosts(count: int, base_address: str, password: str, faults: dict[str, tuple[str, ...]]) -> list[LabHostSpec]:
    """``count`` hosts in two management groups, all three roles, NTLM/HTTP, Basic/HTTPS, NTLM/HTTPS."""
    if not 1 <= count <= MAX_HOSTS:
        raise ConfigError(f"--hosts must be between 1 and {MAX_HOSTS}")
    try:
        base = ipaddress.IPv4Address(base_address)
    except ValueError:
        raise ConfigError(f"--base-address {base_address!r} is not an IPv4 address") from None
    loopback = ipaddress.IPv4Network("127.0.0.0/8")
    if base not in loopback or base + (count - 1) not in loopback:
        raise ConfigError(f"--base-address: {count} hosts from {base} do not fit in 127.0.0.0/8 (loopback)")
    per_group = (count + 1) // 2
    counters: dict[tuple[str, Role], int] = {}
    specs = []
    for i in range(count):
        group, prefix = _GROUPS[0] if i < per_group else _GROUPS[1]
        role = _ROLES[i % 3]
        counters[(prefix, role)] = n = counters.get((prefix, role), 0) + 1
        name = f"{prefix}-{_ROLE_ABBR[role]}{n:02d}"
        scheme, auth = _MODES[i % len(_MODES)]
        specs.append(
            LabHostSpec(
                name=name,
                group=group,
                role=role,
                address=str(base + i),
                port=5986 if scheme == "https" else 5985,
                scheme=scheme,
                auth=auth,
                users={LAB_USER: (password, True)},
                settings=LabHostSettings(faults=faults.get(name, ())),
            )
        )
    unknown = sorted(set(faults) - {s.name for s in specs})
    if unknown:
        names = ", ".join(s.name for s in specs)
        raise ConfigError(f"--faults names unknown host(s) {', '.join(unknown)} (hosts: {names})")
    return specs


@dataclass(frozen=True)
class LabSecrets:
    """What a lab-up fleet's inventory needs to stay valid across starts: the backups it already made
    open with the same password and its share's manifest verifies with the same key."""

    user_password: Secret
    backup_password: Secret
    signing_private_key: Secret
    signing_public_key: str


def default_state_dir(inventory_path: Path) -> Path:
    """``<inventory folder>/<inventory stem>-state``: where lab up keeps its lab unless told otherwise."""
    return inventory_path.parent / f"{inventory_path.stem}-state"


def share_path(inventory_path: Path) -> Path:
    """``<inventory folder>/<inventory stem>-share``: one share per ready inventory, never another's."""
    return inventory_path.parent.resolve() / f"{inventory_path.stem}-share"


def _fresh_secrets() -> bytes:
    private, public = new_signing_key_pair()
    document = {
        "format": _SECRETS_FORMAT,
        "user_password": "Lab-" + secrets.token_urlsafe(15),
        "backup_password": secrets.token_urlsafe(18),
        "signing_private_key": private.reveal(),
        "signing_public_key": public,
    }
    return json.dumps(document, indent=2).encode()


def lab_secrets(state_dir: Path) -> LabSecrets:
    """The secrets kept in ``<state_dir>/lab-up-secrets.json`` (0600), generated on the first start."""
    path = state_dir / SECRETS_FILE
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        create_private(path, _fresh_secrets())  # False: a concurrent lab up was first; use its secrets
    damaged = ConfigError(f"{path} is damaged; delete it to start the lab over (lab backups made so far will not open)")
    try:
        data = json.loads(path.read_bytes())
    except ValueError:
        raise damaged from None
    fields = ("user_password", "backup_password", "signing_private_key", "signing_public_key")
    if not isinstance(data, dict) or data.get("format") != _SECRETS_FORMAT:
        raise damaged
    if not all(isinstance(data.get(name), str) for name in fields):
        raise damaged
    kept = LabSecrets(
        user_password=Secret(data["user_password"], "lab user password"),
        backup_password=Secret(data["backup_password"], "lab backup password"),
        signing_private_key=Secret(data["signing_private_key"], "lab signing key"),
        signing_public_key=data["signing_public_key"],
    )
    try:
        derived = public_key_sha256(load_private_key(kept.signing_private_key).public_key())
        matches = derived == public_key_sha256(load_public_key(kept.signing_public_key))
    except ConfigError:
        matches = False
    if not matches:
        raise damaged
    return kept


def ready_inventory(fleet: LabFleet, lab: LabSecrets, inventory_path: Path) -> dict[str, object]:
    """The inventory document of a running fleet: connection details, plaintext lab secrets."""
    groups: dict[str, dict[str, object]] = {}
    for spec in fleet.specs:
        host: dict[str, object] = {
            "role": str(spec.role),
            "address": spec.address,
            "port": spec.port,
            "scheme": spec.scheme,
            "transport": spec.auth,
        }
        if spec.scheme == "https":
            host["ca_bundle"] = str(fleet.ca_path)
        if spec.settings.faults:
            host["lab"] = {"faults": list(spec.settings.faults)}
        group = groups.setdefault(spec.group, {"description": "Lab group served by keyfleet lab up", "hosts": {}})
        group["hosts"][spec.name] = host  # type: ignore[index]
    return {
        "lab": {"serve": False, "state_dir": str(fleet.state_dir), "seed": fleet.seed},
        "share": {"url": str(share_path(inventory_path))},
        "backup": {"password": lab.backup_password.reveal(), "password_id": "lab-up", "max_age": "30d"},
        "signing": {"private_key": lab.signing_private_key.reveal(), "public_key": lab.signing_public_key},
        "defaults": {
            "credential": {"username": LAB_USER, "password": lab.user_password.reveal()},
            "connect_timeout": "5s",
            "operation_timeout": "20s",
            "host_timeout": "120s",
            "retries": 1,
        },
        "management_groups": groups,
    }


def write_ready_inventory(fleet: LabFleet, lab: LabSecrets, inventory_path: Path) -> None:
    """Write the ready inventory of a running fleet to ``inventory_path`` (0600: it holds lab secrets)."""
    document = ready_inventory(fleet, lab, inventory_path)
    write_private(inventory_path, (_HEADER + yaml.safe_dump(document, sort_keys=False)).encode())
