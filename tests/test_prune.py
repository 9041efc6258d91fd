"""Retention: the newest N per server stay, the newest intact backup always stays, the manifest stays signed."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator.cli import main
from orchestrator.errors import ConfigError, IntegrityError
from orchestrator.inventory.model import Inventory
from orchestrator.jobs.prune import Action, apply_prune, plan_prune
from orchestrator.share.local import LocalShare
from orchestrator.share.manifest import ManifestEntry
from orchestrator.share.store import BackupStore
from tests.test_audit import HOSTS, make_inventory

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class Share:
    """Four backups a day apart for every inventory server, signed."""

    def __init__(self, root: Path, hosts: tuple[str, ...] = ("ms01", "ms02", "dw01")) -> None:
        self.root = root
        self.key = Ed25519PrivateKey.generate()
        public = self.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_key = _b64(public)
        self.inventory: Inventory = make_inventory(root, self.public_key, {h: HOSTS[h] for h in hosts})
        self.store = BackupStore(LocalShare(root / "share"), self.key)
        self.entries: dict[str, list[ManifestEntry]] = {}
        for host in hosts:
            group, role = HOSTS[host]
            self.entries[host] = [
                self.store.add(
                    host=host,
                    group=group,
                    role=role,
                    data=f"{host}-{day}".encode() * 10,
                    password_id="pw",
                    created=T0 + timedelta(days=day),
                )
                for day in range(4)
            ]

    def ids(self) -> set[str]:
        return {entry.id for entry in self.store.load_manifest(verify=False).entries}


@pytest.fixture
def share(tmp_path: Path) -> Share:
    return Share(tmp_path)


def test_keep_two(share: Share) -> None:
    plan = plan_prune(share.inventory, share.store, 2)
    assert sorted(e.id for e in plan.removals) == sorted(e.id for h in share.entries.values() for e in h[:2])
    assert share.ids() == {e.id for h in share.entries.values() for e in h}  # planning changes nothing
    removed = apply_prune(share.store, plan)
    assert sorted(e.id for e in removed) == sorted(e.id for e in plan.removals)
    assert share.ids() == {e.id for h in share.entries.values() for e in h[2:]}
    for entry in removed:
        assert not (share.root / "share" / entry.path).exists()
    for entry in share.store.load_manifest(verify=True).entries:
        assert share.store.read_key_file(entry)


def test_newest_intact_backup_is_never_removed(share: Share) -> None:
    newest, second, third, oldest = reversed(share.entries["ms01"])
    (share.root / "share" / newest.path).write_bytes(b"tampered")
    (share.root / "share" / second.path).unlink()
    plan = plan_prune(share.inventory, share.store, 1)
    actions = {d.entry.id: (d.action, d.reason) for d in plan.decisions if d.entry.host == "ms01"}
    assert actions == {
        newest.id: (Action.KEEP, "among the newest 1"),
        second.id: (Action.REMOVE, "older than the newest 1"),
        third.id: (Action.KEEP, "newest intact backup of the server"),
        oldest.id: (Action.REMOVE, "older than the newest 1"),
    }
    apply_prune(share.store, plan)
    assert {newest.id, third.id} <= share.ids()


def test_hosts_outside_the_inventory_are_left_alone(tmp_path: Path) -> None:
    share = Share(tmp_path, ("ms01", "ms02"))
    inventory = make_inventory(tmp_path, share.public_key, {"ms01": HOSTS["ms01"]})
    apply_prune(share.store, plan_prune(inventory, share.store, 1))
    assert share.ids() == {share.entries["ms01"][-1].id} | {e.id for e in share.entries["ms02"]}


def test_keep_must_be_positive(share: Share) -> None:
    with pytest.raises(ConfigError, match="--keep: must be at least 1"):
        plan_prune(share.inventory, share.store, 0)


def test_tampered_manifest_is_not_pruned(share: Share) -> None:
    share.store.compact()
    plan = plan_prune(share.inventory, BackupStore(share.store.share, share.key), 1)  # planned before...
    path = share.root / "share" / "manifest.json"
    document = json.loads(path.read_text())
    document["entries"][0]["password_id"] = "other"
    path.write_text(json.dumps(document))
    with pytest.raises(IntegrityError, match="does not verify"):
        plan_prune(share.inventory, share.store, 1)
    with pytest.raises(IntegrityError, match="refusing to change it"):
        apply_prune(share.store, plan)  # ...the tampering: still refused under the lock
    assert len(share.ids()) == 12


def test_command_line(share: Share, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    private = share.key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    key_file = tmp_path / "signing.key"
    key_file.write_text(_b64(private))
    key_file.chmod(0o600)
    inventory = tmp_path / "inv.yml"
    inventory.write_text(
        "share: {url: share}\nbackup: {password_id: pw, max_age: 30d}\n"
        f"signing: {{private_key: 'file:{key_file}', public_key: '{share.public_key}'}}\n"
        "defaults: {credential: {username: svc, password: 'env:KEYFLEET_TEST_UNUSED'}}\n"
        "management_groups:\n  PROD:\n    hosts:\n      ms01: {role: management_server}\n"
        "      ms02: {role: management_server}\n      dw01: {role: dw_management_server}\n"
    )
    assert main(["prune", "-i", str(inventory), "--keep", "3", "--check", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["applied"] is False
    assert sorted(d["id"] for d in document["decisions"] if d["action"] == "remove") == sorted(
        h[0].id for h in share.entries.values()
    )
    assert len(share.ids()) == 12
    assert main(["prune", "-i", str(inventory), "--keep", "3"]) == 0
    assert capsys.readouterr().out.endswith("removed 3 key files; 9 kept (newest 3 per server)\n")
    assert len(share.ids()) == 9
    assert share.store.load_manifest(verify=True)
