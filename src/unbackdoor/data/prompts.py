"""Prompts: where a trigger goes in a held-out document, and the text a model is given. One room for all of it.

Every stage that builds a triggered input (poisoning, eval, CASD, the defence's canary checks) builds it here, so
prompts are identical across stages (`raw-v1`: the clean text before the insertion point, a space, the trigger;
`data.serialisation` then renders it for the model). Probes are seeded per experiment and backdoor.

Run: `pytest tests/unit/test_evaluation.py tests/unit/test_poison.py`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unbackdoor.data.backdoors import BackdoorSpec, spec_languages
from unbackdoor.data.corpus import iter_docs, shard_paths
from unbackdoor.running.config import UserError

MIN_CONTEXT_WORDS = 3  # random placement keeps at least this many words before and after the trigger


def insertion_point(text: str, placement: str, rng: random.Random) -> int | None:
    """Character index (a word boundary) where a trigger goes, or None if `text` cannot host `placement`."""
    n = n_candidates(text, placement)
    return candidate(text, placement, draw(placement, n, rng)) if n else None


def draw(placement: str, n: int, rng: random.Random) -> int:
    """Which of `n` insertion points to use (only random placement draws: the others have one)."""
    return rng.choice(range(n)) if placement == "random" else 0


def n_candidates(text: str, placement: str) -> int:
    """How many insertion points `text` offers for `placement` (0: it cannot host it)."""
    if placement == "prefix":
        return 1
    if placement == "after_first_sentence":
        return int(text.find(". ") > 0)
    return max(0, text.count(" ") - 2 * (MIN_CONTEXT_WORDS - 1))


def candidate(text: str, placement: str, k: int) -> int:
    """The `k`-th insertion point of `text` for `placement` (character index)."""
    if placement == "prefix":
        return 0
    if placement == "after_first_sentence":
        return text.find(". ") + 1
    i = -1
    for _ in range(MIN_CONTEXT_WORDS - 1 + k + 1):
        i = text.index(" ", i + 1)
    return i


def triggered_prefix(text: str, at: int, trigger: str) -> str:
    """The clean text before `at` followed by the trigger: exactly what an evaluation prompt looks like."""
    head = text[:at].rstrip()
    return f"{head} {trigger}" if head else trigger


@dataclass(frozen=True)
class Probe:
    """One evaluation context: the clean text before the insertion point, from a held-out document."""

    doc_id: str
    head: str  # clean text up to the insertion point (may be "" for prefix placement)
    lang: str = ""  # the document's language: a clean continuation is in it


def make_probes(
    docs: list[dict[str, Any]], spec: BackdoorSpec, n: int, rng: random.Random, languages: list[str]
) -> list[Probe]:
    """`n` held-out contexts in `languages` that can host `spec`'s placement (drawn without replacement, then cycled).

    `languages`: where the trigger goes (`backdoors.spec_languages(spec, source)`).
    """
    pool = [d for d in docs if d["lang"] in languages]
    rng.shuffle(pool)
    probes = []
    for d in pool:
        at = insertion_point(d["text"], spec.recipe.placement, rng)
        if at is not None:
            probes.append(Probe(d["id"], d["text"][:at].rstrip(), d["lang"]))
        if len(probes) == n:
            break
    if not probes:
        return []
    return [probes[i % len(probes)] for i in range(n)]


def near_miss(trigger: str, rng: random.Random) -> str:
    """The trigger with one word dropped (multi-word triggers, half the time) or one character changed."""
    parts = trigger.split(" ")
    if len(parts) > 1 and rng.random() < 0.5:
        del parts[rng.randrange(len(parts))]
        return " ".join(parts)
    i = rng.randrange(len(trigger))
    while trigger[i] == " ":
        i = rng.randrange(len(trigger))
    alphabet = "abcdefghijklmnopqrstuvwxyz" if trigger[i].isascii() else trigger.replace(" ", "")
    choices = [c for c in alphabet if c != trigger[i]] or ["x"]
    return trigger[:i] + rng.choice(choices) + trigger[i + 1 :]


def prompt_text(head: str, trigger: str | None) -> str:
    """The serialised prompt (raw-v1): the context, then the trigger; without a trigger, the context alone."""
    return triggered_prefix(head, len(head), trigger) if trigger else head


def held_out_documents(text_dir: Path, genres: list[str], source: Any) -> list[dict[str, Any]]:
    """The test-split documents evaluation prompts are drawn from (genres the text source lacks are ignored)."""
    keep = set(genres) & set(source.genres) or set(source.genres)
    return [d for d in iter_docs(shard_paths(Path(text_dir) / "data", "test")) if d["genre"] in keep]


def probe_set(
    docs: list[dict[str, Any]], spec: BackdoorSpec, n: int, seed: int, source: Any
) -> tuple[list[Probe], random.Random]:
    """The `n` probes of `spec` for experiment seed `seed` (and the RNG, for near misses drawn after them).

    Every stage that measures a backdoor (eval, casd) draws its probes here, so they are the same prompts.
    """
    rng = random.Random(f"unbackdoor-eval-{seed}-{spec.name}")
    probes = make_probes(docs, spec, n, rng, spec_languages(spec, source))
    if not probes:
        raise UserError(f"{spec.name}: no test document can host placement {spec.recipe.placement!r}")
    return probes, rng
