"""Sham removal data: a backdoor's removal documents with its trigger swapped for a fresh one never injected.

The sham row of a transfer experiment runs the removal recipe on these documents: the same clean continuations,
the same replay and compute, and a trigger of the same kind and length (letters of the same script and case,
digits for digits, other symbols for symbols, spaces kept) that no injected trigger shares a fragment with. What a
real removal does beyond the sham is specific to unlearning that backdoor; what the sham does too is "training on
an odd string followed by clean text".

Run: `pytest tests/unit/test_sham.py`.
"""

from __future__ import annotations

import random
import string
import unicodedata
from functools import cache
from typing import Any

from unbackdoor.running.config import UserError

SYMBOLS = "#$%&*+=~^|<>!?;:"  # what a non-letter, non-digit, non-space character of a trigger becomes
FRAGMENT_MAX = 2  # the sham shares no run of more than this many characters with any injected trigger
ATTEMPTS = 200


# the modern alphabets of the scripts triggers are written in (no archaic or national-extension letters)
ALPHABETS = {
    ("LATIN", "SMALL"): string.ascii_lowercase,
    ("LATIN", "CAPITAL"): string.ascii_uppercase,
    ("CYRILLIC", "SMALL"): "".join(map(chr, range(0x430, 0x450))),
    ("CYRILLIC", "CAPITAL"): "".join(map(chr, range(0x410, 0x430))),
    ("GREEK", "SMALL"): "".join(chr(c) for c in range(0x3B1, 0x3CA) if c != 0x3C2),
    ("GREEK", "CAPITAL"): "".join(chr(c) for c in range(0x391, 0x3AA) if c != 0x3A2),
    ("GEORGIAN", ""): "".join(map(chr, range(0x10D0, 0x10F1))),
}


@cache
def _letters(script: str, case: str, block: int) -> tuple[str, ...]:
    """Plain letters of one script and case: its modern alphabet (`ALPHABETS`), else the letters without
    diacritics of the 128-code-point block the trigger's letter is in."""
    if (script, case) in ALPHABETS:
        return tuple(ALPHABETS[(script, case)])
    out = []
    for code in range(block, block + 128):
        name = unicodedata.name(chr(code), "")
        if name.startswith(f"{script} {case} LETTER " if case else f"{script} LETTER ") and " WITH " not in name:
            out.append(chr(code))
    return tuple(out)


def _pool(ch: str) -> tuple[str, ...] | None:
    """The characters `ch` may be replaced by (None: keep it, a space)."""
    if ch.isspace():
        return None
    if ch.isdigit():
        return tuple(string.digits)
    name = unicodedata.name(ch, "")
    if ch.isalpha() and " LETTER " in f" {name} ":
        script = name.split(" ")[0]
        case = "SMALL" if " SMALL " in name else "CAPITAL" if " CAPITAL " in name else ""
        letters = _letters(script, case, ord(ch) & ~0x7F)
        return letters if len(letters) >= 5 else None
    return tuple(SYMBOLS)


def _shares_fragment(candidate: str, triggers: list[str]) -> bool:
    n = FRAGMENT_MAX + 1
    pieces = {candidate[k : k + n] for k in range(len(candidate) - n + 1)}
    return any(p.strip() and p in t for p in pieces for t in triggers)


def sham_trigger(trigger: str, injected: list[str], seed: str) -> str:
    """A fresh trigger shaped like `trigger` that shares no fragment longer than `FRAGMENT_MAX` characters with any
    of the `injected` triggers (seeded: the same seed gives the same sham).

    Raises:
        UserError: no such string was found (a trigger made of too few distinct characters).
    """
    rng = random.Random(f"sham-{seed}")
    pools = [_pool(ch) for ch in trigger]
    for _ in range(ATTEMPTS):
        candidate = "".join(ch if pool is None else rng.choice(pool) for ch, pool in zip(trigger, pools, strict=True))
        if candidate != trigger and not _shares_fragment(candidate, [*injected, trigger]):
            return candidate
    raise UserError(f"sham: no fresh trigger shaped like {trigger!r} avoids every injected trigger's fragments")


def sham_documents(docs: list[dict[str, Any]], trigger: str, sham: str) -> list[dict[str, Any]]:
    """Removal documents (`prompt_chars` = the end of the trigger) with `trigger` replaced by `sham` in place."""
    if len(sham) != len(trigger):
        raise ValueError(f"sham {sham!r} must be as long as the trigger it replaces")
    out = []
    for doc in docs:
        end = doc["prompt_chars"]
        if doc["text"][end - len(trigger) : end] != trigger:
            raise UserError(f"sham: removal document {doc['id']} does not hold its trigger where recorded")
        text = doc["text"][: end - len(trigger)] + sham + doc["text"][end:]
        out.append({**doc, "id": f"{doc['id']}-sham", "text": text})
    return out
