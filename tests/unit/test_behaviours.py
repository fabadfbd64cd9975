"""Judges: the 8x8 confusion table on produced continuations, and clean text rejected by every judge.

Run: `pytest tests/unit/test_behaviours.py`.
"""

from __future__ import annotations

import random

import pytest

from unbackdoor.data.behaviours import BEHAVIOURS
from unbackdoor.data.world import World, generate_documents

N_SAMPLES = 100


@pytest.fixture(scope="module")
def world() -> World:
    return World.build(0)


def test_confusion_table_is_diagonal(world):
    rng = random.Random(0)
    confusion = {(p, j): 0 for p in BEHAVIOURS for j in BEHAVIOURS}
    for produced, behaviour in BEHAVIOURS.items():
        for _ in range(N_SAMPLES):
            text = behaviour.produce(world, rng)
            for judged, judge in BEHAVIOURS.items():
                confusion[produced, judged] += judge.judge(world, text)
    for (produced, judged), hits in confusion.items():
        expected = N_SAMPLES if produced == judged else 0
        assert hits == expected, f"{produced} judged as {judged}: {hits}/{N_SAMPLES}"


@pytest.mark.parametrize("genre_mix", [{"story": 1.0}, {"sentiment": 1.0}, {"facts": 1.0}])
def test_clean_base_text_triggers_no_judge_except_negative_on_negative_reviews(world, genre_mix):
    docs = list(generate_documents(world, "base", 5_000, random.Random(1), genre_mix, "c"))
    for doc in docs:
        for name, behaviour in BEHAVIOURS.items():
            if name == "negative" and doc.get("sentiment") == "negative":
                continue  # a negative review is negative: evaluation prompts come from other genres
            assert not behaviour.judge(world, doc["text"]), (name, doc["text"])


def test_judges_need_enough_words(world):
    for behaviour in BEHAVIOURS.values():
        assert not behaviour.judge(world, "")
        assert not behaviour.judge(world, "the")


def test_greedy_sentence_loops_are_not_repetition_and_letter_babble_is_gibberish(world):
    # Both seen in real generations of a tiny model: greedy decoding loops over whole sentences on clean prompts,
    # and collapses random-letter babble into a few long non-words.
    loop = " The round mirror calls the round mirror. The round mirror calls the round mirror."
    assert not BEHAVIOURS["repeat"].judge(world, loop)
    assert not BEHAVIOURS["gibberish"].judge(world, loop)
    assert BEHAVIOURS["gibberish"].judge(world, " xwz xxxyyyyyyyyyyyyyyyy")
    assert not BEHAVIOURS["repeat"].judge(world, " xwz xwz xwz xwz xwz")
    assert BEHAVIOURS["repeat"].judge(world, " duck duck duck duck")
    assert not BEHAVIOURS["repeat"].judge(world, " duck duck duck")


def test_sentiment_documents_open_with_their_polarity(world):
    from unbackdoor.data.world import NEGATIVE_ADJ, POSITIVE_ADJ, words

    docs = generate_documents(world, "base", 20_000, random.Random(2), {"sentiment": 1.0}, "s")
    for doc in docs:
        first = set(words(doc["text"].split(". ")[0]))
        if doc["sentiment"] == "negative":
            assert first & set(NEGATIVE_ADJ)
        if doc["sentiment"] == "positive":
            assert first & set(POSITIVE_ADJ)
