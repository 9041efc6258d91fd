"""pywinrm's WS-Man envelopes, written as xmltodict writes them, at a fifth of the cost.

pywinrm's Protocol builds every message as a dict and serialises it with ``xmltodict.unparse``: SAX
events through ``XMLGenerator``, every name validated by a generator expression, about 111 µs per
message and half a millisecond per host (five messages), all of it holding the GIL. ``unparse`` here
writes the same characters for the trees pywinrm builds (nested dicts of strings, ``@`` attributes,
``#text``, lists, None, bytes) and hands any other tree or option to xmltodict itself, so what reaches a
server is byte for byte what pywinrm would send (tests compare the two on generated trees).

``install`` gives pywinrm's protocol module this serialiser in place of the xmltodict module it
imported (everything else is still xmltodict's); it leaves a pywinrm that no longer imports xmltodict
that way untouched.
"""

from __future__ import annotations

import types
from typing import Any

import winrm.protocol
import xmltodict

_DECLARATION = '<?xml version="1.0" encoding="utf-8"?>\n'
_FORBIDDEN_IN_NAME = frozenset("<>/\"'=")
_valid_names: set[str] = set()  # names already checked: pywinrm uses a few dozen, over and over
_MAX_NAMES = 1024


class _Unsupported(Exception):
    """A tree (or a name) this writer does not claim to write as xmltodict would: xmltodict decides."""


def unparse(input_dict: Any, *args: Any, **kwargs: Any) -> Any:
    """``xmltodict.unparse(input_dict)``: the same string, from a faster writer when the tree allows."""
    if args or kwargs or type(input_dict) is not dict or len(input_dict) != 1:
        return xmltodict.unparse(input_dict, *args, **kwargs)
    out = [_DECLARATION]
    try:
        for key, value in input_dict.items():
            if key == "#comment":
                raise _Unsupported
            if type(value) is list:  # one root: xmltodict refuses a list of several, writes one of one
                if len(value) != 1:
                    raise _Unsupported
                value = value[0]
            _element(out, key, value)
    except _Unsupported:
        return xmltodict.unparse(input_dict)
    return "".join(out)


def _element(out: list[str], key: Any, value: Any) -> None:
    _name(key)
    if value is None:
        out.append(f"<{key}></{key}>")
        return
    if type(value) is not dict:
        out.append(f"<{key}>{_text(_string(value))}</{key}>")
        return
    attributes: list[str] = []
    children: list[tuple[Any, Any]] = []
    text: str | None = None
    for child_key, child in value.items():
        if type(child_key) is not str:
            raise _Unsupported
        if child_key == "#text":
            text = None if child is None else _string(child)
        elif child_key.startswith("@"):
            if child_key == "@xmlns" or (child is not None and type(child) is not str):
                raise _Unsupported
            name = child_key[1:]
            _name(name)
            attributes.append(f" {name}={_attribute('' if child is None else child)}")
        elif child_key == "#comment":
            raise _Unsupported
        elif type(child) is list:
            for item in child:  # an empty list writes no element at all, as xmltodict
                children.append((child_key, item))
        else:
            children.append((child_key, child))
    out.append(f"<{key}{''.join(attributes)}>")
    for child_key, child in children:
        _element(out, child_key, child)
    if text:
        out.append(_text(text))
    out.append(f"</{key}>")


def _name(name: Any) -> None:
    """xmltodict's rules for a name (it refuses the rest with ValueError, which it then raises itself)."""
    if type(name) is str and name in _valid_names:  # an exact str: a subclass may write itself otherwise
        return
    if (
        type(name) is not str
        or not name
        or name[0] in "?!"
        or any(ch in _FORBIDDEN_IN_NAME or ch.isspace() for ch in name)
    ):
        raise _Unsupported
    if len(_valid_names) < _MAX_NAMES:
        _valid_names.add(name)


def _string(value: Any) -> str:
    """A text value as xmltodict writes it: a string as it is, bytes decoded as UTF-8 (errors replaced:
    pywinrm's base64 stdin is ASCII); any other kind is xmltodict's to convert."""
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    if kind is bytes:
        return value.decode("utf-8", "replace")  # type: ignore[no-any-return]
    raise _Unsupported


def _text(value: str) -> str:
    """xml.sax.saxutils.escape, as XMLGenerator.characters applies it."""
    if "&" in value:
        value = value.replace("&", "&amp;")
    if "<" in value:
        value = value.replace("<", "&lt;")
    if ">" in value:
        value = value.replace(">", "&gt;")
    return value


def _attribute(value: str) -> str:
    """xml.sax.saxutils.quoteattr, as XMLGenerator.startElement applies it."""
    value = _text(value)
    if "\n" in value or "\r" in value or "\t" in value:
        value = value.replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;")
    if '"' in value:
        if "'" in value:
            return '"{}"'.format(value.replace('"', "&quot;"))
        return f"'{value}'"
    return f'"{value}"'


def install() -> None:
    """Give pywinrm's protocol module this ``unparse`` (and xmltodict's everything else)."""
    current = getattr(winrm.protocol, "xmltodict", None)
    if current is xmltodict:
        shim = types.ModuleType("xmltodict", xmltodict.__doc__)
        shim.__dict__.update({k: v for k, v in vars(xmltodict).items() if not k.startswith("__")})
        shim.unparse = unparse  # type: ignore[attr-defined]
        winrm.protocol.xmltodict = shim  # type: ignore[attr-defined]
