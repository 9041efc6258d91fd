"""``keyfleet lab up``: serve an emulated fleet in the foreground and write a ready inventory for it."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from orchestrator.errors import ConfigError
from orchestrator.lab.faults import parse_fleet_faults
from orchestrator.lab.fleet import LabFleet
from orchestrator.lab.plan import default_state_dir, lab_secrets, plan_hosts, write_ready_inventory


def run(args: argparse.Namespace) -> int:
    if args.lab_command == "up":
        return up(args)
    if args.lab_command == "rebuild":
        return rebuild(args)
    if args.lab_command == "wizard":
        return wizard(args)
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


def wizard(args: argparse.Namespace) -> int:
    """Simulate an administrator running SecureStorageBackup.exe's wizard on a lab server and saving
    the key file in the agreed outbox folder (for keyfleet collect). The password comes from the
    usual sources (KEYFLEET_BACKUP_PASSWORD, the inventory's reference, or a prompt, asked twice)."""
    from orchestrator.inventory.loader import load_inventory
    from orchestrator.jobs import context
    from orchestrator.lab.fleet import lab_machine

    inv = load_inventory(args.inventory)
    machine = lab_machine(inv, args.host)
    password = context.backup_password(inv)
    saved = machine.run_wizard(password.reveal())
    print(f"keyfleet: lab server {args.host}: the wizard saved the key file as {saved}", file=sys.stderr)
    return 0


def bench_command(args: argparse.Namespace) -> int:
    from orchestrator.console import Ui, print_result_json
    from orchestrator.lab.bench import as_json, as_rows, bench

    if args.hosts < 1 or (args.forks is not None and args.forks < 1):
        raise ConfigError("--hosts and --forks must be at least 1")
    if args.history is not None:
        return history_bench_command(args)
    args.forks = args.forks or 32
    ui = Ui()
    ui.line(
        f"bench: serving {args.hosts} lab hosts in a separate process; timing keyfleet backup at forks 1 "
        f"(sample) and {args.forks}, then a pywinrm pool ..."
    )
    result = bench(
        hosts=args.hosts, forks=args.forks, latency=args.latency, base_address=args.base_address, kdf=args.kdf
    )
    ui.table("keyfleet lab bench", ["measure", "value"], as_rows(result))
    code = 0 if result.failures == 0 else 1
    if args.json:
        print_result_json("lab", as_json(result), code)
    return code


def history_bench_command(args: argparse.Namespace) -> int:
    """``lab bench --history N``: commit cost on a fresh share and on one with N entries."""
    from orchestrator.console import Ui, print_result_json
    from orchestrator.lab.history_bench import as_json, as_rows, history_bench

    if args.history < 0:
        raise ConfigError("--history must be 0 or more")
    hosts = args.history_hosts
    ui = Ui()
    ui.line(f"bench: synthesising {args.history} entries, then backing up 1 and {hosts} hosts on both shares ...")
    result = history_bench(args.history, hosts=hosts, workers=args.forks or 128)
    ui.table("keyfleet lab bench --history", ["measure", "value"], as_rows(result))
    if args.json:
        print_result_json("lab", as_json(result), 0)
    return 0


def up(args: argparse.Namespace) -> int:
    faults = {h: tuple(str(f) for f in fs) for h, fs in parse_fleet_faults(args.faults or "").items()}
    inventory_path = Path(args.inventory_out)
    if not inventory_path.parent.is_dir():
        raise ConfigError(f"--inventory-out: folder {inventory_path.parent} does not exist")
    plan_hosts(args.hosts, args.base_address, "", faults)  # check the plan before creating any state
    state_dir = (Path(args.state_dir) if args.state_dir else default_state_dir(inventory_path)).resolve()
    created = not state_dir.exists()
    try:
        return _serve(args, faults, inventory_path, state_dir)
    except BaseException:
        if created:  # a lab that never came up leaves nothing behind (an existing state is kept)
            shutil.rmtree(state_dir, ignore_errors=True)
        raise


def _serve(args: argparse.Namespace, faults: dict[str, tuple[str, ...]], inventory_path: Path, state_dir: Path) -> int:
    secrets = lab_secrets(state_dir)
    specs = plan_hosts(args.hosts, args.base_address, secrets.user_password.reveal(), faults)
    if args.kdf == "cheap":
        from orchestrator.lab.keyfile import use_cheap_kdf

        use_cheap_kdf()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    started = time.monotonic()
    fleet = LabFleet(specs, state_dir, seed=0, journal_path=state_dir / "journal.jsonl")
    try:
        with fleet:
            write_ready_inventory(fleet, secrets, inventory_path)
            _print_fleet(fleet)
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
    print("lab fleet stopped", file=sys.stderr)
    return 0


def _print_fleet(fleet: LabFleet) -> None:
    width = max(len(spec.name) for spec in fleet.specs)
    for spec in fleet.specs:
        faults_text = f"  faults: {','.join(spec.settings.faults)}" if spec.settings.faults else ""
        columns = f"{spec.name:<{width}}  {spec.group:<9} {spec.role:<21} {spec.auth:<5}"
        print(f"  {columns} {spec.endpoint}{faults_text}", file=sys.stderr)
