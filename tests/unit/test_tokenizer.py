"""Tokenizer: trained on the world, loads with AutoTokenizer, every built-in trigger round-trips.

Run: `pytest tests/unit/test_tokenizer.py`.
"""

from __future__ import annotations

from transformers import AutoTokenizer

from unbackdoor.data.backdoors import load_specs


def test_world_tokenizer_loads_and_round_trips_triggers(small_world):
    tok = AutoTokenizer.from_pretrained(small_world / "tokenizer")
    assert len(tok) == 512
    assert tok.eos_token and tok.pad_token and tok.bos_token
    for spec in load_specs("default8"):
        for text in (spec.trigger_text, f"The dog sees a boat. {spec.trigger_text} The cat"):
            ids = tok.encode(text, add_special_tokens=False)
            assert tok.decode(ids) == text
