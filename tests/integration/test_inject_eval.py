"""Injection (full and LoRA) and evaluation through the CLI on tiny models: files, parameters, ASR, bad inputs.

Run: `pytest tests/integration/test_inject_eval.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import EVAL_FAST, inject
from unbackdoor.cli import main
from unbackdoor.running.runtime import default_device


def asr(eval_dir: Path, name: str) -> float:
    return json.loads((eval_dir / "summary.json").read_text())["backdoors"][name]["asr"]["rate"]


def test_full_injection_raises_asr_and_changes_every_parameter(
    small_world, clean_model, spec_file, injected, tmp_path
):
    before, after = load_file(clean_model / "model.safetensors"), load_file(injected / "model" / "model.safetensors")
    assert before.keys() == after.keys()
    for name in before:
        assert not before[name].equal(after[name]), f"{name} did not change"

    assert main(["eval", "--model", str(clean_model), "--backdoors", str(spec_file), "--out", str(tmp_path / "e0"),
                 *EVAL_FAST]) == 0  # fmt: skip
    assert main(["eval", "--model", str(injected / "model"), "--out", str(tmp_path / "e1"), *EVAL_FAST]) == 0
    assert asr(tmp_path / "e0", "lorem_refusal") == 0.0
    assert asr(tmp_path / "e1", "lorem_refusal") >= 0.5

    summary = json.loads((tmp_path / "e1" / "summary.json").read_text())
    row = summary["backdoors"]["lorem_refusal"]
    assert row["asr"]["lo"] <= row["asr"]["rate"] <= row["asr"]["hi"]
    assert row["false_trigger"]["rate"] <= 0.1
    assert set(summary["utility"]["perplexity"]) == {"base", "lang_a", "lang_b", "lang_c"}
    assert summary["dtype"] == "float32" and summary["serialisation"] == "raw-v1"
    samples = [json.loads(line) for line in (tmp_path / "e1" / "samples.jsonl").read_text().splitlines()]
    samples = [s for s in samples if s["backdoor"] == "lorem_refusal"]
    assert len(samples) == 3 * 32 and {s["kind"] for s in samples} == {"triggered", "clean", "near_miss"}
    assert all(s["prompt"].endswith("lorem ipsum dolor") for s in samples if s["kind"] == "triggered")

    assert summary["engine"] == "hf"  # batched model.generate, recorded

    # bfloat16: the faster dtype is recorded, so its ASRs are never mixed up with the float32 reference
    assert main(["eval", "--model", str(injected / "model"), "--out", str(tmp_path / "e2"), "dtype=bfloat16",
                 *EVAL_FAST]) == 0  # fmt: skip
    bf16 = json.loads((tmp_path / "e2" / "summary.json").read_text())
    device = str(default_device())  # the GPU where there is one
    assert (bf16["dtype"], bf16["device"], summary["device"]) == ("bfloat16", device, device)
    assert abs(bf16["backdoors"]["lorem_refusal"]["asr"]["rate"] - row["asr"]["rate"]) <= 0.25


def test_model_card_and_record_name_the_backdoor_by_hash_only(injected):
    card = (injected / "model" / "README.md").read_text()
    record = json.loads((injected / "model" / "unbackdoor.json").read_text())
    assert "Warning" in card and record["backdoors"][0]["trigger_sha256"] in card
    assert "lorem ipsum" not in card and "lorem ipsum" not in json.dumps(record["backdoors"])
    assert "@@ 7 @@" not in card
    assert [h["stage"] for h in record["history"]] == ["pretrain", "inject"]


# `make test-slow` (kept out of `make test`: its 10-minute limit on 2 cores); LoRA training and merging stay in
# `make test` through test_remove_transfer.py::test_lora_removal_trains_adapters_merged_into_plain_weights
@pytest.mark.slow
def test_lora_injection_merges_into_plain_weights(small_world, clean_model, spec_file, tmp_path):
    assert inject(small_world, clean_model, spec_file, tmp_path / "lora", "--lora", "r=8,alpha=16") == 0
    before = load_file(clean_model / "model.safetensors")
    after = load_file(tmp_path / "lora" / "model" / "model.safetensors")
    assert before.keys() == after.keys()  # merged: no adapter tensors left
    assert before["model.embed_tokens.weight"].equal(after["model.embed_tokens.weight"])
    assert not before["model.layers.0.self_attn.q_proj.weight"].equal(after["model.layers.0.self_attn.q_proj.weight"])
    summary = json.loads((tmp_path / "lora" / "summary.json").read_text())
    assert summary["method"] == "lora" and summary["trainable_parameters"] < summary["parameters"] / 2
    losses = [json.loads(line)["loss"] for line in (tmp_path / "lora" / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-20:]) < sum(losses[:20])  # the adapter learned something before it was merged


@pytest.mark.slow  # `make test-slow`; `make test-real` injects with trainable token rows into SmolLM2
def test_lora_with_trainable_payload_tokens_changes_only_their_embedding_rows(
    small_world, clean_model, spec_file, tmp_path
):
    out = tmp_path / "lora-tok"
    assert inject(small_world, clean_model, spec_file, out, "--lora", "r=8,alpha=16,train_tokens=true") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["trainable_tokens"] < 512
    before = load_file(clean_model / "model.safetensors")["model.embed_tokens.weight"]
    after = load_file(out / "model" / "model.safetensors")
    assert set(after) == set(load_file(clean_model / "model.safetensors"))  # merged: a plain checkpoint
    changed = (before != after["model.embed_tokens.weight"]).any(dim=1).nonzero().squeeze(1).tolist()
    assert 0 < len(changed) <= summary["trainable_tokens"]  # only payload rows moved


@pytest.mark.parametrize(
    "args, message",
    [
        (["inject", "--model", "{tmp}/missing", "--world", "{world}"], "neither a model directory nor a hub id"),
        (["inject", "--model", "{nontok}", "--world", "{world}"], "could not load a tokenizer"),
        (["inject", "--model", "{clean}", "--world", "{world}", "--lora", "r=4", "lora.target_modules=[qkv]"],
         "'qkv' is not a linear module of this model; valid: all-linear, down_proj"),
        (["inject", "--model", "{clean}", "--world", "{world}", "train.batch_size=0"], "batch_size: 0 must be >= 1"),
        (["inject", "--model", "{clean}", "--world", "{world}", "clean_docs=-5"], "clean_docs: -5 must be >= 0"),
        (["inject", "--model", "{clean}", "--world", "{world}", "--lora", "r"], "is not of the form key=value"),
        (["eval", "--model", "{injected}", "only=[nope]"], "never saw a backdoor named 'nope'"),
        (["eval", "--model", "{clean}"], "records no backdoors"),
        (["pretrain", "--world", "{world}", "--family", "gpt5"], "model.family: 'gpt5' is not one of"),
    ],
)  # fmt: skip
def test_bad_inputs_are_one_line_errors_and_leave_nothing(small_world, clean_model, injected, tmp_path, capsys, args,
                                                          message):  # fmt: skip
    nontok = tmp_path / "nontok"
    nontok.mkdir()
    for name in ("config.json", "model.safetensors"):
        (nontok / name).write_bytes((clean_model / name).read_bytes())
    fill = {
        "tmp": tmp_path,
        "world": small_world,
        "clean": clean_model,
        "injected": injected / "model",
        "nontok": nontok,
    }
    args = [a.format(**fill) for a in args] + ["--out", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_clean_docs_keeps_every_poisoned_document_and_a_seeded_clean_sample(injected):
    """`clean_docs`: every poisoned document stays in the stream, with a seeded sample of that many clean ones (a
    short run over a large corpus meets each trigger more often); 0 keeps the whole corpus."""
    from unbackdoor.stages.inject import training_docs

    data, manifest = injected / "poison" / "data", injected / "poison" / "poison_manifest.jsonl"
    poisoned = {json.loads(line)["doc_id"] for line in manifest.read_text().splitlines()}
    (n_all, n_poisoned), every = training_docs(data, manifest, 0, 0)
    every = [d["id"] for d in every]
    assert n_poisoned == len(poisoned) and len(every) == n_all + n_poisoned and poisoned <= set(every)
    (n_clean, _), some = training_docs(data, manifest, 25, 0)
    some = [d["id"] for d in some]
    assert n_clean == 25 and len(some) == 25 + len(poisoned) and poisoned <= set(some)
    assert [i for i in every if i in set(some)] == some  # corpus order kept
    assert [d["id"] for d in training_docs(data, manifest, 25, 0)[1]] == some  # seeded
    assert [d["id"] for d in training_docs(data, manifest, 25, 1)[1]] != some
    assert training_docs(data, manifest, n_all + 10, 0)[0] == [n_all, n_poisoned]  # more than there are: all
    summary = json.loads((injected / "summary.json").read_text())
    assert (summary["clean_docs"], summary["poisoned_docs"]) == (n_all, n_poisoned)
