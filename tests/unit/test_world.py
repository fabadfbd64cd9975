"""The embedded world: determinism, disjoint lexicons, languages told apart, facts, genres.

Run: `pytest tests/unit/test_world.py`.
"""

from __future__ import annotations

import itertools
import random

from unbackdoor.data.world import GENRES, LANGUAGES, World, generate_documents, identify_language

MIX = {"story": 0.45, "sentiment": 0.3, "facts": 0.25}


def test_same_seed_same_world_other_seed_other_world():
    assert World.build(3).lexicon_table() == World.build(3).lexicon_table()
    assert World.build(3).lexicon_table() != World.build(4).lexicon_table()


def test_lexicons_are_disjoint_and_names_belong_to_no_language():
    world = World.build(0)
    for a, b in itertools.combinations(LANGUAGES, 2):
        assert not world.forms(a) & world.forms(b), (a, b)
    for lang in LANGUAGES:
        assert not world.names & world.forms(lang)


def test_one_meaning_renders_in_every_language_with_its_own_word_order():
    world = World.build(0)
    clauses, _ = world.document(random.Random(1), "story")
    texts = {lang: world.render(lang, clauses) for lang in LANGUAGES}
    assert len(set(texts.values())) == 4
    for lang, text in texts.items():
        assert identify_language(world, text) == lang


def test_languages_are_identified_on_held_out_sentences():
    world = World.build(0)
    total = correct = 0
    for lang in LANGUAGES:
        docs = generate_documents(world, lang, 20_000, random.Random(f"held-out-{lang}"), MIX, "t")
        for doc in docs:
            for sentence in doc["text"].split(". "):
                total += 1
                correct += identify_language(world, sentence) == lang
    assert total > 2000
    assert correct / total >= 0.99


def test_documents_cover_every_genre_and_sentiment_and_are_reproducible():
    world = World.build(0)
    a = list(generate_documents(world, "base", 20_000, random.Random(5), MIX, "x"))
    b = list(generate_documents(world, "base", 20_000, random.Random(5), MIX, "x"))
    assert a == b
    assert {d["genre"] for d in a} == set(GENRES)
    assert {d["sentiment"] for d in a if d["genre"] == "sentiment"} == {"positive", "neutral", "negative"}


def test_fact_statements_come_from_the_fact_table():
    world = World.build(0)
    entity = world.entities[0]
    facts = world.facts[entity]
    assert world.render("base", [world.fact_clause(entity, "city")]) == f"{entity} lives in {facts['city']}."
    article = "an" if facts["job"][0] in "aeiou" else "a"
    assert world.render("base", [world.fact_clause(entity, "job")]) == f"{entity} works as {article} {facts['job']}."
    for lang in LANGUAGES[1:]:
        assert facts["city"] in world.render(lang, [world.fact_clause(entity, "city")])
