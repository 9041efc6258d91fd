"""Decode text files as Windows tools write them: UTF-8 with or without a BOM, UTF-16 with a BOM."""

from __future__ import annotations

import codecs

# Windows PowerShell 5.1's ``>`` and Out-File write UTF-16LE with a BOM; Notepad may write UTF-8 with a BOM
# (Microsoft docs: about_Character_Encoding).
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
UTF8_FIX = "save it as UTF-8 (PowerShell: Out-File -Encoding utf8, or Set-Content -Encoding UTF8)"


class NotText(ValueError):
    """Bytes that are not text in an encoding keyfleet reads; ``str()`` says which and how to fix it."""


def decode_text(data: bytes) -> str:
    """The text of ``data``; a leading BOM picks UTF-8 or UTF-16 and is dropped. Raises NotText."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom) :].decode(encoding)
            except UnicodeDecodeError as exc:
                raise NotText(f"not valid {encoding.upper()} text (byte {exc.start + len(bom)})") from None
    if _looks_like_utf16(data):  # ASCII in UTF-16 is also valid UTF-8, full of NULs
        raise NotText(f"UTF-16 text without a byte order mark; {UTF8_FIX}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotText(f"not UTF-8 text (byte {exc.start}); {UTF8_FIX}") from None


def _looks_like_utf16(data: bytes) -> bool:
    """Mostly ASCII text with a NUL in every other byte."""
    sample = data[:512]
    return len(sample) >= 4 and (sample[1::2].count(0) > len(sample) // 4 or sample[0::2].count(0) > len(sample) // 4)
