"""``keyfleet inventory -i INV [--limit P] [--json]``: validate and show the resolved inventory.

Secrets are never resolved or shown: only their references (``SecretRef.describe()``).
"""

from __future__ import annotations

import argparse
import sys

from orchestrator.console import Ui, print_result_json
from orchestrator.durations import format_duration
from orchestrator.inventory.limit import select_hosts
from orchestrator.inventory.loader import load_inventory
from orchestrator.inventory.model import HostConfig
from orchestrator.report.inventory import inventory_document, summary_lines


def _warnings(selected: list[HostConfig]) -> list[str]:
    warnings = []
    for host in selected:
        if host.allow_insecure and host.scheme == "http" and host.transport in ("basic", "certificate"):
            warnings.append(f"{host.name}: allow_insecure: {host.transport} over plain http is not encrypted")
        if host.scheme == "https" and not host.cert_validation:
            warnings.append(f"{host.name}: cert_validation is off: the server's identity is not checked")
    return warnings


def run(args: argparse.Namespace) -> int:
    inv = load_inventory(args.inventory)
    selected = select_hosts(inv, args.limit)
    if args.json:
        print_result_json("inventory", inventory_document(inv, selected), 0)
        return 0
    ui = Ui(sys.stdout)
    rows = [
        [
            h.name,
            h.group,
            h.role.value,
            h.endpoint,
            h.transport,
            h.credential.username if h.credential else "-",
            format_duration(h.tool_timeout),
        ]
        for h in selected
    ]
    columns = ["host", "group", "role", "endpoint", "transport", "credential user", "tool_timeout"]
    ui.table(f"inventory {args.inventory}", columns, rows)
    for line in summary_lines(inv, selected):
        ui.line(line)
    warn = Ui(sys.stderr)
    for warning in _warnings(selected):
        warn.warn(warning)
    return 0
