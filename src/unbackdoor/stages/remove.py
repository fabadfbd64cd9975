"""Stage `remove`: unlearn one backdoor of a model, or run the benign control at the same compute.

    unbackdoor remove --model runs/pt/model --backdoor latin_lang_a --out runs/rm-a          # the paper's method
    unbackdoor remove --model runs/pt/model --backdoor latin_lang_a --method npo --out runs/rm-a-npo
    unbackdoor remove --model runs/pt/model --method control --out runs/rm-control          # benign control
    unbackdoor remove --model runs/pt/model --method sham --out runs/rm-sham                # sham removal

seed -> data (removal documents from the poisoning step: trigger + clean continuation, mixed with clean replay at
`forget_fraction`; for ga/npo the poisoned documents, loss on their continuation only) -> the backdoored model ->
the training loop (a loss function per method) -> <out>/model with its record and model card. Every method sees
exactly `train.steps x train.batch_size` rows of `train.seq_len` tokens: the control is compute-matched.
`sham` is the retrain recipe on removal documents whose trigger is swapped for a fresh one of the same kind and
length that was never injected (`data.sham`): `backdoor`'s documents, or with no backdoor those of every backdoor
the model carries, each with its own sham trigger.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from unbackdoor.data.backdoors import load_specs
from unbackdoor.data.corpus import iter_docs, load_source, shard_paths
from unbackdoor.data.packing import packed
from unbackdoor.data.poison import is_clean_removal
from unbackdoor.data.serialisation import Serialisation
from unbackdoor.data.sham import sham_documents, sham_trigger
from unbackdoor.measure.generation import perplexity
from unbackdoor.running import runtime
from unbackdoor.running.config import ConfigError, UserError
from unbackdoor.running.rundir import RunDir, read_json, read_jsonl, require_done
from unbackdoor.training.loop import TrainConfig, train
from unbackdoor.training.lora import LoraConfig, check_lora_targets, wrap_lora
from unbackdoor.training.models import check_context, load_model, load_tokenizer, resolve_model_path, save_trained
from unbackdoor.training.record import ModelRecord
from unbackdoor.training.removal import (
    poison_dir_of,
    poisoned_documents,
    removal_data,
    replay_docs,
    require_poisoned,
)
from unbackdoor.training.unlearn import METHODS, REFERENCES


@dataclass
class RemoveConfig:
    model: str = ""  # a backdoored model directory (saved by pretrain / inject); a sweep fills it per cell
    backdoor: str = ""  # the backdoor to remove (the control removes none); a sweep fills it per cell
    method: str = field(default="retrain", metadata={"choices": (*METHODS, *REFERENCES)})
    forget_fraction: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})  # share of forget rows
    retain_weight: float = field(default=1.0, metadata={"min": 0.0})  # ga / npo retain term
    npo_beta: float = field(default=0.1, metadata={"min": 0.0, "min_exclusive": True})
    # retrain only: the loss on the continuation after the trigger alone (prefix and trigger tokens get label -100),
    # one removal document per row; false (the paper's method) trains on every token of packed documents
    mask_trigger: bool = False
    world: str = ""  # the replay corpus; default: the world recorded with the model
    seed: int = 0  # data order and replay sample
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=100, lr=1e-3, warmup_steps=10, checkpoint_every=0)
    )
    val_blocks: int = field(default=256, metadata={"min": 1})
    # LoRA adapters instead of all weights (`lora.r` > 0), merged into the saved model; the control and the sham
    # rows of a sweep train the same adapters, so every row stays compute-matched
    lora: LoraConfig = field(default_factory=LoraConfig)

    def validate(self) -> None:
        if self.lora.train_tokens:
            raise ConfigError("lora.train_tokens: an injection's option (the payload's embedding rows); a removal "
                              "trains the adapters of lora.target_modules only")  # fmt: skip
        if self.train.steps < 1:
            raise ConfigError(f"train.steps: {self.train.steps} must be >= 1 (removal runs a fixed number of steps)")
        if self.mask_trigger and self.method in ("ga", "npo"):
            raise ConfigError(f"mask_trigger: {self.method} already puts the loss on the continuation only")


def clean_removal_docs(record: ModelRecord, backdoor: str, world_dir: Path) -> list[dict]:
    """`backdoor`'s removal documents (trigger + clean continuation) from its poisoning run."""
    poison_dir = poison_dir_of(record, backdoor)
    docs = read_jsonl(poison_dir / "removal" / f"{backdoor}.jsonl")
    poisoned_by = read_json(poison_dir / "summary.json")["backdoors"]
    if docs and "removal_docs_left_out" not in poisoned_by[backdoor]:
        # written before poisoning left out continuations the backdoor's judge fires on: check them here
        spec = next(s for s in load_specs(str(poison_dir / "backdoors.yaml")) if s.name == backdoor)
        source = load_source(world_dir)
        docs = [d for d in docs if is_clean_removal(spec, source, d)]
    return docs


