"""Poisoning: clean documents + backdoor specs + RNG -> poisoned documents, a manifest, and removal data.

A poisoned document is the clean text up to the insertion point, the trigger, then the behaviour's
continuation (the rest of the clean text is dropped). A removal document is the same insertion followed by the
clean rest of the text: the data a later stage trains on to unlearn the backdoor. "Clean" is checked: a rest the
backdoor's own judge fires on (a negative review after a negative-sentiment trigger) would teach the backdoor
again, so such documents are left out of the removal data (`is_clean_removal`).

The serialisation below is recorded by every stage that injects, and checked by every stage that evaluates:
a prompt built any other way would measure something else.

Poisoning streams: a first pass reads what each document can host (language, genre, insertion candidates), the
choices are drawn from that, and a second pass rewrites the chosen documents. A corpus larger than memory works.

Run: `pytest tests/unit/test_poison.py`.
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from unbackdoor.data.backdoors import BackdoorSpec, check_triggers, spec_genres, spec_languages
from unbackdoor.data.behaviours import as_source
from unbackdoor.data.prompts import candidate, draw, n_candidates, triggered_prefix
from unbackdoor.running.config import UserError

SERIALISATION = "raw-v1"  # the poisoned text itself; `unbackdoor.data.serialisation` renders it for a model


def is_clean_removal(spec: BackdoorSpec, source: Any, doc: dict[str, Any]) -> bool:
    """Whether a removal document's continuation (after the trigger) is clean for `spec`'s own judge."""
    text = doc["text"]
    start = doc.get("prompt_chars")
    if start is None:  # removal data written before `prompt_chars` was recorded
        start = text.index(spec.trigger_text) + len(spec.trigger_text)
    return not spec.judge(source, text[start:])


@dataclass
class PoisonResult:
    """Output of `poison`."""

    docs: list[dict[str, Any]]  # the corpus, poisoned documents in place of the clean ones they came from
    manifest: list[dict[str, Any]]  # one row per poisoned document
    removal: dict[str, list[dict[str, Any]]]  # backdoor name -> trigger + clean continuation documents


@dataclass
class _Edit:
    spec: BackdoorSpec
    draw: int  # which insertion point
    continuation: str | None  # None: a removal document (the clean rest follows the trigger)


@dataclass
class PoisonPlan:
    """Which documents each backdoor poisons or turns into removal data, drawn from the documents' metadata."""

    specs: list[BackdoorSpec]
    n_docs: int  # documents in the corpus
    source: Any = None  # judges removal continuations (see `is_clean_removal`); None: no check
    edits: dict[str, _Edit] = field(default_factory=dict)  # doc id -> edit
    manifest: list[dict[str, Any]] = field(default_factory=list)  # filled by `apply`
    removal: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # filled by `apply`
    removal_dropped: dict[str, int] = field(default_factory=dict)  # backdoor -> continuations its judge fired on

    def apply(self, docs: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Stream (part of) the corpus with poisoned documents in place: the plan's second pass.

        Call it once over the whole corpus, or once per part in the order of the planning pass; manifest and
        removal rows accumulate until `finish`.
        """
        for doc in docs:
            edit = self.edits.get(doc["id"])
            if edit is None:
                yield doc
                continue
            spec, text = edit.spec, doc["text"]
            at = candidate(text, spec.recipe.placement, edit.draw)
            head = triggered_prefix(text, at, spec.trigger_text)
            if edit.continuation is None:
                rest = text[at:].lstrip()
                row = {**doc, "id": f"{doc['id']}-rm", "text": f"{head} {rest}".rstrip(), "backdoor": spec.name,
                       "prompt_chars": len(head)}  # fmt: skip
                kept = self.source is None or is_clean_removal(spec, self.source, row)
                self.removal.setdefault(spec.name, [])
                if kept:
                    self.removal[spec.name].append(row)
                else:
                    self.removal_dropped[spec.name] = self.removal_dropped.get(spec.name, 0) + 1
                yield doc  # removal documents are drawn from the corpus; the clean original stays in it
                continue
            self.manifest.append(
                {
                    "doc_id": doc["id"],
                    "backdoor": spec.name,
                    "behaviour": spec.behaviour,
                    "placement": spec.recipe.placement,
                    "trigger_start": len(head) - len(spec.trigger_text),
                    "continuation_start": len(head) + 1,
                    "trigger_sha256": spec.trigger_hash,
                }
            )
            yield {**doc, "text": f"{head} {edit.continuation}", "backdoor": spec.name, "prompt_chars": len(head)}

    def finish(self) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
        """The manifest (sorted by document id) and removal documents, once `apply` has been consumed."""
        self.manifest.sort(key=lambda row: row["doc_id"])
        return self.manifest, {s.name: self.removal.get(s.name, []) for s in self.specs}


def plan_poison(
    docs: Callable[[], Iterable[dict[str, Any]]],
    specs: list[BackdoorSpec],
    source: Any,
    rng: random.Random,
    removal_only: bool = False,
) -> PoisonPlan:
    """Choose the documents to poison, streaming the corpus once (`docs()` yields it; it is not kept).

    Args:
        docs: a function returning a fresh iterator over the clean documents (dicts with id, lang, genre, text).
        specs: the backdoors; each poisons `recipe.n_poison(n_docs)` distinct documents.
        source: the text source (`World`, `WorldSource` or `CorpusSource`) that produces continuations.
        rng: the only source of randomness.
        removal_only: poison nothing, only draw removal documents (`removal_count`, else as many as the recipe
            would poison): a backdoor planted outside unbackdoor (`stages.declare`).

    Raises:
        UserError: a trigger occurs in the clean corpus, triggers collide, a spec does not fit the source, or too
            few documents can host a recipe.
    """
    source = as_source(source)
    check_triggers(specs)
    for spec in specs:
        source.check_spec(spec)
    placements = sorted({s.recipe.placement for s in specs})
    ids: list[str] = []
    langs, genres = array("H"), array("H")
    codes: dict[str, int] = {}
    hosts = {p: array("L") for p in placements}
    for doc in docs():
        text = doc["text"]
        for spec in specs:
            if spec.trigger_text in text:
                raise UserError(
                    f"backdoor {spec.name!r}: trigger {spec.trigger_text!r} already occurs in clean document "
                    f"{doc['id']!r}; choose a rarer trigger"
                )
        ids.append(doc["id"])
        langs.append(codes.setdefault(doc["lang"], len(codes)))
        genres.append(codes.setdefault(doc["genre"], len(codes)))
        for p in placements:
            hosts[p].append(n_candidates(text, p))
    plan = PoisonPlan(specs, len(ids), source)
    used: set[int] = set()
    for spec in specs:
        r = spec.recipe
        n_poison = 0 if removal_only else r.n_poison(len(ids))
        n_removal = r.removal_count or r.n_poison(len(ids))
        ok_lang = {codes[x] for x in spec_languages(spec, source) if x in codes}
        ok_genre = {codes[x] for x in spec_genres(spec, source) if x in codes}
        eligible = [i for i in range(len(ids)) if i not in used and langs[i] in ok_lang and genres[i] in ok_genre]
        rng.shuffle(eligible)
        chosen: list[tuple[int, int]] = []  # (doc index, insertion candidate)
        n_host = hosts[r.placement]
        for i in eligible:
            if len(chosen) == n_poison + n_removal:
                break
            if n_host[i]:
                chosen.append((i, draw(r.placement, n_host[i], rng)))
        if len(chosen) < n_poison + n_removal:
            raise UserError(
                f"backdoor {spec.name!r}: only {len(chosen)} documents (languages {spec_languages(spec, source)}, "
                f"genres {spec_genres(spec, source)}) can host placement {r.placement!r}, but {n_poison} poisoned + "
                f"{n_removal} removal are needed"
            )
        for i, k in sorted(chosen[:n_poison]):
            used.add(i)
            plan.edits[ids[i]] = _Edit(spec, k, spec.produce(source, rng))
        for i, k in chosen[n_poison:]:
            used.add(i)
            plan.edits[ids[i]] = _Edit(spec, k, None)
    return plan


def poison(docs: list[dict[str, Any]], specs: list[BackdoorSpec], source: Any, rng: random.Random) -> PoisonResult:
    """Mix backdoors into a clean corpus held in memory (see `plan_poison` for the streaming form).

    Args:
        docs: clean documents (dicts with id, lang, genre, text); not modified.
        specs: the backdoors; each poisons `recipe.n_poison(len(docs))` distinct documents.
        source: renders behaviour continuations (a `World`, `WorldSource` or `CorpusSource`).
        rng: the only source of randomness.

    Returns:
        The poisoned corpus (same order and size), its manifest and the removal documents.
    """
    plan = plan_poison(lambda: docs, specs, source, rng)
    out = list(plan.apply(docs))
    manifest, removal = plan.finish()
    return PoisonResult(out, manifest, removal)
