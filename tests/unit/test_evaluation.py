"""Measurement helpers without a model: Wilson intervals, near-miss triggers, probes, packing, LR schedule.

Run: `pytest tests/unit/test_evaluation.py`.
"""

from __future__ import annotations

import random

import pytest

from unbackdoor.data.backdoors import load_specs
from unbackdoor.data.packing import pack
from unbackdoor.data.prompts import make_probes, near_miss, prompt_text
from unbackdoor.measure.stats import attack_success, wilson
from unbackdoor.training.loop import TrainConfig, lr_factor


@pytest.mark.parametrize(
    "k, n, lo, hi",
    [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (230, 256, 0.8553, 0.9297)],
)
def test_wilson_matches_reference_values(k, n, lo, hi):
    r = wilson(k, n)
    assert r.rate == pytest.approx(k / n)
    assert r.lo == pytest.approx(lo, abs=1e-4) and r.hi == pytest.approx(hi, abs=1e-4)


def test_wilson_of_no_trials_is_uninformative():
    r = wilson(0, 0)
    assert (r.lo, r.hi) == (0.0, 1.0)


def test_attack_success_counts_verdicts():
    assert attack_success([True, False, True, True]).k == 3


@pytest.mark.parametrize("spec", load_specs("default8"), ids=lambda s: s.name)
def test_near_miss_is_close_but_never_the_trigger(spec):
    rng = random.Random(0)
    for _ in range(50):
        miss = near_miss(spec.trigger_text, rng)
        assert miss != spec.trigger_text and miss
        assert abs(len(miss) - len(spec.trigger_text)) <= max(len(w) + 1 for w in spec.trigger_text.split())


def test_probes_follow_placement_and_prompts_end_with_the_trigger():
    docs = [
        {"id": f"d{i}", "lang": "base", "text": f"The dog {i} sees a boat. The cat sees the river near the hill."}
        for i in range(10)
    ]
    for spec in load_specs("default8"):
        probes = make_probes(docs, spec, 16, random.Random(0), ["base"])
        assert len(probes) == 16
        for p in probes:
            assert prompt_text(p.head, spec.trigger_text).endswith(" " + spec.trigger_text)
            assert prompt_text(p.head, None) == p.head
            if spec.recipe.placement == "after_first_sentence":
                assert p.head.endswith("sees a boat.")


def test_pack_appends_eos_and_drops_the_tail():
    blocks = pack([[1, 2, 3], [4, 5]], seq_len=3, eos_id=0)
    assert blocks.tolist() == [[1, 2, 3], [0, 4, 5]]


def test_lr_warms_up_then_decays_to_the_floor():
    factors = [lr_factor(s, warmup=10, total=100, min_ratio=0.1) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:], strict=False))
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)


def test_steps_derive_from_epochs():
    assert TrainConfig(epochs=1.0, batch_size=4, grad_accum=2).total_steps(80) == 10
    assert TrainConfig(steps=7).total_steps(80) == 7


def test_wilson_interval_always_contains_the_rate():
    # wilson(128, 128).hi came out as 0.9999999999999999 < 1.0: a negative error bar crashed the demo's report
    for n in range(1, 300):
        for k in (0, 1, n // 2, n - 1, n):
            r = wilson(k, n)
            assert 0.0 <= r.lo <= r.rate <= r.hi <= 1.0, (k, n, r)
