"""The one duration parser of the command line and the one formatter every report uses."""

from __future__ import annotations

from datetime import timedelta

import pytest

from orchestrator.durations import duration_option, format_duration
from orchestrator.errors import ConfigError


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0, "0s"),
        (42.9, "42s"),
        (90, "1m 30s"),
        (3600 * 2 + 5, "2h"),
        (5400, "1h 30m"),
        (timedelta(days=3, hours=4, minutes=5), "3d 4h"),
        (timedelta(days=30), "30d"),
        (timedelta(seconds=-5), "0s"),
    ],
)
def test_format_duration_shows_the_two_largest_units(value: float | timedelta, shown: str) -> None:
    assert format_duration(value) == shown


@pytest.mark.parametrize("text", ["30d", "12h", "90m", "45s", "0s", "3600"])
def test_duration_option_reads_what_the_inventory_reads(text: str) -> None:
    seconds = {"30d": 30 * 86400, "12h": 12 * 3600, "90m": 5400, "45s": 45, "0s": 0, "3600": 3600}[text]
    assert duration_option(text, "--max-age") == timedelta(seconds=seconds)


def test_a_bad_duration_option_names_the_option_and_the_value() -> None:
    with pytest.raises(ConfigError) as error:
        duration_option("soon", "--only-stale")
    assert error.value.key == "--only-stale" and "'soon'" in error.value.message and "30d" in error.value.message
