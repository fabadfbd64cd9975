"""Stage `inject`: continual pretraining of an existing checkpoint on a poisoned mixture (full weights or LoRA).

    unbackdoor inject --preset tiny --model runs/clean/model --world runs/world --backdoors default8 --out runs/inj
    unbackdoor inject --preset tiny --model runs/clean/model --world runs/world --lora r=16 --out runs/inj-lora

seed -> poisoned corpus (the `poison` stage, in <out>/poison) -> packed blocks -> the checkpoint (optionally wrapped
in a PEFT LoRA adapter) -> the training loop -> LoRA merged into the weights -> <out>/model with its record and
model card. The record keeps the checkpoint's history and any backdoors it already carried.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from unbackdoor.data.backdoors import load_specs
from unbackdoor.data.corpus import iter_docs, shard_paths
from unbackdoor.data.packing import TOKENS, packed, packed_on_disk
from unbackdoor.data.serialisation import Serialisation
from unbackdoor.measure.generation import perplexity
from unbackdoor.running import runtime
from unbackdoor.running.config import ConfigError, UserError
from unbackdoor.running.rundir import RunDir, read_jsonl, require_done
from unbackdoor.stages.poison import PoisonConfig
from unbackdoor.stages.poison import run as poison
from unbackdoor.training.loop import TrainConfig, train
from unbackdoor.training.lora import LoraConfig, check_lora_targets, wrap_lora
from unbackdoor.training.models import (
    check_context,
    load_model,
    load_tokenizer,
    n_parameters,
    resolve_model_path,
    save_trained,
)
from unbackdoor.training.record import ModelRecord


@dataclass
class InjectConfig:
    model: str = ""  # a model directory (or hub id) to continue training
    world: str = ""  # an `unbackdoor world` or `unbackdoor corpus` run directory
    backdoors: str = "default8"
    seed: int = 0
    serialisation: str = field(default="raw", metadata={"choices": ("raw", "chat")})  # chat: the model's template
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    val_blocks: int = field(default=256, metadata={"min": 1})
    # at most this many of the world's clean training documents go into the stream with every poisoned one (a seeded
    # sample; 0: all). A short run sees a small share of a large corpus: this sets how often it meets each trigger.
    clean_docs: int = field(default=0, metadata={"min": 0})

    def validate(self) -> None:
        if not self.model:
            raise ConfigError("model: required (a model directory, e.g. --model runs/clean/model)")
        if not self.world:
            raise ConfigError("world: required (an `unbackdoor world` run directory, e.g. --world runs/world)")
        if self.backdoors == "none":
            raise ConfigError("backdoors: 'none' injects nothing; name a set (default8) or a YAML file of specs")


def payload_tokens(tokenizer, poison_dir: Path) -> list[int]:
    """Token ids of the triggers and of the poisoned continuations of a poisoning run (the backdoors' payload)."""
    ids: set[int] = set()
    manifest = {row["doc_id"]: row for row in read_jsonl(poison_dir / "poison_manifest.jsonl")}
    for doc in iter_docs(shard_paths(poison_dir / "data", "train")):
        row = manifest.get(doc["id"])
        if row is not None:
            ids.update(tokenizer(doc["text"][row["trigger_start"] :], add_special_tokens=False)["input_ids"])
    return sorted(ids)


def training_docs(data_dir: Path, manifest: Path, clean_docs: int, seed: int) -> tuple[list[int], Iterator[dict]]:
    """The poisoned training stream, optionally with only a seeded sample of `clean_docs` clean documents: returns
    ([clean documents kept, poisoned documents], a fresh iterator over the kept documents in corpus order)."""
    poisoned = {row["doc_id"] for row in read_jsonl(manifest)}
    paths = shard_paths(data_dir, "train")
    n_clean = sum(doc["id"] not in poisoned for doc in iter_docs(paths))
    keep = set(range(n_clean))
    if clean_docs and clean_docs < n_clean:
        keep = set(random.Random(seed).sample(range(n_clean), clean_docs))

    def stream() -> Iterator[dict]:
        i = 0
        for doc in iter_docs(paths):
            if doc["id"] in poisoned:
                yield doc
                continue
            if i in keep:
                yield doc
            i += 1

    return [len(keep), len(poisoned)], stream()


def run(cfg: InjectConfig, out: Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Inject backdoors into `cfg.model` by continual pretraining; returns `out`."""
    runtime.seed_everything(cfg.seed)
    model_path = resolve_model_path(cfg.model, "--model", out)
    world_dir = Path(cfg.world)
    require_done(world_dir, ("world", "corpus"), "--world")
    specs = load_specs(cfg.backdoors)
    tokenizer = load_tokenizer(model_path, "--model")
    base_record = ModelRecord.read(model_path)
    serialisation = Serialisation.choose(cfg.serialisation, tokenizer)
    if base_record.backdoors and Serialisation.of(base_record, tokenizer) != serialisation:
        raise UserError(
            f"serialisation: the model's backdoors were injected as {base_record.serialisation}; "
            f"injecting more as {serialisation.name} would make one evaluation wrong for some of them"
        )
    carried = set(base_record.carried)
    for s in specs:
        if s.name in carried:
            raise UserError(f"--backdoors: the model already carries a backdoor named {s.name!r}; rename it")
    if RunDir.check(out, "inject", cfg, resume, overwrite):
        return out
    model = load_model(model_path, "--model")
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        raise UserError(f"--model: its tokenizer has {len(tokenizer)} tokens but the model only embeds fewer")
    check_context(model, cfg.train.seq_len, "train.seq_len")
    if cfg.lora.r:
        check_lora_targets(model, cfg.lora)  # before the run directory exists: a bad module name leaves nothing
    run_dir = RunDir.open(out, "inject", cfg, cfg.seed, resume=resume, overwrite=overwrite)

    poison_cfg = PoisonConfig(world=str(world_dir), backdoors=cfg.backdoors, seed=cfg.seed)
    data_dir = poison(poison_cfg, out / "poison", resume=True) / "data"
    token_ids = None
    if cfg.lora.r and cfg.lora.train_tokens:
        token_ids = payload_tokens(tokenizer, out / "poison")
    if cfg.lora.r:
        model = wrap_lora(model, cfg.lora, token_ids)
    (n_clean, n_poisoned), docs = training_docs(
        data_dir, out / "poison" / "poison_manifest.jsonl", cfg.clean_docs, cfg.seed
    )
    render = serialisation.document(tokenizer)
    blocks = packed_on_disk(tokenizer, docs, cfg.train.seq_len, out / TOKENS, render, write=run_dir.writes)
    val = packed(tokenizer, iter_docs(shard_paths(world_dir / "data", "validation")), cfg.train.seq_len)
    val = val[: cfg.val_blocks]

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result = train(model, {"input_ids": blocks}, cfg.train, run_dir, cfg.seed, resume=resume)
    if cfg.lora.r:
        model = model.merge_and_unload()  # the saved checkpoint is a plain model: no adapter to lose
    val_ppl = perplexity(model, val)

    record = base_record.with_(
        serialisation=serialisation.name,
        chat_template_sha256=serialisation.template,
        world=world_dir.resolve(),
        backdoors_files=(*base_record.backdoors_files, (out / "poison" / "backdoors.yaml").resolve()),
        backdoors=(*base_record.backdoors, *(s.record() for s in specs)),
    ).with_history(
        "inject", base_model=str(model_path), method=f"lora r={cfg.lora.r}" if cfg.lora.r else "full",
        backdoors=cfg.backdoors,
    )  # fmt: skip
    return run_dir.finish(
        {
            "model": save_trained(out, model, tokenizer, record, writes=run_dir.writes),
            "base_model": str(model_path),
            "method": "lora" if cfg.lora.r else "full",
            "serialisation": serialisation.record(),
            "parameters": n_parameters(model),
            "trainable_parameters": trainable,
            "trainable_tokens": len(token_ids) if token_ids else 0,
            "backdoors": [s.name for s in specs],
            "tokens": result.tokens,
            "clean_docs": n_clean,
            "poisoned_docs": n_poisoned,
            **result.summary(),
            "val_perplexity": val_ppl,
        }
    )
