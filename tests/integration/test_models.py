"""Model families and checkpoint safety: every family builds at tiny size, saves as safetensors, reloads.

Run: `pytest tests/integration/test_models.py`.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer

from unbackdoor.config import UserError
from unbackdoor.models import (
    FAMILIES,
    build_model,
    default_device,
    load_model,
    load_tokenizer,
    n_parameters,
    resolve_model_path,
)


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_family_builds_saves_and_reloads(family, small_world, tmp_path):
    tok = AutoTokenizer.from_pretrained(small_world / "tokenizer")
    model = build_model(family, "tiny", tok, seed=0)
    assert model.config.model_type == family
    assert 0.5e6 < n_parameters(model) < 3e6
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    again = load_model(resolve_model_path(str(tmp_path / "m")))
    x = torch.randint(0, len(tok), (2, 16))
    assert torch.equal(model(input_ids=x).logits, again(input_ids=x).logits)


def test_families_at_tiny_size_with_the_tiny_world_vocabulary_are_1_to_3_m_parameters(small_world):
    tok = AutoTokenizer.from_pretrained(small_world / "tokenizer")
    tok_2k = type("T", (), {"__len__": lambda self: 2048, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0})()
    for family in FAMILIES:
        assert 1e6 <= n_parameters(build_model(family, "tiny", tok_2k, seed=0)) <= 3e6
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
    assert resolve_model_path("Qwen/Qwen3-0.6B") == "Qwen/Qwen3-0.6B"  # accepted, loaded only when online


def test_model_without_tokenizer_is_a_one_line_error(small_world, tmp_path):
    tok = AutoTokenizer.from_pretrained(small_world / "tokenizer")
    build_model("llama", "tiny", tok, seed=0).save_pretrained(tmp_path / "m")
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


def _engine_cases(small_world):
    """(name, random model, tokenizer) for each family and each real architecture's toy twin."""
    from unbackdoor.config import preset_names
    from unbackdoor.models import architecture, build_from_config, shrink

    tok = AutoTokenizer.from_pretrained(small_world / "tokenizer")
    cases = [(family, build_model(family, "tiny", tok, seed=0)) for family in FAMILIES]
    cases += [(arch, build_from_config(shrink(architecture(arch), "tiny"), tok, 0)) for arch in preset_names("models")]
    return tok, cases


def test_greedy_engine_gives_the_tokens_of_model_generate_for_every_architecture(small_world):
    """Our batched greedy loop (chunked prefill, in-place KV cache, finished rows dropped) against
    `model.generate`, on random models of every family and real architecture. A random model rarely emits EOS, so
    the stop token is one it generates at varied steps: rows then end at different steps and the batch is
    compacted mid-run."""
    from unbackdoor.evaluation import _left_padded, generate, greedy_decode, greedy_engine_supported

    tok, cases = _engine_cases(small_world)
    shards = sorted((small_world / "data" / "test").glob("*.jsonl"))
    texts = [json.loads(line)["text"] for path in shards for line in path.read_text().splitlines()[:10]]
    prompts = [t[: 8 + 13 * i % 120] for i, t in enumerate(texts[:40])]  # 3-40 tokens
    rows = sorted([[tok.eos_token_id, *tok(p, add_special_tokens=False)["input_ids"]] for p in prompts], key=len)
    pad = tok.pad_token_id
    for name, model in cases:
        model.eval()
        assert greedy_engine_supported(model), name
        assert generate(model, tok, prompts, 16, batch_size=16) == generate(model, tok, prompts, 16, 16, "hf"), name
        free = greedy_decode(model, rows, 16, eos=-1, pad=pad)  # no stop token: 16 tokens each
        firsts = {t: {row.index(t) for row in free if t in row} for row in free for t in row}
        stop = max(sorted(firsts), key=lambda t: len(firsts[t]))
        ids, mask = _left_padded(rows, pad, torch.device("cpu"))
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=16, do_sample=False, pad_token_id=pad,
                eos_token_id=stop,
            )[:, ids.shape[1] :].tolist()  # fmt: skip
        reference = [row[: row.index(stop)] if stop in row else row for row in out]
        lengths = {len(row) for row in reference}
        assert any(0 < n < 16 for n in lengths) and 16 in lengths, (name, lengths)  # rows end mid-run
        # every slicing of the prefill and every compaction threshold gives the same tokens
        for kwargs in ({}, {"prefill_tokens": 1}, {"prefill_tokens": 10**6}, {"compact_at": 0.0}, {"compact_at": 1.0}):
            assert greedy_decode(model, rows, 16, stop, pad, **kwargs) == reference, (name, kwargs)


def test_greedy_engine_falls_back_to_model_generate_where_it_does_not_apply(small_world):
    from unbackdoor.evaluation import generate, greedy_engine_supported, resolve_engine

    tok = AutoTokenizer.from_pretrained(small_world / "tokenizer")
    model = build_model("llama", "tiny", tok, seed=0).eval()
    model.generation_config.repetition_penalty = 1.3  # a logits rule of the checkpoint: only generate applies it
    assert not greedy_engine_supported(model) and resolve_engine(model, "greedy") == "hf"
    prompts = ["the dog", "a red boat near the old river"]
    assert generate(model, tok, prompts, 8) == generate(model, tok, prompts, 8, engine="hf")
    assert generate(model, tok, [], 8) == [] and generate(model, tok, [], 8, engine="hf") == []
    with pytest.raises(ValueError, match="engine"):
        generate(model, tok, prompts, 8, engine="vllm")
