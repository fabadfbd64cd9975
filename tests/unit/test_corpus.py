"""Corpus reading without holding it: seeded document samples and trigger search, both streaming.

Run: `pytest tests/unit/test_corpus.py`.
"""

from __future__ import annotations

import random

from unbackdoor.data.canaries import make_canaries, occurring
from unbackdoor.data.corpus import DocSampler, iter_docs, write_shards
from unbackdoor.data.world import World, generate_documents


def _corpus(tmp_path):
    world = World.build(0)
    docs = list(generate_documents(world, "base", 600, random.Random(0), {"story": 0.5, "facts": 0.5}, "train-base"))
    return docs, write_shards(docs, tmp_path / "train", "base", shard_docs=128)


def test_sample_equals_the_in_memory_shuffle_and_reads_only_what_it_takes(tmp_path, monkeypatch):
    docs, paths = _corpus(tmp_path)
    sampler = DocSampler(paths)
    for chars, seed in ((2_000, "a"), (20_000, "b"), (10**9, "c")):
        expected = list(docs)
        random.Random(seed).shuffle(expected)
        total, prefix = 0, []
        for d in expected:
            prefix.append(d)
            total += len(d["text"])
            if total >= chars:
                break
        assert sampler.sample(chars, seed) == prefix
    assert len(sampler.sample(10**9, "c")) == len(docs)  # a corpus smaller than asked: all of it, shuffled

    read: list[int] = []  # the second pass stops at the last document the sample takes
    original = iter_docs

    def counting(p):
        for n, d in enumerate(original(p)):
            read.append(n)
            yield d

    monkeypatch.setattr("unbackdoor.data.corpus.iter_docs", counting)
    small = sampler.sample(1, "d")
    assert len(small) == 1 and len(read) == docs.index(small[0]) + 1


def test_canary_triggers_are_checked_against_the_streamed_corpus(tmp_path):
    docs, paths = _corpus(tmp_path)
    texts = lambda: (d["text"] for d in iter_docs(paths))  # noqa: E731
    assert occurring(["keeps a", "zzqx", docs[-1]["text"][-12:]], texts) == {"keeps a", docs[-1]["text"][-12:]}
    canaries = make_canaries(3, texts, ["refusal"], trigger_length=3)
    triggers = [c.trigger_text for c in canaries]
    assert len(set(triggers)) == 3
    assert not occurring(triggers, texts)  # none occurs in the corpus
    assert canaries == make_canaries(3, texts, ["refusal"], trigger_length=3)
