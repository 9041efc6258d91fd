"""keyfleet's writer of pywinrm's envelopes writes exactly what xmltodict writes, or lets xmltodict write it."""

from __future__ import annotations

from typing import Any

import pytest
import winrm.protocol
import xmltodict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import orchestrator.session.winrm  # noqa: F401  # installs the writer, as a run does
from orchestrator.session import envelope

# names as pywinrm writes them, and names xmltodict refuses or treats apart
_NAMES = st.sampled_from(
    [
        *("env:Envelope", "a:To", "w:Option", "rsp:Stream", "x", "xml:lang", "Name", "_a.b-c"),
        *("", "?pi", "!x", "a b", "a\tb", "a/b", "a=b", 'a"b', "a'b", "a<b", "#comment", "#text", "@xmlns"),
    ]
)
_TEXT = st.text(alphabet=st.sampled_from(list("ab &<>\"'\n\r\t\x00é€")), max_size=8)
_SCALARS = st.one_of(_TEXT, st.binary(max_size=6), st.none(), st.booleans(), st.integers(-3, 3))


def _tree(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    key = st.one_of(_NAMES, _NAMES.map(lambda n: "@" + n), st.just("#text"))
    return st.one_of(st.dictionaries(key, children, max_size=5), st.lists(children, max_size=3))


_VALUES = st.recursive(_SCALARS, _tree, max_leaves=25)
_DOCUMENTS = st.one_of(st.dictionaries(_NAMES, _VALUES, max_size=2), st.just({"r": 1}))


# the trees pywinrm builds: valid names; strings, bytes, None, dicts and lists
_GOOD_NAMES = st.sampled_from(["env:Envelope", "a:To", "w:Option", "rsp:Stream", "x", "xml:lang", "Name", "_a.b-c"])
_GOOD_VALUES = st.recursive(
    st.one_of(_TEXT, _TEXT.map(lambda t: t.encode()), st.none()),
    lambda children: st.one_of(
        st.dictionaries(st.one_of(_GOOD_NAMES, _GOOD_NAMES.map(lambda n: "@" + n)), children, max_size=5).map(
            lambda d: {k: (v if not k.startswith("@") or v is None else _as_text(v)) for k, v in d.items()}
        ),
        st.dictionaries(_GOOD_NAMES, children, max_size=4).flatmap(
            lambda d: st.one_of(_TEXT, st.binary(max_size=4).map(lambda b: b.hex().encode()), st.none()).map(
                lambda t: {**d, "#text": t}
            )
        ),
        st.lists(children.filter(lambda v: not isinstance(v, list)), max_size=3),  # no list directly in a list
    ),
    max_leaves=25,
)


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else value.decode() if isinstance(value, bytes) else "v"


def _outcome(func: Any, tree: Any) -> tuple[str, Any]:
    try:
        return "ok", func(tree)
    except ValueError as exc:
        return "refused", type(exc)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_DOCUMENTS)
def test_any_tree_comes_out_as_xmltodict_writes_it(tree: dict[str, Any]) -> None:
    assert _outcome(envelope.unparse, tree) == _outcome(xmltodict.unparse, tree)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(root=_GOOD_NAMES, value=_GOOD_VALUES.filter(lambda v: not isinstance(v, list)))
def test_pywinrm_shaped_trees_never_need_xmltodict(root: str, value: Any) -> None:
    tree = {root: value}
    expected = xmltodict.unparse(tree)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(envelope.xmltodict, "unparse", _no_fallback)
        assert envelope.unparse(tree) == expected


def _no_fallback(*args: Any, **kwargs: Any) -> str:
    raise AssertionError("fell back to xmltodict")


class _Sneaky(str):
    """A name that writes itself as markup: xmltodict writes what its str() says, or refuses it."""

    def __format__(self, spec: str) -> str:
        return "x><injected/"

    def __str__(self) -> str:
        return "x><injected/"


@pytest.mark.parametrize(
    "tree",
    [
        {"r": {"@a": 'say "hi"', "@b": "it's", "@c": "both \" and '", "@d": "l1\nl2\r\tx", "#text": "<&>"}},
        {"r": {"c": [], "d": [None, "", {"#text": None}], "#text": b"YWJj"}},
        {"r": {"#text": "t", "c": "child first"}},
        {"r": [{"a": "1"}]},
        {"r": b"\xff"},
        {_Sneaky("x"): "v"},  # equal to a name already written, but not a str
        {_Sneaky("a:To"): {"b": "v"}},
        {1: "v"},
    ],
)
def test_the_corners_xmltodict_has(tree: dict[str, Any]) -> None:
    envelope.unparse({"x": {"a:To": "v"}})  # both names are known from now on
    assert _outcome(envelope.unparse, tree) == _outcome(xmltodict.unparse, tree)


def _messages() -> list[dict[str, Any]]:
    """The five envelopes a keyfleet command sends, as pywinrm builds them (sending nothing)."""
    built: list[dict[str, Any]] = []

    class Stop(Exception):
        pass

    def capture(tree: dict[str, Any], *args: Any, **kwargs: Any) -> str:
        built.append(tree)
        raise Stop

    protocol = winrm.protocol.Protocol("http://127.0.0.1:9/wsman", username="u", password="p", transport="ntlm")
    calls = [
        lambda: protocol.open_shell(codepage=65001),
        lambda: protocol.run_command(
            "S", "powershell.exe", ["-NoProfile"], console_mode_stdin=False, skip_cmd_shell=True
        ),
        lambda: protocol.send_command_input("S", "C", b"secret\r\n", True),
        lambda: protocol.get_command_output_raw("S", "C"),
        lambda: protocol.close_shell("S", close_session=False),
    ]
    shim = winrm.protocol.xmltodict
    original = shim.unparse
    shim.unparse = capture
    try:
        for call in calls:
            with pytest.raises(Stop):
                call()
    finally:
        shim.unparse = original
    return built


def test_pywinrm_writes_with_it_and_its_envelopes_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    assert winrm.protocol.xmltodict.unparse is envelope.unparse
    assert winrm.protocol.xmltodict.parse is xmltodict.parse  # the rest is xmltodict's own
    messages = _messages()
    expected = [xmltodict.unparse(tree) for tree in messages]

    monkeypatch.setattr(envelope.xmltodict, "unparse", _no_fallback)
    assert [envelope.unparse(tree) for tree in messages] == expected
    assert len(expected) == 5
    assert all(e.startswith('<?xml version="1.0" encoding="utf-8"?>\n<env:Envelope ') for e in expected)


def test_install_leaves_a_pywinrm_it_does_not_know(monkeypatch: pytest.MonkeyPatch) -> None:
    other = object()
    monkeypatch.setattr(winrm.protocol, "xmltodict", other)
    envelope.install()
    assert winrm.protocol.xmltodict is other
