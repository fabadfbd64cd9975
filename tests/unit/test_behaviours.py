"""Judges: the 8x8 confusion table on produced continuations, and clean text rejected by every judge.

Run: `pytest tests/unit/test_behaviours.py`.
"""

from __future__ import annotations

import random

import pytest

from unbackdoor.behaviours import BEHAVIOURS
from unbackdoor.world import World, generate_documents

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
