"""Repair of cp1252 text that was decoded as Latin-1 (the MELD CSV "mojibake").

The pre-2020 MELD CSVs, and every legacy pickle built from them, hold C1 control characters such as
U+0092 where the author meant ``’``: the cp1252 byte 0x92 was read as Latin-1. A text encoder sees
those as unknown control tokens, so features change depending on which copy of MELD a user has.
Repairing here, once, makes both copies give the same text (and the same manifest digest).

Only U+0080..U+009F are touched (plus U+00A0, a no-break space, which becomes a plain space): those
code points never occur in real English dialogue text, so the repair cannot damage a correct file.
The five bytes cp1252 leaves undefined (0x81, 0x8D, 0x8F, 0x90, 0x9D) are kept as they are.
"""

from __future__ import annotations

RULE = "chars U+0080..U+009F mapped back to their byte and decoded as cp1252; U+00A0 -> space"


def _build_table(nbsp_to_space: bool) -> dict[int, str]:
    table: dict[int, str] = {}
    for code in range(0x80, 0xA0):
        try:
            table[code] = bytes([code]).decode("cp1252")
        except UnicodeDecodeError:
            continue  # undefined in cp1252: leave the character alone
    if nbsp_to_space:
        table[0xA0] = " "
    return table


_TABLE = _build_table(nbsp_to_space=True)
_TABLE_KEEP_NBSP = _build_table(nbsp_to_space=False)


def needs_cp1252_repair(text: str, *, nbsp_to_space: bool = True) -> bool:
    """True if `text` holds a character the repair would change."""
    table = _TABLE if nbsp_to_space else _TABLE_KEEP_NBSP
    return any(ord(ch) in table for ch in text)


def repair_cp1252(text: str, *, nbsp_to_space: bool = True) -> str:
    """Return `text` with cp1252-as-Latin-1 characters repaired: ``'company\\x92s'`` -> ``'company’s'``."""
    return text.translate(_TABLE if nbsp_to_space else _TABLE_KEEP_NBSP)
