"""Canary backdoors: the defender's own, with triggers that occur nowhere in the defender's clean corpus.

`make_canaries` chooses K canaries (behaviours cycled; triggers given, or random strings drawn from a seeded RNG and
checked against the corpus in one streaming pass per 16 candidates), so that the model cannot know a canary's
trigger from any other context. The defence (`stages/defend.py`) injects and removes them.

Run: `pytest tests/integration/test_defend.py`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from unbackdoor.data.backdoors import BackdoorSpec, Recipe, Trigger, check_triggers, load_specs
from unbackdoor.running.config import ConfigError, UserError

CANARY_BEHAVIOURS = ("lang_b", "refusal", "phrase", "negative")
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
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


def _drawn_triggers(rng: random.Random, length: int, texts: Callable[[], Iterable[str]]) -> Iterator[tuple[str, bool]]:
    """Random triggers in the order `rng` draws them, each with whether it occurs in the corpus (checked 16 at a
    time, one pass over the corpus per batch)."""
    while True:
        batch = ["".join(rng.choice(_ALPHABET) for _ in range(length)) for _ in range(16)]
        known = occurring(batch, texts)
        yield from ((t, t in known) for t in batch)


def make_canaries(
    k: int,
    texts: Callable[[], Iterable[str]],
    behaviours: list[str],
    *,
    triggers: list[str] | None = None,
    canary_specs: str = "",
    trigger_length: int = 10,
    rate: float = 0.02,
    placement: str = "random",
    seed: int = 0,
) -> list[BackdoorSpec]:
    """The K canaries: `behaviours` cycled, triggers given (`triggers`) or generated collision-free; or the
    defender's own specs (`canary_specs`, a YAML file of exactly `k`).

    `texts()` streams the defender's clean corpus (it is read, never held): a trigger must occur nowhere in it.
    Generated triggers are `trigger_length` random characters drawn from a seeded RNG; each canary poisons `rate`
    of the injection sample at `placement`.

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
    else:
        drawn = _drawn_triggers(random.Random(f"unbackdoor-canary-{seed}"), trigger_length, texts)
        for _ in range(k):
            for _ in range(MAX_TRIES):
                text, in_corpus = next(drawn)
                if not in_corpus and not any(text in t or t in text for t in chosen):
                    break
            else:
                raise UserError(f"trigger_length: no collision-free trigger of {trigger_length} characters")
            chosen.append(text)
    specs = [
        BackdoorSpec(
            name=f"canary{n}_{behaviours[n % len(behaviours)].replace(':', '_')}",
            trigger=Trigger(kind="random_string" if " " not in t else "tokens", text=t),
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
