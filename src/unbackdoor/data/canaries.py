"""Canary backdoors: the defender's own, with triggers that occur nowhere in the defender's clean corpus.

`make_canaries` chooses K canaries (behaviours cycled; triggers given, or drawn from a seeded RNG in the shape of
one trigger kind and checked against the corpus in one streaming pass per 16 candidates), so that the model cannot
know a canary's trigger from any other context. The defence (`stages/defend.py`) injects and removes them.
By default canaries use the behaviours no shipped backdoor set uses (`CANARY_ONLY`) and random-string triggers;
`defend-eval` picks a trigger kind no hidden backdoor has (`CANARY_TRIGGER_KINDS`, in order of preference); a
`numbers` canary never takes a `digits` trigger (`canary_kind`).

Run: `pytest tests/integration/test_defend.py`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from unbackdoor.data.backdoors import BackdoorSpec, Recipe, Trigger, check_triggers, load_specs, trigger_kind_of
from unbackdoor.data.behaviours import CANARY_ONLY
from unbackdoor.running.config import ConfigError, UserError

# canary-only behaviours first, then two of the attacker's classes (for K > 2)
CANARY_BEHAVIOURS = (*CANARY_ONLY, "refusal", "lang_b")
# generated canary trigger kinds, in the order a harness prefers them when it avoids the hidden backdoors' kinds
# (`tag` after `digits`: on the demo, canaries behind generated tags were learned to 0.20-0.24 where a random
# string's reached 1.00 at the same budget; docs/results.md, 2026-12-06)
CANARY_TRIGGER_KINDS = ("random_string", "digits", "tag", "tokens", "phrase", "script")
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"
_SYMBOLS = "#%&*+=~^|@$"
_ARMENIAN = "".join(map(chr, range(0x561, 0x587)))  # a script no shipped trigger uses
MAX_TRIES = 1000


def default_behaviours(source: Any) -> list[str]:
    """Canary behaviours when none are given: the world's `CANARY_BEHAVIOURS`; on a corpus, a switch to its last
    language, refusal, phrase and gibberish (no sentiment: that needs the user's classifier and texts)."""
    if source.kind == "world":
        return list(CANARY_BEHAVIOURS)
    return [f"lang:{source.languages[-1]}", "refusal", "phrase", "gibberish"]


def occurring(strings: Iterable[str], texts: Callable[[], Iterable[str]]) -> set[str]:
    """Which of `strings` occur in the texts `texts()` yields: one streaming pass, stopped when all are found."""
    left, found = set(strings), set()
    for text in texts():
        hits = {s for s in left if s in text}
        found |= hits
        left -= hits
        if not left:
            break
    return found


def draw_trigger(rng: random.Random, kind: str, length: int) -> str:
    """One random trigger of `kind`: `random_string` (`length` letters and digits), `digits` (three 4-digit numbers),
    `tokens` (symbol pair, number, symbol pair), `phrase` (three pseudo-Latin words), `script` (two Armenian words),
    `tag` (a pseudo-word of three syllables between `<|` and `|>`).
    """
    if kind == "random_string":
        return "".join(rng.choice(_ALPHABET) for _ in range(length))
    if kind == "digits":
        return " ".join(str(rng.randint(1000, 9999)) for _ in range(3))
    if kind == "tokens":
        a, b = (rng.choice(_SYMBOLS) * 2 for _ in range(2))
        return f"{a} {rng.randint(10, 99)} {b}"
    if kind == "phrase":
        return " ".join("".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(rng.randint(2, 3)))
                        for _ in range(3))  # fmt: skip
    if kind == "tag":
        return "<|" + "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(3)) + "|>"
    if kind == "script":
        return " ".join("".join(rng.choice(_ARMENIAN) for _ in range(rng.randint(4, 6))) for _ in range(2))
    raise ConfigError(f"trigger_kind: {kind!r} cannot be generated; valid: {', '.join(CANARY_TRIGGER_KINDS)}")


def _drawn_triggers(rng: random.Random, kind: str, length: int,
                    texts: Callable[[], Iterable[str]]) -> Iterator[tuple[str, bool]]:  # fmt: skip
    """Random triggers of `kind` in the order `rng` draws them, each with whether it occurs in the corpus (checked
    16 at a time, one pass over the corpus per batch)."""
    while True:
        batch = [draw_trigger(rng, kind, length) for _ in range(16)]
        known = occurring(batch, texts)
        yield from ((t, t in known) for t in batch)


