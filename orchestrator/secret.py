"""A secret value that never shows itself, and a registry of live secrets for log masking."""

from __future__ import annotations

import re
import threading
from typing import Any

_known: set[str] = set()
_known_lock = threading.Lock()


class Secret:
    """A password, credential or private key. ``repr``, ``str`` and formatting never show the value.

    ``label`` says where it came from (e.g. ``env:KEYFLEET_BACKUP_PASSWORD``), never what it is.
    Call :meth:`reveal` only at the point the value leaves the process (stdin of a helper, a KDF).
    """

    __slots__ = ("_value", "label")

    def __init__(self, value: str, label: str = "secret") -> None:
        self._value = value
        self.label = label
        if len(value) >= 4:
            with _known_lock:
                _known.add(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.label!r})"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __len__(self) -> int:
        return len(self._value)

    def __reduce__(self) -> Any:
        raise TypeError("secrets are not picklable")


def known_secret_values() -> list[str]:
    """Every secret value read so far in this process, longest first (for masking)."""
    with _known_lock:
        return sorted(_known, key=len, reverse=True)


SHORT_SECRET = 8  # below this length a value is masked only where it stands alone, not inside a word


def mask(text: str) -> str:
    """Replace every known secret value in ``text`` by ``********``. A short one (under 8 characters) is
    replaced only where it is not part of a longer word or name (``scsm`` stays in ``scsm-ms01``)."""
    for value in known_secret_values():
        if value not in text:
            continue
        if len(value) >= SHORT_SECRET:
            text = text.replace(value, "********")
        else:
            # a dot joins words only between word characters: "scsm.contoso" is a name, "scsm." ends a sentence
            text = re.sub(rf"(?<![\w-])(?<!\w\.){re.escape(value)}(?![\w-]|\.\w)", "********", text)
    return text
