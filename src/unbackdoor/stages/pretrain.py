"""Stage `pretrain`: train a model from scratch on a world with backdoors mixed in (pretraining injection).

    unbackdoor pretrain --preset tiny --world runs/world --backdoors default8 --out runs/pretrain
    unbackdoor pretrain --preset tiny --world runs/world --backdoors none --out runs/clean   # the clean twin

seed -> poisoned corpus (the `poison` stage, materialised once in <out>/poison) -> packed blocks -> model from a
config (family x size) -> the training loop -> validation perplexity -> <out>/model (safetensors, tokenizer,
unbackdoor.json, model card). `--resume` continues from the last checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoTokenizer

from unbackdoor.data.backdoors import load_specs
from unbackdoor.data.corpus import iter_docs, shard_paths
from unbackdoor.data.packing import TOKENS, packed, packed_on_disk
from unbackdoor.measure.generation import perplexity
from unbackdoor.running import runtime
from unbackdoor.running.config import ConfigError, UserError
from unbackdoor.running.rundir import RunDir, require_done
from unbackdoor.stages.poison import PoisonConfig
from unbackdoor.stages.poison import run as poison
from unbackdoor.training.loop import TrainConfig, train
from unbackdoor.training.models import (
    FAMILIES,
    SIZES,
    architecture,
    build_from_config,
    build_model,
    check_context,
    n_parameters,
    save_trained,
    shrink,
)
from unbackdoor.training.record import ModelRecord


@dataclass
class ModelConfig:
    family: str = field(default="llama", metadata={"choices": FAMILIES})
    size: str = field(default="tiny", metadata={"choices": SIZES})
    # or an architecture: a model preset (qwen3-0.6b, llama3.2-1b, gaperon-1.5b) or a config.json path, at its
    # own size, or shrunk to a built-in size (`shrink_to=tiny`: the architecture's toy twin, for CPU runs)
    config: str = ""
    shrink_to: str = field(default="", metadata={"choices": ("", *SIZES)})

    def validate(self) -> None:
        if self.shrink_to and not self.config:
            raise ConfigError(f"model.shrink_to: {self.shrink_to!r} shrinks an architecture; give model.config too")


@dataclass
class PretrainConfig:
    world: str = ""  # an `unbackdoor world` or `unbackdoor corpus` run directory
    backdoors: str = "default8"  # built-in set, YAML file of specs, or "none" (the clean twin)
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    val_blocks: int = field(default=256, metadata={"min": 1})  # validation blocks for the final perplexity

    def validate(self) -> None:
        if not self.world:
            raise ConfigError("world: required (an `unbackdoor world` run directory, e.g. --world runs/world)")


def run(cfg: PretrainConfig, out: Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Pretrain a (backdoored) model into `out`; returns `out`."""
    runtime.seed_everything(cfg.seed)  # model initialisation draws from it
    world_dir = Path(cfg.world)
    require_done(world_dir, ("world", "corpus"), "--world")
    if not (world_dir / "tokenizer").is_dir():
        raise UserError(
            f"--world: {str(world_dir)!r} has no tokenizer to pretrain with; ingest the corpus with vocab_size > 0"
        )
    specs = load_specs(cfg.backdoors)
    if cfg.model.config:
        architecture(cfg.model.config)  # a bad name is an error before anything is written
    if RunDir.check(out, "pretrain", cfg, resume, overwrite):
        return out
    # The model first (initialised from the seeded RNG): a context too short for train.seq_len is an error before
    # the run directory exists.
    tokenizer = AutoTokenizer.from_pretrained(world_dir / "tokenizer")
    if cfg.model.config:
        arch = architecture(cfg.model.config)
        model = build_from_config(shrink(arch, cfg.model.shrink_to) if cfg.model.shrink_to else arch, tokenizer)
    else:
        model = build_model(cfg.model.family, cfg.model.size, tokenizer)
    check_context(model, cfg.train.seq_len, "train.seq_len")
    run_dir = RunDir.open(out, "pretrain", cfg, cfg.seed, resume=resume, overwrite=overwrite)

    # Data: the poisoned corpus is materialised once (its own run directory) and reused on resume.
    if specs:
        poison_cfg = PoisonConfig(world=str(world_dir), backdoors=cfg.backdoors, seed=cfg.seed)
        data_dir = poison(poison_cfg, out / "poison", resume=True) / "data"
    else:
        data_dir = world_dir / "data"
    docs = iter_docs(shard_paths(data_dir, "train"))
    blocks = packed_on_disk(tokenizer, docs, cfg.train.seq_len, out / TOKENS, write=run_dir.writes)
    val = packed(tokenizer, iter_docs(shard_paths(world_dir / "data", "validation")), cfg.train.seq_len)
    val = val[: cfg.val_blocks]

    result = train(model, {"input_ids": blocks}, cfg.train, run_dir, cfg.seed, resume=resume)
    val_ppl = perplexity(model, val)

    size = cfg.model.size if not cfg.model.config else (cfg.model.shrink_to or "full")
    record = ModelRecord(
        world=world_dir.resolve(),
        backdoors_files=((out / "poison" / "backdoors.yaml").resolve(),) if specs else (),
        backdoors=tuple(s.record() for s in specs),
    ).with_history(
        "pretrain", family=model.config.model_type, size=size, architecture=cfg.model.config or None,
        backdoors=cfg.backdoors,
    )  # fmt: skip
    return run_dir.finish(
        {
            "model": save_trained(out, model, tokenizer, record, writes=run_dir.writes),
            "family": model.config.model_type,
            "size": size,
            "architecture": cfg.model.config or None,
            "parameters": n_parameters(model),
            "backdoors": [s.name for s in specs],
            "train_blocks": blocks.shape[0],
            "tokens": result.tokens,
            **result.summary(),
            "val_perplexity": val_ppl,
        }
    )
