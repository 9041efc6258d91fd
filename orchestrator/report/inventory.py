"""The ``keyfleet inventory`` renderings: the ``--json`` document and the summary lines.

Secrets are never resolved or shown: only their references (``SecretRef.describe()``).
"""

from __future__ import annotations

from typing import Any

from orchestrator.durations import format_duration
from orchestrator.emulation import LabView, view
from orchestrator.inventory.model import Credential, HostConfig, Inventory


def _credential(credential: Credential | None) -> dict[str, str | None] | None:
    if credential is None:
        return None
    password = credential.password.describe() if credential.password else None
    shown: dict[str, str | None] = {"username": credential.username, "password": password}
    if credential.keytab is not None:
        shown["keytab"] = credential.keytab  # the path only: keyfleet never reads the keytab
    return shown


def host_document(host: HostConfig, lab: LabView | None = None) -> dict[str, Any]:
    return {
        "name": host.name,
        "group": host.group,
        "role": host.role.value,
        "address": host.address,
        "port": host.port,
        "scheme": host.scheme,
        "transport": host.transport,
        "endpoint": host.endpoint,
        "cert_validation": host.cert_validation,
        "ca_bundle": host.ca_bundle,
        "cert_thumbprint": host.cert_thumbprint,
        "allow_insecure": host.allow_insecure,
        "credential": _credential(host.credential),
        "kerberos_hostname": host.kerberos_hostname,
        "realm": host.realm,
        "client_cert": host.client_cert,
        "client_key": host.client_key,
        "connect_timeout": host.connect_timeout,
        "operation_timeout": host.operation_timeout,
        "host_timeout": host.host_timeout,
        "retries": host.retries,
        "tool_path": host.tool_path,
        "tool_timeout": host.tool_timeout,
        "lab": lab.hosts.get(host.name) if lab is not None else None,
        "line": host.location.line,
    }


def inventory_document(inv: Inventory, selected: list[HostConfig]) -> dict[str, Any]:
    """The ``--json`` document (shape documented in the README; durations in seconds)."""
    share = inv.share
    lab = view(inv)
    return {
        "inventory": str(inv.path),
        "lab": None if lab is None else {"serve": lab.serve, "state_dir": str(lab.state_dir), "seed": lab.seed},
        "share": None
        if share is None
        else {
            "url": share.url,
            "credential": _credential(share.credential),
            "require_encryption": share.require_encryption,
        },
        "backup": {
            "password": inv.backup.password.describe() if inv.backup.password else "prompt",
            "password_id": inv.backup.password_id,
            "max_age": inv.backup.max_age.total_seconds(),
        },
        "signing": None
        if inv.signing is None
        else {
            "private_key": inv.signing.private_key.describe() if inv.signing.private_key else None,
            "public_key": inv.signing.public_key,
        },
        "groups": [{"name": g.name, "description": g.description, "hosts": list(g.hosts)} for g in inv.groups.values()],
        "hosts": [host_document(h, lab) for h in selected],
        "selected": len(selected),
        "total": len(inv.hosts),
    }


def summary_lines(inv: Inventory, selected: list[HostConfig]) -> list[str]:
    lines = [f"{len(selected)} of {len(inv.hosts)} hosts selected in {len(inv.groups)} management groups"]
    if inv.share is not None:
        cred = f", credential {inv.share.credential.username}" if inv.share.credential else ""
        lines.append(f"share: {inv.share.url}{cred}")
    else:
        lines.append("share: none (give --share to backup and audit)")
    password = inv.backup.password.describe() if inv.backup.password else "prompt (asked twice)"
    lines.append(
        f"backup: password {password}, password_id {inv.backup.password_id}, "
        f"max_age {format_duration(inv.backup.max_age)}"
    )
    if inv.signing is not None:
        private = inv.signing.private_key.describe() if inv.signing.private_key else "none (verify only)"
        lines.append(f"signing: private key {private}, public key {inv.signing.public_key[:16]}...")
    else:
        lines.append("signing: none (the manifest is not signed)")
    lab = view(inv)
    if lab is not None:
        serve = "served by keyfleet" if lab.serve else "served by `keyfleet lab up`"
        lines.append(f"lab: {serve}, state_dir {lab.state_dir}, seed {lab.seed}")
    return lines