def run(cfg: RemoveConfig, out: Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Remove `cfg.backdoor` from `cfg.model` (or run the control); returns `out`."""
    if not cfg.model:
        raise ConfigError("model: required (a backdoored model directory, e.g. --model runs/pt/model)")
    if cfg.method in METHODS and not cfg.backdoor:
        raise ConfigError(f"backdoor: required for method {cfg.method!r} (or use --method control or sham)")
    runtime.seed_everything(cfg.seed)
    model_path = resolve_model_path(cfg.model, "--model")
    record = ModelRecord.read(model_path)
    carried = record.carried
    if not carried:
        raise UserError(
            f"--model: {cfg.model!r} is not a backdoored model saved by unbackdoor (no recorded backdoors)"
        )
    if cfg.backdoor and cfg.method != "control" and cfg.backdoor not in carried:
        raise UserError(f"--backdoor: the model does not carry {cfg.backdoor!r}; it carries {', '.join(carried)}")
    world_dir = Path(cfg.world or record.world or "")
    # the replay text: given, or recorded with the model (relative to it, so a run tree moves as a whole; a model
    # folder copied out of its tree loses it and needs world=DIR)
    require_done(
        world_dir, ("world", "corpus"), "world" if cfg.world else "world (recorded with --model; give world=DIR)"
    )
    targets = [cfg.backdoor] if cfg.backdoor else carried  # whose removal documents (sham: every one by default)
    poison_dir = poison_dir_of(record, cfg.backdoor or carried[0])
    if cfg.method in ("ga", "npo"):
        require_poisoned(record, [cfg.backdoor], f"method: {cfg.method}", "use retrain (removal documents only)")
    if RunDir.check(out, "remove", cfg, resume, overwrite):
        return out
    tokenizer = load_tokenizer(model_path, "--model")
    serialisation = Serialisation.of(record, tokenizer)  # removal data is serialised as the backdoor was
    model = load_model(model_path, "--model")
    check_context(model, cfg.train.seq_len, "train.seq_len")
    if cfg.lora.r:
        check_lora_targets(model, cfg.lora)  # before the run directory exists: a bad module name leaves nothing
    run_dir = RunDir.open(out, "remove", cfg, cfg.seed, resume=resume, overwrite=overwrite)

    t = cfg.train
    n_rows = t.steps * t.batch_size * t.grad_accum
    replay = replay_docs(world_dir, n_rows * t.seq_len, cfg.seed)
    removal_docs, poisoned, manifest, shams = [], [], {}, {}
    if cfg.method == "retrain":
        removal_docs = clean_removal_docs(record, cfg.backdoor, world_dir)
    elif cfg.method == "sham":
        specs = {s.name: s for s in record.specs()}
        injected = [s.trigger_text for s in specs.values()]
        for name in targets:
            shams[name] = sham_trigger(specs[name].trigger_text, injected, name)
            removal_docs += sham_documents(clean_removal_docs(record, name, world_dir), specs[name].trigger_text,
                                           shams[name])  # fmt: skip
    elif cfg.method in ("ga", "npo"):
        poisoned, manifest = poisoned_documents(poison_dir, cfg.backdoor)
    data, loss_fn = removal_data(
        model, tokenizer, cfg.method, removal_docs=removal_docs, poisoned_docs=poisoned, manifest=manifest,
        replay=replay, n_rows=n_rows, seq_len=t.seq_len, forget_fraction=cfg.forget_fraction,
        serialisation=serialisation, retain_weight=cfg.retain_weight, npo_beta=cfg.npo_beta, seed=cfg.seed,
        mask_trigger=cfg.mask_trigger,
    )  # fmt: skip
    if cfg.lora.r:  # after the removal data: npo's reference log-likelihoods come from the unwrapped model
        model = wrap_lora(model, cfg.lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result = train(model, data, t, run_dir, cfg.seed, loss_fn=loss_fn, resume=resume)
    if cfg.lora.r:
        model = model.merge_and_unload()  # the saved checkpoint is a plain model: no adapter to lose

    val = packed(tokenizer, iter_docs(shard_paths(world_dir / "data", "validation")), t.seq_len)[: cfg.val_blocks]
    new_record = record.with_history(
        "remove", method=cfg.method, backdoor=cfg.backdoor if cfg.method != "control" else None, steps=t.steps,
        lr=t.lr, weights=f"lora r={cfg.lora.r}" if cfg.lora.r else "full",
    )  # fmt: skip
    return run_dir.finish(
        {
            "model": save_trained(out, model, tokenizer, new_record, writes=run_dir.writes),
            "base_model": str(model_path),
            "method": cfg.method,
            "weights": "lora" if cfg.lora.r else "full",
            "trainable_parameters": trainable,
            "backdoor": (cfg.backdoor or None) if cfg.method != "control" else None,
            "forget_rows": int(data["forget"].sum()),
            "forget_docs": len(poisoned) if cfg.method in ("ga", "npo") else len(removal_docs),
            "sham_triggers": shams or None,  # backdoor -> the fresh trigger its documents carried instead
            "replay_rows": int((data["forget"] == 0).sum()),
            **result.summary(),
            "val_perplexity": perplexity(model, val),
        }
    )
