"""Model families and checkpoint safety: every family builds at tiny size, saves as safetensors, reloads.

Run: `pytest tests/integration/test_models.py`.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer

from unbackdoor.running.config import UserError
from unbackdoor.running.runtime import default_device
from unbackdoor.training.models import (
    FAMILIES,
    build_model,
    load_model,
    load_tokenizer,
    n_parameters,
    resolve_model_path,
)


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_family_builds_saves_and_reloads(family, small_world, tmp_path):
    tok = AutoTokenizer.from_pretrained(small_world / "tokenizer")
    model = build_model(family, "tiny", tok)
    assert model.config.model_type == family
    assert 0.5e6 < n_parameters(model) < 3e6
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    again = load_model(resolve_model_path(str(tmp_path / "m")))
    x = torch.randint(0, len(tok), (2, 16), device=again.device)  # load_model puts it on the stage's device
    assert torch.equal(model.to(again.device)(input_ids=x).logits, again(input_ids=x).logits)


def test_families_at_tiny_size_with_the_tiny_world_vocabulary_are_1_to_3_m_parameters(small_world):
    tok = AutoTokenizer.from_pretrained(small_world / "tokenizer")
    tok_2k = type("T", (), {"__len__": lambda self: 2048, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0})()
    for family in FAMILIES:
        assert 1e6 <= n_parameters(build_model(family, "tiny", tok_2k)) <= 3e6
    assert len(tok) == 512


def test_pickled_weights_and_non_models_are_refused(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(UserError, match="no .safetensors weights"):
        resolve_model_path(str(tmp_path / "bin"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="without config.json"):
        resolve_model_path(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="neither a model directory nor a hub id"):
        resolve_model_path(str(tmp_path / "nowhere" / "x"))
    # (a hub id is accepted when the hub answers: tests/unit/test_paths.py, with a local port standing in for it)


def test_model_without_tokenizer_is_a_one_line_error(small_world, tmp_path):
    tok = AutoTokenizer.from_pretrained(small_world / "tokenizer")
    build_model("llama", "tiny", tok).save_pretrained(tmp_path / "m")
    with pytest.raises(UserError, match="could not load a tokenizer") as err:
        load_tokenizer(str(tmp_path / "m"))
    assert "\n" not in str(err.value)


def test_stages_compute_on_this_process_gpu_when_there_is_one(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert default_device() == torch.device("cpu") or torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == torch.device("cuda", 0)  # a --workers cell sees only its own GPU
    monkeypatch.setenv("LOCAL_RANK", "3")  # accelerate launch / torchrun: one GPU per process
    assert default_device() == torch.device("cuda", 3)


def test_generation_is_batched_model_generate_in_prompt_order(small_world):
    """Prompts of very different lengths decoded together (sorted by length, left-padded) give each prompt's own
    continuation, as decoding it alone does; an unknown engine is refused."""
    from unbackdoor.measure.generation import generate

    tok = AutoTokenizer.from_pretrained(small_world / "tokenizer")
    model = build_model("llama", "tiny", tok).eval()
    prompts = ["the dog", "a red boat near the old river and the tall trees by the water", "one"]
    batched = generate(model, tok, prompts, 8, batch_size=2)
    assert batched == [generate(model, tok, [p], 8)[0] for p in prompts]
    assert generate(model, tok, [], 8) == []
    with pytest.raises(ValueError, match="engine"):
        generate(model, tok, prompts, 8, engine="vllm")


def test_bad_gguf_files_are_one_line_errors(tmp_path):
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\x00" * 12 + b"not a gguf file at all")
    with pytest.raises(UserError, match=r"'.*junk.gguf' is not a readable GGUF file"):
        resolve_model_path(str(tmp_path / "junk.gguf"), "--model", tmp_path / "out")
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.gguf", "b.gguf"):
        (two / name).write_bytes(b"")
    with pytest.raises(UserError, match="holds 2 .gguf files"):
        resolve_model_path(str(two), "--model", tmp_path / "out")
    with pytest.raises(UserError, match="is a GGUF file; this stage takes a model folder"):
        resolve_model_path(str(tmp_path / "junk.gguf"), "--model")
    assert not (tmp_path / "out").exists()
