"""``keyfleet lab up``: serve an emulated fleet in the foreground and write a ready inventory for it."""

from __future__ import annotations

import argparse
import base64
import ipaddress
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator.errors import ConfigError
from orchestrator.inventory.model import LabHostSettings, Role
from orchestrator.lab.faults import parse_fleet_faults
from orchestrator.lab.fleet import LabFleet, LabHostSpec
from orchestrator.lab.pki import write_private

LAB_USER = "LAB\\keyfleet"
MAX_HOSTS = 1000
_ROLES = (Role.MANAGEMENT_SERVER, Role.DW_MANAGEMENT_SERVER, Role.SELF_SERVICE_PORTAL)
_ROLE_ABBR = {Role.MANAGEMENT_SERVER: "ms", Role.DW_MANAGEMENT_SERVER: "dw", Role.SELF_SERVICE_PORTAL: "portal"}
# (scheme, auth) by host index: NTLM over HTTP with encryption, Basic over HTTPS, NTLM over HTTPS (CBT).
_MODES = (("http", "ntlm"), ("https", "basic"), ("http", "ntlm"), ("https", "ntlm"))
_GROUPS = (("LAB-PROD", "prod"), ("LAB-TEST", "test"))


def run(args: argparse.Namespace) -> int:
    if args.lab_command == "up":
        return up(args)
    if args.lab_command == "rebuild":
        return rebuild(args)
    return bench_command(args)


def rebuild(args: argparse.Namespace) -> int:
    """Simulate reinstalling a lab server: its key is replaced, as a fresh SCSM install would."""
    from orchestrator.inventory.loader import load_inventory
    from orchestrator.lab.fleet import lab_machine

    inv = load_inventory(args.inventory)
    machine = lab_machine(inv, args.host)
    machine.rebuild()
    print(f"keyfleet: lab server {args.host} rebuilt: its encryption key was replaced", file=sys.stderr)
    return 0


def bench_command(args: argparse.Namespace) -> int:
    from orchestrator.console import Ui, print_json
    from orchestrator.lab.bench import as_json, as_rows, bench

    if args.hosts < 1 or args.forks < 1:
        raise ConfigError("--hosts and --forks must be at least 1")
    ui = Ui()
    ui.line(f"bench: serving {args.hosts} lab hosts in a separate process, backing them up twice ...")
    result = bench(hosts=args.hosts, forks=args.forks, latency=args.latency)
    ui.table("keyfleet lab bench", ["measure", "value"], as_rows(result))
    if args.json:
        print_json(as_json(result))
    return 0 if result.failures == 0 else 1


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


def ready_inventory(fleet: LabFleet, password: str, inventory_path: Path) -> dict[str, object]:
    """The inventory document of a running fleet: connection details, plaintext lab secrets."""
    signing_key = Ed25519PrivateKey.generate()
    raw_private = signing_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    raw_public = signing_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
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
        "share": {"url": str(inventory_path.parent.resolve() / "lab-share")},
        "backup": {"password": secrets.token_urlsafe(18), "password_id": "lab-up", "max_age": "30d"},
        "signing": {
            "private_key": base64.b64encode(raw_private).decode(),
            "public_key": base64.b64encode(raw_public).decode(),
        },
        "defaults": {
            "credential": {"username": LAB_USER, "password": password},
            "connect_timeout": "5s",
            "operation_timeout": "20s",
            "host_timeout": "120s",
            "retries": 1,
        },
        "management_groups": groups,
    }


def up(args: argparse.Namespace) -> int:
    faults = {h: tuple(str(f) for f in fs) for h, fs in parse_fleet_faults(args.faults or "").items()}
    password = "Lab-" + secrets.token_urlsafe(15)
    specs = plan_hosts(args.hosts, args.base_address, password, faults)
    inventory_path = Path(args.inventory_out)
    if not inventory_path.parent.is_dir():
        raise ConfigError(f"--inventory-out: folder {inventory_path.parent} does not exist")
    own_state = args.state_dir is None
    state_dir = Path(tempfile.mkdtemp(prefix="keyfleet-lab-")) if own_state else Path(args.state_dir)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    started = time.monotonic()
    fleet = LabFleet(specs, state_dir, seed=0, journal_path=state_dir.resolve() / "journal.jsonl")
    try:
        with fleet:
            document = ready_inventory(fleet, password, inventory_path)
            header = "# Written by `keyfleet lab up`: valid while it runs. Plaintext secrets are lab-only.\n"
            write_private(inventory_path, (header + yaml.safe_dump(document, sort_keys=False)).encode())
            width = max(len(spec.name) for spec in fleet.specs)
            for spec in fleet.specs:
                faults_text = f"  faults: {','.join(spec.settings.faults)}" if spec.settings.faults else ""
                columns = f"{spec.name:<{width}}  {spec.group:<9} {spec.role:<21} {spec.auth:<5}"
                print(f"  {columns} {spec.endpoint}{faults_text}", file=sys.stderr)
            print(
                f"ready: {len(specs)} lab hosts listening ({time.monotonic() - started:.2f}s); "
                f"inventory: {inventory_path}; journal: {fleet.journal.path}; Ctrl-C to stop",
                file=sys.stderr,
                flush=True,
            )
            while not stop.wait(0.5):
                pass
            print("stopping the lab fleet", file=sys.stderr, flush=True)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if own_state:
            shutil.rmtree(state_dir, ignore_errors=True)
    print("lab fleet stopped", file=sys.stderr)
    return 0
