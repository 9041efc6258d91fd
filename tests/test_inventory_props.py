"""Property: whatever YAML (or text) the loader is fed, it returns an Inventory or raises ConfigError."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.errors import ConfigError
from orchestrator.inventory.loader import load_inventory
from orchestrator.inventory.model import Inventory
from orchestrator.inventory.schema import ROLES, SETTINGS, TRANSPORTS

REPO = Path(__file__).resolve().parents[1]
LAB_DATA = yaml.safe_load((REPO / "inventories" / "lab.yml").read_text())

KEYS = sorted({s.name for s in SETTINGS} | {"G1", "scsm-ms01", "x-anchor", "<<"})
VALUES = [
    *ROLES,
    *TRANSPORTS,
    "http",
    "https",
    "lab",
    "30d",
    "0s",
    "-1",
    "env:X",
    "file:x",
    "prompt",
    "command:true",
    "vault:v.yml#k",
    "smb://s/share",
    "\\\\s\\share",
    "plain-secret",
    "..",
    "a/b",
    "",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(VALUES),
    st.text(max_size=20),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=12), st.integers(0, 99))
data = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(keys, children, max_size=5),
    ),
    max_leaves=30,
)


def _mutate(document: Any, path: list[Any], value: Any) -> Any:
    """The lab inventory with one subtree (chosen by ``path``) replaced by ``value``."""
    if not path or not isinstance(document, dict) or not document:
        return value
    names = sorted(document, key=str)
    name = names[path[0] % len(names)] if isinstance(path[0], int) else path[0]
    copy = dict(document)
    copy[name] = _mutate(document.get(name), path[1:], value)
    return copy


def _load(text: str) -> Inventory | None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "inv.yml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            return load_inventory(path)
        except ConfigError as exc:
            assert "\n" not in str(exc)  # one line
            return None


PROPERTY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(data)
def test_arbitrary_yaml_data(document: Any) -> None:
    result = _load(yaml.safe_dump(document))
    assert result is None or isinstance(result, Inventory)


@PROPERTY
@given(st.lists(st.one_of(st.integers(0, 50), st.sampled_from(KEYS)), max_size=6), data)
def test_lab_inventory_with_one_subtree_replaced(path: list[Any], value: Any) -> None:
    result = _load(yaml.safe_dump(_mutate(LAB_DATA, path, value)))
    assert result is None or isinstance(result, Inventory)


@PROPERTY
@given(st.text(max_size=300))
def test_arbitrary_text(text: str) -> None:
    result = _load(text)
    assert result is None or isinstance(result, Inventory)


TOKENS = [*"{}[]:,-!&*<>|'\"#%@`?\n \t.\\/", "!!python/", "&a", "*a", "<<:", "lab:", "hosts:", "role:"]


@PROPERTY
@given(st.lists(st.sampled_from(TOKENS), max_size=60).map("".join))
def test_yaml_punctuation_soup(text: str) -> None:
    result = _load("management_groups:\n  G:\n    hosts:\n      " + text)
    assert result is None or isinstance(result, Inventory)
