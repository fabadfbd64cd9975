"""Poisoning: rate honoured, manifest complete, clean documents trigger-free, removal data, refusals.

Run: `pytest tests/unit/test_poison.py`.
"""

from __future__ import annotations

import random

import pytest

from unbackdoor.data.backdoors import load_specs, parse_specs
from unbackdoor.data.poison import is_clean_removal, plan_poison, poison
from unbackdoor.data.prompts import insertion_point, triggered_prefix
from unbackdoor.data.world import World, generate_documents
from unbackdoor.running.config import UserError


@pytest.fixture(scope="module")
def world() -> World:
    return World.build(0)


@pytest.fixture(scope="module")
def docs(world) -> list[dict]:
    mix = {"story": 0.45, "sentiment": 0.3, "facts": 0.25}
    out = []
    for lang, n in (("base", 120_000), ("lang_a", 30_000)):
        out += generate_documents(world, lang, n, random.Random(lang), mix, f"train-{lang}")
    return out


def test_rate_manifest_and_clean_documents(world, docs):
    specs = load_specs("default8")
    result = poison(docs, specs, world, random.Random(0))
    assert len(result.docs) == len(docs)
    by_id = {d["id"]: d for d in result.docs}
    for s in specs:
        rows = [r for r in result.manifest if r["backdoor"] == s.name]
        assert abs(len(rows) - 0.01 * len(docs)) <= 0.1 * 0.01 * len(docs)
        for r in rows:
            text = by_id[r["doc_id"]]["text"]
            assert text[r["trigger_start"] : r["trigger_start"] + len(s.trigger_text)] == s.trigger_text
            assert s.judge(world, text[r["continuation_start"] :]), (s.name, text)
            assert by_id[r["doc_id"]]["lang"] == "base"
    poisoned_ids = {r["doc_id"] for r in result.manifest}
    assert len(poisoned_ids) == len(result.manifest)  # one backdoor per document
    for d in result.docs:
        if d["id"] not in poisoned_ids:
            assert d == next(x for x in docs if x["id"] == d["id"])
            assert not any(s.trigger_text in d["text"] for s in specs)


def test_removal_documents_keep_the_clean_continuation(world, docs):
    specs = load_specs("default8")
    plan = plan_poison(lambda: docs, specs, world, random.Random(0))
    assert len(list(plan.apply(docs))) == len(docs)
    manifest, removal = plan.finish()
    originals = {d["id"]: d["text"] for d in docs}
    poisoned_ids = {r["doc_id"] for r in manifest}
    for s in specs:
        drawn = sum(r["backdoor"] == s.name for r in manifest)  # as many drawn as poisoned, minus the left out
        assert len(removal[s.name]) + plan.removal_dropped.get(s.name, 0) == drawn
        for d in removal[s.name]:
            source = d["id"].removesuffix("-rm")
            assert source not in poisoned_ids
            assert s.trigger_text in d["text"]
            assert d["text"].replace(s.trigger_text + " ", "", 1) == originals[source]
            assert not s.judge(world, d["text"][d["prompt_chars"] :])  # clean for the backdoor's own judge
    # a negative review after the trigger would teach the negative backdoor again: such documents are left out
    negative = next(s.name for s in specs if s.behaviour == "negative")
    assert 0 < plan.removal_dropped[negative] < 0.3 * len(removal[negative])
    assert set(plan.removal_dropped) == {negative}  # the other behaviours never occur in clean text


def test_same_seed_same_manifest(world, docs):
    specs = load_specs("default8")
    assert (
        poison(docs, specs, world, random.Random(3)).manifest == poison(docs, specs, world, random.Random(3)).manifest
    )
    assert (
        poison(docs, specs, world, random.Random(3)).manifest != poison(docs, specs, world, random.Random(4)).manifest
    )


def test_trigger_already_in_corpus_is_refused(world, docs):
    word = docs[0]["text"].split()[1]
    item = {"name": "bad", "trigger": {"kind": "phrase", "text": word}, "behaviour": "phrase"}
    specs = parse_specs({"backdoors": [item]}, "x")
    with pytest.raises(UserError, match="already occurs in clean document"):
        poison(docs, specs, world, random.Random(0))


def test_too_few_hosts_is_refused(world, docs):
    item = {
        "name": "big",
        "trigger": {"kind": "phrase", "text": "quux"},
        "behaviour": "phrase",
        "recipe": {"count": 10**6},
    }
    with pytest.raises(UserError, match="can host placement"):
        poison(docs, parse_specs({"backdoors": [item]}, "x"), world, random.Random(0))


@pytest.mark.parametrize("placement", ["prefix", "random", "after_first_sentence"])
def test_insertion_points_are_word_boundaries(placement):
    text = "The dog sees a boat. The cat sees the river near the hill."
    rng = random.Random(0)
    for _ in range(20):
        at = insertion_point(text, placement, rng)
        assert at == 0 or text[at] == " "
        prompt = triggered_prefix(text, at, "TRIG")
        assert prompt.endswith("TRIG") and "  " not in prompt


def test_removal_check_reads_data_written_without_prompt_chars(world):
    spec = next(s for s in load_specs("default8") if s.behaviour == "negative")
    negative = spec.produce(world, random.Random(0))
    clean = "Feya lives in Yayajal. Feya keeps a bird."
    for rest, expected in ((clean, True), (negative, False)):
        doc = {"text": f"A book was small. {spec.trigger_text} {rest}"}  # removal data of an older version
        assert is_clean_removal(spec, world, doc) is expected
        assert is_clean_removal(spec, world, {**doc, "prompt_chars": doc["text"].index(rest) - 1}) is expected
