"""How a host ended in a run: the one status the runner returns and run records keep."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"
