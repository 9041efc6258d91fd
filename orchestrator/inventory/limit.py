"""Host selection with Ansible-like ``--limit`` patterns.

A pattern is a comma (or colon) separated list of terms. A term is a host or group name glob
(case-insensitive), ``role:NAME``, ``group:GLOB`` or ``@NAME`` (resolved by the caller, e.g.
``@last-failed``). ``!term`` excludes, ``&term`` intersects; the plain terms are united first (all
hosts when there are none). The result keeps the inventory's order. A term that matches nothing
is an error, so a typo never silently shrinks a run.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from fnmatch import fnmatchcase

from orchestrator.errors import ConfigError
from orchestrator.inventory.model import HostConfig, Inventory, Role

AtResolver = Callable[[str], set[str]]
_PREFIXES = ("role", "group")


def split_terms(limit: str) -> list[str]:
    """Split on commas, or on colons when there is no comma (keeping ``role:``/``group:`` whole)."""
    if "," in limit:
        return [t.strip() for t in limit.split(",") if t.strip()]
    parts = [p.strip() for p in limit.split(":")]
    terms: list[str] = []
    index = 0
    while index < len(parts):
        part = parts[index]
        if part.lstrip("!&") in _PREFIXES and index + 1 < len(parts):
            part = f"{part}:{parts[index + 1]}"
            index += 1
        if part:
            terms.append(part)
        index += 1
    return terms


def _error(message: str) -> ConfigError:
    return ConfigError(message, key="--limit")


def _match(inv: Inventory, term: str, at_resolver: AtResolver | None) -> set[str]:
    """Names of the hosts one term (without its ! or & prefix) selects; error when none."""
    hosts = inv.hosts.values()
    if term.startswith("@"):
        if at_resolver is None:
            raise _error(f"{term!r}: @ selections are not available for this command")
        wanted = {name.lower() for name in at_resolver(term)}
        selected = {h.name for h in hosts if h.name.lower() in wanted}
        if not selected:
            raise _error(f"{term!r} selects no host of this inventory")
        return selected
    prefix, sep, value = term.partition(":")
    if sep and prefix == "role":
        roles = [r.value for r in Role]
        if value not in roles:
            close = difflib.get_close_matches(value, roles, n=1)
            hint = f"; did you mean role:{close[0]}?" if close else ""
            raise _error(f"unknown role {value!r}{hint} (choose from {', '.join(roles)})")
        selected = {h.name for h in hosts if h.role.value == value}
        if not selected:
            raise _error(f"{term!r} matches no host")
        return selected
    if sep and prefix == "group":
        groups = [g for g in inv.groups if fnmatchcase(g.lower(), value.lower())]
        if not groups:
            raise _error(f"{term!r} matches no management group (groups: {', '.join(inv.groups)})")
        selected = {name for g in groups for name in inv.groups[g].hosts}
        if not selected:
            raise _error(f"{term!r} matches only groups without hosts")
        return selected
    if sep:
        raise _error(f"unknown selector {prefix!r}: use a host glob, role:NAME, group:NAME or @NAME")
    pattern = term.lower()
    selected = {h.name for h in hosts if fnmatchcase(h.name.lower(), pattern)}
    for group in inv.groups.values():  # like Ansible, a bare term may also name a group
        if fnmatchcase(group.name.lower(), pattern):
            selected.update(group.hosts)
    if not selected:
        close = difflib.get_close_matches(term, list(inv.hosts), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise _error(f"{term!r} matches no host or management group{hint}")
    return selected


def select_hosts(inv: Inventory, limit: str | None, at_resolver: AtResolver | None = None) -> list[HostConfig]:
    """The hosts ``limit`` selects, in inventory order (all when ``limit`` is None)."""
    if limit is None:
        return list(inv.hosts.values())
    terms = split_terms(limit)
    if not terms:
        raise _error("empty pattern: give host globs, role:NAME, group:NAME or !exclusions")
    union: set[str] | None = None
    intersections: list[set[str]] = []
    exclusions: set[str] = set()
    for term in terms:
        if term.startswith("!"):
            exclusions |= _match(inv, term[1:].strip(), at_resolver)
        elif term.startswith("&"):
            intersections.append(_match(inv, term[1:].strip(), at_resolver))
        else:
            union = (union or set()) | _match(inv, term, at_resolver)
    selected = set(inv.hosts) if union is None else union
    for other in intersections:
        selected &= other
    selected -= exclusions
    if not selected:
        raise _error(f"{limit!r} selects no hosts")
    return [h for h in inv.hosts.values() if h.name in selected]
