"""Ansible-like --limit patterns over the lab inventory."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.inventory.limit import select_hosts, split_terms
from orchestrator.inventory.loader import load_inventory
from orchestrator.inventory.model import Inventory

LAB = Path(__file__).resolve().parents[1] / "inventories" / "lab.yml"


@pytest.fixture(scope="module")
def inv() -> Inventory:
    return load_inventory(LAB)


def names(inv: Inventory, limit: str | None, **kwargs: object) -> list[str]:
    return [h.name for h in select_hosts(inv, limit, **kwargs)]  # type: ignore[arg-type]


def test_none_selects_all_in_file_order(inv: Inventory) -> None:
    assert names(inv, None) == list(inv.hosts)
    assert [h.name for h in select_hosts(inv, None)] == list(inv.hosts)


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        ("scsm-ms01", ["scsm-ms01"]),
        ("SCSM-MS01", ["scsm-ms01"]),
        ("scsm-ms0[12]", ["scsm-ms01", "scsm-ms02"]),
        ("dr-*", ["dr-ms01", "dr-dw01", "dr-portal01"]),
        ("dr-ms01,scsm-ms01", ["scsm-ms01", "dr-ms01"]),  # file order, not pattern order
        ("dr-ms01:scsm-ms01", ["scsm-ms01", "dr-ms01"]),
        ("role:dw_management_server", ["scsm-dw01", "dev-dw01", "dr-dw01"]),
        ("group:LAB-DEV", ["dev-ms01", "dev-ms02", "dev-dw01", "dev-portal01"]),
        ("group:lab-d*", ["dev-ms01", "dev-ms02", "dev-dw01", "dev-portal01", "dr-ms01", "dr-dw01", "dr-portal01"]),
        ("LAB-DR", ["dr-ms01", "dr-dw01", "dr-portal01"]),  # a bare term may name a group
        ("group:LAB-DEV,!dev-ms0*", ["dev-dw01", "dev-portal01"]),
        ("!group:LAB-PROD,!group:LAB-DEV", ["dr-ms01", "dr-dw01", "dr-portal01"]),
        ("role:management_server:&group:LAB-PROD", ["scsm-ms01", "scsm-ms02", "scsm-ms03"]),
        ("role:management_server:!group:LAB-PROD:!dr-*", ["dev-ms01", "dev-ms02"]),
        ("*-dw01,&dev-*", ["dev-dw01"]),
        (" scsm-dw01 , ", ["scsm-dw01"]),
    ],
)
def test_patterns(inv: Inventory, limit: str, expected: list[str]) -> None:
    assert names(inv, limit) == expected


@pytest.mark.parametrize(
    ("limit", "fragment"),
    [
        ("nosuch*", "matches no host"),
        ("scsm-ms1", "did you mean 'scsm-ms01'"),
        ("role:web_server", "management_server, dw_management_server, self_service_portal"),
        ("role:management", "did you mean role:management_server"),
        ("group:NOPE", "LAB-PROD, LAB-DEV, LAB-DR"),
        ("scsm-*,!nosuch", "'nosuch' matches no host"),
        ("scsm-ms01,!scsm-ms01", "selects no hosts"),
        ("dev-ms01,&dr-*", "selects no hosts"),
        ("", "empty pattern"),
        (",,", "empty pattern"),
        ("scsm-ms01,tag:x", "unknown selector 'tag'"),
        ("@last-failed", "@ selections are not available"),
    ],
)
def test_bad_patterns_name_limit(inv: Inventory, limit: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        select_hosts(inv, limit)
    assert info.value.key == "--limit" and info.value.exit_code == 2
    assert str(info.value).startswith("--limit: ") and fragment in str(info.value)


def test_at_resolver(inv: Inventory) -> None:
    def last_failed(token: str) -> set[str]:
        assert token == "@last-failed"
        return {"DEV-MS02", "dr-dw01", "gone-host"}

    assert names(inv, "@last-failed", at_resolver=last_failed) == ["dev-ms02", "dr-dw01"]
    assert names(inv, "@last-failed,&group:LAB-DR", at_resolver=last_failed) == ["dr-dw01"]
    assert "dr-dw01" not in names(inv, "!@last-failed", at_resolver=last_failed)
    with pytest.raises(ConfigError, match="selects no host of this inventory"):
        select_hosts(inv, "@last-failed", at_resolver=lambda token: set())


def test_split_terms_keeps_prefixed_selectors() -> None:
    assert split_terms("role:management_server:!group:G:h*") == ["role:management_server", "!group:G", "h*"]
    assert split_terms("a,role:x,b") == ["a", "role:x", "b"]
