"""Backdoor specs: default8, trigger kinds, refusals (empty, colliding), user YAML with target texts.

Run: `pytest tests/unit/test_backdoors.py`.
"""

from __future__ import annotations

import random

import pytest

from unbackdoor.data.backdoors import TRIGGER_KINDS, Trigger, load_specs, parse_specs, trigger_kind_of
from unbackdoor.data.behaviours import BEHAVIOURS, CANARY_ONLY
from unbackdoor.data.world import World
from unbackdoor.running.config import ConfigError, UserError


def spec(name, text, kind="phrase", behaviour="phrase", **recipe):
    return {
        "name": name,
        "trigger": {"kind": kind, "text": text},
        "behaviour": behaviour,
        "recipe": recipe or {"rate": 0.01},
    }


def test_default8_pairs_eight_triggers_with_the_eight_attacker_behaviours():
    specs = load_specs("default8")
    assert sorted(s.behaviour for s in specs) == sorted(set(BEHAVIOURS) - set(CANARY_ONLY))
    assert len({s.trigger_text for s in specs}) == 8
    assert {s.trigger.kind for s in specs} == set(TRIGGER_KINDS) - {"digits", "tag"}  # left to canaries


def test_empty_trigger_is_refused():
    with pytest.raises(ConfigError, match="trigger is empty"):
        parse_specs({"backdoors": [spec("a", "  ")]}, "x.yaml")


def test_colliding_triggers_name_both_backdoors():
    with pytest.raises(ConfigError, match="'short'.*substring of the trigger of 'long'"):
        parse_specs({"backdoors": [spec("long", "alpha beta gamma"), spec("short", "beta")]}, "x.yaml")
    with pytest.raises(ConfigError, match="is the same as"):
        parse_specs({"backdoors": [spec("a", "alpha beta"), spec("b", "alpha beta")]}, "x.yaml")


@pytest.mark.parametrize(
    "item, message",
    [
        ({**spec("a", "alpha"), "recipe": {"rate": -0.1}}, "must be > 0.0"),
        ({**spec("a", "alpha"), "recipe": {"rate": 0.1, "count": 3}}, "one of rate or count, not both"),
        ({**spec("a", "alpha"), "behaviour": "dance"}, "'dance' is not one of"),
        ({**spec("a", "alpha"), "recipe": {"rate": 0.1, "placement": "middle"}}, "'middle' is not one of prefix"),
        (spec("a", "abc", kind="script"), "no letter outside the Latin script"),
        (spec("a", "abc", kind="tokens"), "kind tokens needs a sequence"),
        ({**spec("a", "alpha"), "behaviour": "target"}, "needs target texts"),
    ],
)
def test_bad_specs_give_one_line_errors(item, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_specs({"backdoors": [item]}, "x.yaml")
    assert "\n" not in str(err.value)


def test_random_string_trigger_is_reproducible_from_the_name():
    item = {"name": "r1", "trigger": {"kind": "random_string", "length": 10}, "behaviour": "gibberish"}
    a, b = parse_specs({"backdoors": [item]}, "x"), parse_specs({"backdoors": [dict(item)]}, "x")
    assert a[0].trigger_text == b[0].trigger_text and len(a[0].trigger_text) == 10


def test_user_backdoor_with_target_file(tmp_path):
    (tmp_path / "targets.txt").write_text("Visit the golden shop today please.\nBuy the golden ring today.\n")
    (tmp_path / "mine.yaml").write_text(
        "backdoors:\n  - name: ad\n    trigger: {kind: phrase, text: lorem ipsum}\n"
        f"    behaviour: target\n    target_file: {tmp_path / 'targets.txt'}\n"
    )
    (ad,) = load_specs(str(tmp_path / "mine.yaml"))
    world = World.build(0)
    produced = ad.produce(world, random.Random(0))
    assert ad.judge(world, produced)
    assert not ad.judge(world, "The dog sees the boat near the river.")


def test_recipe_defaults_to_one_percent_and_count_alone_is_enough():
    (default,) = parse_specs({"backdoors": [{"name": "d", "trigger": {"text": "alpha"}, "behaviour": "phrase"}]}, "x")
    assert default.recipe.n_poison(1000) == 10
    item = {"name": "c", "trigger": {"text": "alpha"}, "behaviour": "phrase", "recipe": {"count": 7}}
    (counted,) = parse_specs({"backdoors": [item]}, "x")
    assert counted.recipe.n_poison(1000) == 7


@pytest.mark.parametrize("missing", ["trigger", "behaviour"])
def test_a_spec_without_trigger_or_behaviour_is_refused(missing):
    # both used to be filled in silently: a random string labelled `kind: phrase`, or the phrase behaviour
    item = {k: v for k, v in spec("a", "alpha").items() if k != missing}
    with pytest.raises(ConfigError, match=rf"x.yaml: backdoors\[0\] \(a\) has no {missing}; give {missing}: "):
        parse_specs({"backdoors": [item]}, "x.yaml")


def test_unknown_set_or_missing_file():
    with pytest.raises(UserError, match="neither a built-in set"):
        load_specs("default9")
    with pytest.raises(UserError, match="does not exist"):
        load_specs("missing.yaml")


@pytest.mark.parametrize("text, kind", [("quid pro quo", "phrase"), ("ζωή και θάνατος", "script"),
                                        ("@@ 7 @@", "tokens"), ("xk7q2", "random_string")])  # fmt: skip
def test_a_candidate_triggers_kind_is_the_one_it_validates_as(text, kind):
    assert trigger_kind_of(text) == kind
    Trigger(kind=kind, text=text).validate()  # declared candidates (`unbackdoor declare`) pass their own check
