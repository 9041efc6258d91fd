"""Durations as keyfleet reads them (30d, 12h, 90m, 45s or seconds) and shows them (3d 4h)."""

from __future__ import annotations

from datetime import timedelta
from itertools import pairwise

from orchestrator.errors import ConfigError
from orchestrator.inventory.values import Invalid, parse_duration


def duration_option(text: str, option: str) -> timedelta:
    """A command-line duration (``--max-age``, ``--only-stale``), parsed as the inventory's; ConfigError
    naming ``option`` otherwise."""
    try:
        return timedelta(seconds=parse_duration(text))
    except Invalid as exc:
        raise ConfigError(f"{text!r} {exc}", key=option) from None


def format_duration(value: timedelta | float) -> str:
    """``3d 4h``, ``30d``, ``5h 2m``, ``42s``: the two largest units of whole seconds, zeros left out."""
    seconds = max(0, int(value.total_seconds() if isinstance(value, timedelta) else value))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    units = ((days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s"))
    for (amount, unit), (smaller, smaller_unit) in pairwise(units):
        if amount:
            return f"{amount}{unit}" + (f" {smaller}{smaller_unit}" if smaller else "")
    return f"{seconds}s"