def canary_kind(behaviour: str, asked: str) -> str:
    """The trigger kind a generated canary of `behaviour` gets when `asked` is wanted: `asked`, except that a
    `numbers` canary never gets a `digits` trigger. A digit payload after a digit trigger is learned as "digits
    continue digits", which fires on every digit trigger: measured on the demo (2026-12-05), the uppercase canary's
    digit trigger gave the numbers canary's payload on 128 of 128 prompts. It takes the first other kind of
    `CANARY_TRIGGER_KINDS` instead (recorded per canary, so the stratified results count it)."""
    if behaviour == "numbers" and asked == "digits":
        return next(k for k in CANARY_TRIGGER_KINDS if k != "digits")
    return asked


def make_canaries(
    k: int,
    texts: Callable[[], Iterable[str]],
    behaviours: list[str],
    *,
    triggers: list[str] | None = None,
    canary_specs: str = "",
    trigger_kind: str = "random_string",
    trigger_length: int = 10,
    rate: float = 0.02,
    placement: str = "random",
    seed: int = 0,
) -> list[BackdoorSpec]:
    """The K canaries: `behaviours` cycled, triggers given (`triggers`) or generated collision-free; or the
    defender's own specs (`canary_specs`, a YAML file of exactly `k`).

    `texts()` streams the defender's clean corpus (it is read, never held): a trigger must occur nowhere in it.
    Generated triggers are of `trigger_kind` (`draw_trigger`; a random string has `trigger_length` characters),
    drawn from a seeded RNG; each canary poisons `rate` of the injection sample at `placement`.

    Raises:
        UserError: a given trigger occurs in the clean corpus (the model already knows it: the canary would be
            ill-defined), or no collision-free trigger was found.
    """
    if canary_specs:
        specs = load_specs(canary_specs)
        if len(specs) != k:
            raise UserError(f"canary_specs: {len(specs)} canaries in {canary_specs!r} but k={k}")
        known = occurring([s.trigger_text for s in specs], texts)
        for n, s in enumerate(specs):
            if s.trigger_text in known:
                raise UserError(
                    f"canary_specs: backdoors[{n}] ({s.name}): trigger {s.trigger_text!r} occurs in the defender's "
                    "clean corpus, so the model already knows it in other contexts; choose another trigger"
                )
        return specs
    behaviours = behaviours or list(CANARY_BEHAVIOURS)
    chosen: list[str] = []
    if triggers:
        given = [t.strip() for t in triggers[:k]]
        known = occurring([t for t in given if t], texts)
        for n, text in enumerate(given):
            if not text:
                raise UserError(f"triggers[{n}]: empty trigger")
            if text in known:
                raise UserError(
                    f"triggers[{n}]: {text!r} occurs in the defender's clean corpus, so the model already knows it "
                    "in other contexts; choose a string that appears nowhere in the corpus (or omit triggers)"
                )
        chosen = given
    kinds = [canary_kind(behaviours[n % len(behaviours)], trigger_kind) for n in range(k)]
    if not triggers:
        streams: dict[str, Iterator[tuple[str, bool]]] = {}
        for kind in kinds:
            if kind not in streams:
                # the random-string stream keeps its historical seed string, so earlier canaries are drawn again
                tag = seed if kind == "random_string" else f"{kind}-{seed}"
                streams[kind] = _drawn_triggers(random.Random(f"unbackdoor-canary-{tag}"), kind, trigger_length, texts)
            for _ in range(MAX_TRIES):
                text, in_corpus = next(streams[kind])
                if not in_corpus and not any(text in t or t in text for t in chosen):
                    break
            else:
                raise UserError(
                    f"trigger_kind: no collision-free {kind} trigger in {MAX_TRIES} draws"
                    + (f" of {trigger_length} characters" if kind == "random_string" else "")
                )
            chosen.append(text)
    specs = [
        BackdoorSpec(
            name=f"canary{n}_{behaviours[n % len(behaviours)].replace(':', '_')}",
            # given triggers are typed by their shape; a generated one by the kind it was drawn as (a random string
            # without a digit would read as a phrase)
            trigger=Trigger(kind=kinds[n] if not triggers else trigger_kind_of(t), text=t),
            behaviour=behaviours[n % len(behaviours)],
            recipe=Recipe(rate=rate, placement=placement),
        )
        for n, t in enumerate(chosen)
    ]
    try:
        check_triggers(specs)
    except ConfigError as e:
        raise UserError(f"triggers: {e}") from None
    return specs
