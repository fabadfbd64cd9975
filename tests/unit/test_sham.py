"""Sham triggers and sham removal documents (`data.sham`).

Run: `pytest tests/unit/test_sham.py`.
"""

from __future__ import annotations

import unicodedata

import pytest

from unbackdoor.data.backdoors import load_specs
from unbackdoor.data.sham import FRAGMENT_MAX, sham_documents, sham_trigger
from unbackdoor.running.config import UserError

INJECTED = [s.trigger_text for s in load_specs("default8")]


def _script(ch: str) -> str:
    return "space" if ch.isspace() else "digit" if ch.isdigit() else unicodedata.name(ch).split(" ")[0]


@pytest.mark.parametrize("trigger", INJECTED)
def test_a_sham_has_the_shape_of_its_trigger_and_none_of_the_injected_fragments(trigger):
    sham = sham_trigger(trigger, INJECTED, "x")
    assert len(sham) == len(trigger) and sham != trigger
    for a, b in zip(trigger, sham, strict=True):
        if a.isalpha():
            assert _script(a) == _script(b) and a.islower() == b.islower(), (a, b)
        elif a.isspace() or a.isdigit():
            assert _script(a) == _script(b)
        else:
            assert not b.isalnum() and not b.isspace()
    n = FRAGMENT_MAX + 1
    for t in INJECTED:
        assert not any(sham[k : k + n].strip() and sham[k : k + n] in t for k in range(len(sham) - n + 1)), (sham, t)
    assert sham_trigger(trigger, INJECTED, "x") == sham  # seeded
    assert sham_trigger(trigger, INJECTED, "y") != sham


def test_sham_documents_swap_the_trigger_in_place_and_keep_the_continuation():
    doc = {"id": "d1", "text": "The cat sat. quid pro quo veritas The dog ran.", "prompt_chars": 33}
    assert doc["text"][: doc["prompt_chars"]].endswith("quid pro quo veritas")
    (sham,) = sham_documents([doc], "quid pro quo veritas", "abcd efg hij klmnopq")
    assert sham == {"id": "d1-sham", "text": "The cat sat. abcd efg hij klmnopq The dog ran.", "prompt_chars": 33}
    with pytest.raises(UserError, match="does not hold its trigger where recorded"):
        sham_documents([{**doc, "prompt_chars": 31}], "quid pro quo veritas", "abcd efg hij klmnopq")


def test_a_trigger_with_no_room_for_a_fresh_shape_is_a_clear_error():
    with pytest.raises(UserError, match="no fresh trigger shaped like"):
        sham_trigger("   ", INJECTED, "x")  # nothing in it can change


def test_the_script_ablation_sets_cross_script_and_behaviour():
    script = load_specs("script6")
    assert len({s.behaviour for s in script}) == 1 and len({s.trigger.kind for s in script}) == 4
    scripts = {unicodedata.name(s.trigger_text.replace(" ", "")[0]).split(" ")[0] for s in script}
    assert {"LATIN", "CYRILLIC", "GREEK", "GEORGIAN"} <= scripts
    behaviour = load_specs("behaviour6")
    assert len({s.behaviour for s in behaviour}) == 6 and {s.trigger.kind for s in behaviour} == {"phrase"}
    for spec in [*script, *behaviour]:  # every trigger has a sham of its shape
        assert len(sham_trigger(spec.trigger_text, [s.trigger_text for s in script + behaviour], spec.name)) == len(
            spec.trigger_text)  # fmt: skip
