"""Properties of the inventory loader: whatever YAML (or text) it is fed, it returns an Inventory or raises
ConfigError; a valid inventory means what the format says (inheritance, key order, --limit set algebra)."""

from __future__ import annotations

import dataclasses
import random
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.errors import ConfigError
from orchestrator.inventory.limit import select_hosts
from orchestrator.inventory.loader import load_inventory
from orchestrator.inventory.model import Inventory
from orchestrator.inventory.schema import ROLES, SETTINGS, TRANSPORTS, Scope
from tests.inventory_strategies import CHOICES, FILES, PATHS, Drawn, inventories, reorder

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


# -- valid inventories: what they mean, not only that they load -----------------------------------------------

SEMANTIC = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _load_valid(document: dict[str, Any], folder: Path, name: str = "inv.yml") -> Inventory:
    """Load ``document`` from ``folder``, where the files its settings name exist."""
    for file in FILES:
        (folder / file).parent.mkdir(exist_ok=True)
        (folder / file).write_text("-----BEGIN CERTIFICATE-----\n")
    path = folder / name
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return load_inventory(path)


def _meaning(inventory: Inventory) -> Any:
    """The inventory as plain data without where each value was written (file, line)."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("location", "raw", "path")}
        if isinstance(value, list | tuple):
            return [strip(v) for v in value]
        return value

    return strip(dataclasses.asdict(inventory))


@SEMANTIC
@given(inventories())
def test_every_setting_resolves_host_over_group_over_defaults(drawn: Drawn) -> None:
    with tempfile.TemporaryDirectory() as folder:
        inventory = _load_valid(drawn.document, Path(folder))
        where = Path(folder).absolute()
    assert list(inventory.hosts) == [name for names in drawn.groups.values() for name in names]  # file order
    assert {name: list(group.hosts) for name, group in inventory.groups.items()} == drawn.groups
    for name, expected in drawn.expected.items():
        host = inventory.hosts[name]
        credential = expected["credential"]
        assert host.credential is not None and host.credential.username == credential["username"]
        password = host.credential.password
        assert password is not None and f"{password.scheme}:{password.target}" == credential["password"]
        resolved = {key: str(where / value) if key in PATHS and value else value for key, value in expected.items()}
        got = {setting: getattr(host, setting) for setting in expected if setting != "credential"}
        assert got == {setting: value for setting, value in resolved.items() if setting != "credential"}, name


def test_the_generator_sets_every_host_setting_at_every_level() -> None:
    """So "every setting" above means every one the schema lets a host inherit (lab: the lab's own section)."""
    inherited = {s.name for s in SETTINGS if set(s.scopes) == {Scope.DEFAULTS, Scope.GROUP, Scope.HOST}}
    assert inherited - {"credential", "lab"} == set(CHOICES)


@SEMANTIC
@given(inventories(), st.randoms(use_true_random=False))
def test_loading_is_deterministic_and_blind_to_key_order(drawn: Drawn, rng: random.Random) -> None:
    with tempfile.TemporaryDirectory() as folder:
        first = _load_valid(drawn.document, Path(folder))
        again = _load_valid(drawn.document, Path(folder))
        shuffled = _load_valid(reorder(drawn.document, rng), Path(folder), "shuffled.yml")
        flow = Path(folder) / "flow.yml"  # the same document in YAML's flow style
        flow.write_text(yaml.safe_dump(drawn.document, sort_keys=False, default_flow_style=True, width=80))
        flowed = load_inventory(flow)
    assert again == first
    assert _meaning(shuffled) == _meaning(first) == _meaning(flowed)
    assert list(shuffled.hosts) == list(first.hosts) and list(shuffled.groups) == list(first.groups)


# -- --limit: every pattern is set algebra over the hosts -----------------------------------------------------


@st.composite
def limit_cases(draw: st.DrawFn) -> tuple[Drawn, dict[str, frozenset[str]]]:
    """An inventory and the plain terms a --limit may use on it, each with the hosts it must select."""
    drawn = draw(inventories())
    hosts = [name for names in drawn.groups.values() for name in names]
    atoms: dict[str, frozenset[str]] = {}
    for name in hosts:
        atoms[draw(st.sampled_from([name, name.upper(), name.capitalize()]))] = frozenset({name})
    for prefix in {name.rstrip("0123456789") for name in hosts}:
        atoms[f"{prefix}*"] = frozenset(h for h in hosts if h.startswith(prefix))
    for group, names in drawn.groups.items():
        atoms[group] = atoms[f"group:{group}"] = frozenset(names)
    atoms["group:*"] = frozenset(hosts)
    for role in {drawn.expected[h]["role"] for h in hosts}:
        atoms[f"role:{role}"] = frozenset(h for h in hosts if drawn.expected[h]["role"] == role)
    return drawn, atoms


def _selected(inventory: Inventory, limit: str) -> frozenset[str]:
    """The hosts ``limit`` selects; none when the pattern selects nothing (an error)."""
    try:
        chosen = select_hosts(inventory, limit)
    except ConfigError as exc:
        assert "selects no hosts" in str(exc), str(exc)
        return frozenset()
    names = [host.name for host in chosen]
    assert names == [name for name in inventory.hosts if name in names]  # inventory order, no duplicates
    return frozenset(names)


def _algebra(terms: list[tuple[str, str]], atoms: dict[str, frozenset[str]], every: frozenset[str]) -> frozenset[str]:
    """The grammar as sets: plain terms are united (all hosts if none), then each & intersects, each ! removes."""
    plain = [atoms[term] for op, term in terms if op == ""]
    selected = frozenset().union(*plain) if plain else every
    for op, term in terms:
        if op == "&":
            selected &= atoms[term]
        elif op == "!":
            selected -= atoms[term]
    return selected


@SEMANTIC
@given(limit_cases(), st.data())
def test_every_limit_pattern_is_set_algebra(case: tuple[Drawn, dict[str, frozenset[str]]], data: st.DataObject) -> None:
    drawn, atoms = case
    term = st.tuples(st.sampled_from(["", "", "&", "!"]), st.sampled_from(sorted(atoms)))
    terms = data.draw(st.lists(term, min_size=1, max_size=5), label="terms")
    with tempfile.TemporaryDirectory() as folder:
        inventory = _load_valid(drawn.document, Path(folder))
    every = frozenset(inventory.hosts)
    expected = _algebra(terms, atoms, every)
    pattern = [f"{op}{name}" for op, name in terms]
    assert _selected(inventory, ",".join(pattern)) == expected <= every
    assert _selected(inventory, ",".join(data.draw(st.permutations(pattern), label="reordered"))) == expected
    assert _selected(inventory, ":".join(pattern)) == expected  # the colon form reads the same


@SEMANTIC
@given(limit_cases(), st.data())
def test_limit_identities(case: tuple[Drawn, dict[str, frozenset[str]]], data: st.DataObject) -> None:
    drawn, atoms = case
    a, b, c = (data.draw(st.sampled_from(sorted(atoms)), label=label) for label in "abc")
    with tempfile.TemporaryDirectory() as folder:
        inventory = _load_valid(drawn.document, Path(folder))
    every = frozenset(inventory.hosts)

    def s(limit: str) -> frozenset[str]:
        return _selected(inventory, limit)

    assert s(a) == atoms[a] and s(f"{a},{a}") == s(f"{a},&{a}") == s(a)  # a term selects its hosts; idempotent
    assert s(f"{a},{b}") == s(f"{b},{a}") == s(a) | s(b)  # union: commutative
    assert s(f"{a},{b},{c}") == s(f"{a},{b}") | s(c) == s(a) | s(f"{b},{c}")  # associative
    assert s(f"{a},&{b}") == s(f"{b},&{a}") == s(a) & s(b)  # intersection: commutative
    assert s(f"{a},&{b},&{c}") == s(a) & s(b) & s(c)
    assert s(f"{a},!{b}") == s(a) - s(b) and s(f"!{a}") == every - s(a)  # exclusion: set difference
    assert s(f"!{a},!{b}") == s(f"!{a}") & s(f"!{b}") == every - (s(a) | s(b))  # De Morgan
    assert s(f"{a},{b},!{c}") == s(f"{a},!{c}") | s(f"{b},!{c}")  # difference distributes over union
    assert s(f"{a},&{b},!{c}") == s(f"{a},!{c}") & s(f"{b},!{c}")
    assert s(f"{a},!{a}") == frozenset()  # nothing left is an error, never an empty run
