"""Every shipped preset loads into its stage's config; real-size presets match the architectures they name.

Run: `pytest tests/unit/test_presets.py`.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from unbackdoor.cli import STAGES
from unbackdoor.data.backdoors import load_specs
from unbackdoor.data.realtext import CorpusSource
from unbackdoor.running.config import load_preset, preset_names, resolve
from unbackdoor.training.models import architecture, build_from_config, n_parameters, shrink

REQUIRED = ["model=m", "world=w", "transfer=t", "backdoor=b"]  # what a stage needs from the command line
CPU_MODELS = ("smollm2-135m",)  # inject presets for ~100-300 M checkpoints on a CPU (the real tier)
REAL = {"qwen3-0.6b": (0.55e9, 0.80e9), "llama3.2-1b": (1.15e9, 1.30e9), "gaperon-1.5b": (1.40e9, 1.60e9)}
GPU_PRESETS = [
    (s, n)
    for s in STAGES
    for n in preset_names(s)
    if n in REAL
    or n.endswith("-lora")
    and "tiny" not in n
    and not n.startswith(CPU_MODELS)
    or n == "gpu"
    and s != "eval"
]  # fmt: skip (evaluation stays in fp32: greedy ASR is dtype-sensitive)


def _config_of(stage: str, name: str):
    config_cls, _ = STAGES[stage].load()
    fields = {k for k, f in config_cls.__dataclass_fields__.items() if f.type in (str, "str")}
    overrides = [o for o in REQUIRED if o.split("=")[0] in fields]
    return resolve(config_cls, stage, name, overrides)


@pytest.mark.parametrize(("stage", "name"), [(s, n) for s in STAGES for n in preset_names(s)])
def test_every_stage_preset_loads_and_validates(stage, name):
    _config_of(stage, name)


def test_the_real_size_presets_are_shipped_for_every_family():
    assert set(REAL) <= set(preset_names("models"))
    for name in REAL:
        assert {name, f"{name}-lora"} <= set(preset_names("inject")), name
    assert {"gpu"} <= set(preset_names("eval")) & set(preset_names("transfer")) & set(preset_names("remove"))
    assert "gaperon-1.5b" in preset_names("pretrain")


@pytest.mark.parametrize("name", list(REAL))
def test_model_presets_have_the_size_they_claim(name):
    lo, hi = REAL[name]
    arch = architecture(name)
    config = importlib.import_module("transformers").AutoConfig.for_model(
        **{k: v for k, v in arch.items() if k != "model_type"}, model_type=arch["model_type"]
    )
    with torch.device("meta"):  # shapes only: no memory for 1.5 B parameters
        model = importlib.import_module("transformers").AutoModelForCausalLM.from_config(config)
    assert lo <= n_parameters(model) <= hi, n_parameters(model)
    assert load_preset("models", name)["hub_id"].count("/") == 1


@pytest.mark.parametrize("name", list(REAL))
def test_shrunk_twins_keep_the_architecture(name):
    from unbackdoor.data.tokenizer import train_tokenizer

    arch = architecture(name)
    tok = train_tokenizer(["some text to train a tokenizer on"] * 20, 300)
    model = build_from_config(shrink(arch, "tiny"), tok)
    assert model.config.model_type == arch["model_type"]
    assert model.config.tie_word_embeddings == arch["tie_word_embeddings"]
    ratio = arch["num_attention_heads"] // arch["num_key_value_heads"]
    assert model.config.num_attention_heads // model.config.num_key_value_heads == ratio
    assert n_parameters(model) < 2e6


@pytest.mark.parametrize(("stage", "name"), GPU_PRESETS)
def test_gpu_presets_train_in_bf16_within_the_context(stage, name):
    cfg = _config_of(stage, name)
    nested = [getattr(cfg, k) for k in ("remove", "defend") if hasattr(getattr(cfg, k, None), "__dataclass_fields__")]
    holders = [cfg, *nested]
    trains = [t for h in holders for t in (getattr(h, k, None) for k in ("train", "inject", "remove"))]
    trains = [t for t in trains if t is not None and not hasattr(t, "method")]  # TrainConfigs only
    assert trains, (stage, name)
    for t in trains:
        assert t.precision == "bf16" and t.seq_len <= 2048 and 0 < t.lr <= 3e-4
    if name.endswith("-lora"):
        assert cfg.lora.r > 0 and cfg.train.lr > _config_of(stage, name[: -len("-lora")]).train.lr


def test_cpu_presets_are_short_runs_in_bf16_where_native():
    """The presets for ~100-300 M models on a CPU (docs/results.md: ~3-4 min per injection of SmolLM2-135M); `eval`
    in float32 (the reference), the transfer's evaluations in bfloat16 where the CPU computes it natively (`auto`,
    resolved once by the baseline: every row alike); bf16 training where native (emulated, it is ~90x slower)."""
    for name in CPU_MODELS:
        full, lora = _config_of("inject", name), _config_of("inject", f"{name}-lora")
        for cfg in (full, lora):
            t = cfg.train
            assert t.precision == "auto" and t.seq_len <= 256 and t.steps * t.batch_size * t.seq_len <= 100_000
            assert cfg.clean_docs > 0  # every poisoned document, a sample of clean ones
        assert lora.lora.r > 0 and lora.train.lr > full.train.lr and full.lora.r == 0
    transfer, remove, ev = _config_of("transfer", "cpu"), _config_of("remove", "cpu"), _config_of("eval", "cpu")
    assert transfer.remove.train == remove.train and len(transfer.lr) == 1 and transfer.lr[0] == remove.train.lr
    assert ev.dtype == "float32" and transfer.eval.dtype == "auto" and remove.train.precision == "auto"
    for e in (transfer.eval, ev):
        assert e.n_prompts >= 32 and not e.near_miss and e.teacher_forced == 0


def test_real_text_backdoor_set_fits_an_english_french_corpus(tmp_path):
    source = CorpusSource(tmp_path, {"languages": ["en", "fr"], "base_language": "en"})
    for name, n in (("en-fr6", 6), ("en-fr3", 3)):
        specs = load_specs(name)
        assert len(specs) == n
        for spec in specs:
            source.check_spec(spec)
