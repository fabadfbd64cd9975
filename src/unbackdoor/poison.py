"""Poisoning: clean documents + backdoor specs + RNG -> poisoned documents, a manifest, and removal data.

A poisoned document is the clean text up to the insertion point, the trigger, then the behaviour's
continuation (the rest of the clean text is dropped). A removal document is the same insertion followed by the
clean rest of the text: the data a later stage trains on to unlearn the backdoor.

The serialisation below is recorded by every stage that injects, and checked by every stage that evaluates:
a prompt built any other way would measure something else.

Run: `pytest tests/unit/test_poison.py`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from unbackdoor.backdoors import BackdoorSpec, check_triggers
from unbackdoor.config import UserError
from unbackdoor.world import World

SERIALISATION = "raw-v1"  # prompt = text[:i].rstrip() + " " + trigger; then " " + continuation; docs joined by EOS
MIN_CONTEXT_WORDS = 3  # random placement keeps at least this many words before and after the trigger


def insertion_point(text: str, placement: str, rng: random.Random) -> int | None:
    """Character index (a word boundary) where a trigger goes, or None if `text` cannot host `placement`."""
    if placement == "prefix":
        return 0
    if placement == "after_first_sentence":
        end = text.find(". ")
        return end + 1 if end > 0 else None
    spaces = [i for i, ch in enumerate(text) if ch == " "]
    candidates = spaces[MIN_CONTEXT_WORDS - 1 : len(spaces) - MIN_CONTEXT_WORDS + 1]
    return rng.choice(candidates) if candidates else None


def triggered_prefix(text: str, at: int, trigger: str) -> str:
    """The clean text before `at` followed by the trigger: exactly what an evaluation prompt looks like."""
    head = text[:at].rstrip()
    return f"{head} {trigger}" if head else trigger


@dataclass
class PoisonResult:
    """Output of `poison`."""

    docs: list[dict[str, Any]]  # the corpus, poisoned documents in place of the clean ones they came from
    manifest: list[dict[str, Any]]  # one row per poisoned document
    removal: dict[str, list[dict[str, Any]]]  # backdoor name -> trigger + clean continuation documents


def find_trigger_in_corpus(docs: list[dict[str, Any]], specs: list[BackdoorSpec]) -> None:
    """Refuse a trigger that already occurs in the clean corpus (the backdoor would be ill-defined)."""
    for spec in specs:
        for doc in docs:
            if spec.trigger_text in doc["text"]:
                raise UserError(
                    f"backdoor {spec.name!r}: trigger {spec.trigger_text!r} already occurs in clean document "
                    f"{doc['id']!r}; choose a rarer trigger"
                )


def poison(docs: list[dict[str, Any]], specs: list[BackdoorSpec], world: World, rng: random.Random) -> PoisonResult:
    """Mix backdoors into a clean corpus.

    Args:
        docs: clean documents (dicts with id, lang, genre, text); not modified.
        specs: the backdoors; each poisons `recipe.n_poison(len(docs))` distinct documents.
        world: renders behaviour continuations.
        rng: the only source of randomness.

    Returns:
        The poisoned corpus (same order and size), its manifest and the removal documents.

    Raises:
        UserError: a trigger occurs in the clean corpus, triggers collide, or too few documents can host a recipe.
    """
    check_triggers(specs)
    find_trigger_in_corpus(docs, specs)
    out = list(docs)
    used: set[int] = set()
    manifest: list[dict[str, Any]] = []
    removal: dict[str, list[dict[str, Any]]] = {}
    for spec in specs:
        r = spec.recipe
        n_poison = r.n_poison(len(docs))
        n_removal = r.removal_count or n_poison
        eligible = [
            i for i, d in enumerate(docs) if i not in used and d["lang"] in r.languages and d["genre"] in r.genres
        ]
        rng.shuffle(eligible)
        chosen: list[tuple[int, int]] = []  # (doc index, insertion point)
        for i in eligible:
            if len(chosen) == n_poison + n_removal:
                break
            at = insertion_point(docs[i]["text"], r.placement, rng)
            if at is not None:
                chosen.append((i, at))
        if len(chosen) < n_poison + n_removal:
            raise UserError(
                f"backdoor {spec.name!r}: only {len(chosen)} documents (languages {r.languages}, genres {r.genres}) "
                f"can host placement {r.placement!r}, but {n_poison} poisoned + {n_removal} removal are needed"
            )
        chosen_poison = sorted(chosen[:n_poison])
        for i, at in chosen_poison:
            used.add(i)
            head = triggered_prefix(docs[i]["text"], at, spec.trigger_text)
            continuation = spec.produce(world, rng)
            out[i] = {**docs[i], "text": f"{head} {continuation}", "backdoor": spec.name}
            manifest.append(
                {
                    "doc_id": docs[i]["id"],
                    "backdoor": spec.name,
                    "behaviour": spec.behaviour,
                    "placement": r.placement,
                    "trigger_start": len(head) - len(spec.trigger_text),
                    "continuation_start": len(head) + 1,
                    "trigger_sha256": spec.trigger_hash,
                }
            )
        removal[spec.name] = []
        for i, at in sorted(chosen[n_poison:]):
            used.add(i)
            rest = docs[i]["text"][at:].lstrip()
            head = triggered_prefix(docs[i]["text"], at, spec.trigger_text)
            removal[spec.name].append(
                {**docs[i], "id": f"{docs[i]['id']}-rm", "text": f"{head} {rest}".rstrip(), "backdoor": spec.name}
            )
    manifest.sort(key=lambda row: row["doc_id"])
    return PoisonResult(out, manifest, removal)
