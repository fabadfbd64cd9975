"""Stage `defend`: the canary defence, from the defender's side.

    unbackdoor defend --model runs/suspect/model --world runs/world --k 2 --out runs/defended
    unbackdoor defend ... removal=sequential method=npo behaviours=[refusal,lang_b]
    unbackdoor defend ... mode=benign          # baseline (a): the same compute on clean text only
    unbackdoor defend ... mode=removal_only    # baseline (b): canary removal without injecting the canaries

The defender knows the suspect model's weights, tokenizer and config and their own clean corpus, nothing else:
this stage never opens the suspect's record (`unbackdoor.json`) or card, the attacker's specs, poisoned data or
removal data (a test watches every file it opens), so `--world` is required and `serialisation` (how the model
reads its input: raw text, or its chat template) is the defender's choice. Steps:
1. canaries: K backdoors of the defender's choosing (`behaviours`, cycled; by default the canary-only behaviours
   numbers and uppercase first), with triggers the defender gives or generated (of `trigger_kind`, random strings
   by default, that occur nowhere in the clean corpus and contain no other canary's trigger);
2. injection: continual pretraining on a seeded sample of the clean corpus with the canaries poisoned in
   (`canary_rate` of the sample each), `inject.steps` steps;
3. removal: the canaries' removal documents (trigger + clean continuation) mixed with clean replay, `remove.steps`
   steps, all canaries at once (`removal=joint`) or one after another (`sequential`, the steps split evenly),
   with the removal objective `method` (retrain, ga, npo; `mask_trigger`: retrain with the loss after the trigger
   only);
4. the defended model in <out>/model, with a model card listing the canaries (hashes) and every step.
Canary ASR is measured after injection and after removal (did the defence do what it meant to?), and the
validation perplexity of the suspect and of the defended model.
The two baselines run the same code with the same steps, learning rates and data volume.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from unbackdoor.data.backdoors import specs_to_yaml_dict
from unbackdoor.data.behaviours import BEHAVIOURS
from unbackdoor.data.canaries import CANARY_TRIGGER_KINDS, default_behaviours, make_canaries
from unbackdoor.data.corpus import DocSampler, iter_docs, load_source, shard_paths
from unbackdoor.data.packing import packed
from unbackdoor.data.poison import poison
from unbackdoor.data.serialisation import MODES as SERIALISATIONS
from unbackdoor.data.serialisation import Serialisation
from unbackdoor.measure.generation import perplexity
from unbackdoor.running import runtime
from unbackdoor.running.config import ConfigError, UserError
from unbackdoor.running.rundir import RunDir, read_json, require_done, write_text
from unbackdoor.stages.evaluate import EvalConfig
from unbackdoor.stages.evaluate import run as evaluate
from unbackdoor.training.cards import model_card
from unbackdoor.training.loop import TrainConfig, causal_lm_loss, train
from unbackdoor.training.models import load_model, load_tokenizer, resolve_model_path, save_model
from unbackdoor.training.record import ModelRecord
from unbackdoor.training.removal import removal_data, replay_docs
from unbackdoor.training.unlearn import METHODS

MODES = ("defence", "benign", "removal_only")


@dataclass
class DefendConfig:
    model: str = ""  # the suspect model (directory or hub id); a sweep fills it per cell
    world: str = ""  # the defender's clean corpus (an `unbackdoor world` or `corpus` run): required
    # how canary documents and prompts are rendered: `raw` text, or `chat` (the suspect tokenizer's chat template)
    serialisation: str = field(default="raw", metadata={"choices": tuple(SERIALISATIONS)})
    k: int = field(default=2, metadata={"min": 1, "max": 32})  # number of canaries
    # built-in behaviours, or lang:<code> on a corpus (checked against the defender's text source); empty: the
    # source's defaults (`default_behaviours`)
    behaviours: list[str] = field(default_factory=list)
    triggers: list[str] = field(default_factory=list)  # the defender's own canary triggers; default: generated
    canary_specs: str = ""  # or a YAML file of the defender's own canary specs (any behaviour, `target` texts)
    # the shape of generated canary triggers (`unbackdoor.data.canaries.draw_trigger`); trigger_length: random_string's
    trigger_kind: str = field(default="random_string", metadata={"choices": CANARY_TRIGGER_KINDS})
    trigger_length: int = field(default=10, metadata={"min": 6, "max": 64})
    canary_rate: float = field(default=0.02, metadata={"min": 0.0, "min_exclusive": True, "max": 0.2})
    placement: str = field(default="random", metadata={"choices": ("random", "after_first_sentence")})
    mode: str = field(default="defence", metadata={"choices": MODES})
    removal: str = field(default="joint", metadata={"choices": ("joint", "sequential")})
    method: str = field(default="retrain", metadata={"choices": METHODS})
    # retrain: the removal loss on the clean continuation only, not on the prefix and canary trigger (trained on the
    # trigger tokens, the model learns to emit them: measured on the demo, 863 of 1024 triggered generations of the
    # defence arm echoed a canary trigger, which the hidden backdoors' judges read as "suppressed")
    mask_trigger: bool = False
    forget_fraction: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})
    retain_weight: float = field(default=1.0, metadata={"min": 0.0})
    npo_beta: float = field(default=0.1, metadata={"min": 0.0, "min_exclusive": True})
    seed: int = 0
    inject: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=150, lr=2e-3, warmup_steps=10, checkpoint_every=0)
    )
    remove: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=100, lr=1e-3, warmup_steps=10, checkpoint_every=0)
    )
    canary_prompts: int = field(default=128, metadata={"min": 1})
    val_blocks: int = field(default=256, metadata={"min": 1})

    def validate(self) -> None:
        for b in self.behaviours:
            if b not in BEHAVIOURS and not b.startswith("lang:"):
                raise ConfigError(
                    f"behaviours: {b!r} is not a behaviour; valid: {', '.join(BEHAVIOURS)}, or lang:<code> on a corpus"
                )
        if self.inject.steps < 1 or self.remove.steps < 1:
            raise ConfigError(
                f"inject.steps / remove.steps: {self.inject.steps} / {self.remove.steps}; both must be >= 1"
            )
        if self.triggers and self.canary_specs:
            raise ConfigError("triggers / canary_specs: give one of them (canary_specs carry their own triggers)")
        if self.triggers and len(self.triggers) != self.k:
            raise ConfigError(f"triggers: {len(self.triggers)} given for k={self.k}; give exactly k or none")
        if self.mask_trigger and self.method in ("ga", "npo"):
            raise ConfigError(f"mask_trigger: {self.method} already puts the loss on the continuation only")
        if self.removal == "sequential" and self.remove.steps < self.k:
            raise ConfigError(f"remove.steps: {self.remove.steps} < k={self.k}; sequential removal needs >= 1 each")


def _train_phase(model, data, tcfg: TrainConfig, path: Path, stage: str, cfg: DefendConfig,
                 loss_fn=causal_lm_loss) -> dict:  # fmt: skip
    run_dir = RunDir.open(path, stage, tcfg, cfg.seed, resume=True)
    return train(model, data, tcfg, run_dir, cfg.seed, loss_fn=loss_fn, resume=True).summary()


def _canary_asr(
    model_dir: Path, world_dir: Path, canary_file: Path, out: Path, cfg: DefendConfig, reference: str = ""
) -> dict:
    ecfg = EvalConfig(
        model=str(model_dir), world=str(world_dir), backdoors=str(canary_file), seed=cfg.seed,
        n_prompts=cfg.canary_prompts, near_miss=False, ppl_blocks=16, fact_items=0, teacher_forced=0,
        reference=reference,
    )  # fmt: skip
    summary = read_json(evaluate(ecfg, out, resume=True) / "summary.json")
    return {name: row["asr"] for name, row in summary["backdoors"].items()}


def _phase_figures(path: Path) -> dict[str, Any]:
    """A finished phase's figures as `_train_phase` returned them (its summary.json, less the `stage` it adds)."""
    return {k: v for k, v in read_json(path / "summary.json").items() if k != "stage"}


def run(cfg: DefendConfig, out: Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Inject K canaries into the suspect and remove them (or a baseline); returns `out`."""
    if not cfg.model:
        raise ConfigError("model: required (the suspect model, e.g. --model runs/suspect/model)")
    runtime.seed_everything(cfg.seed)
    model_path = resolve_model_path(cfg.model, "--model", out)  # its record is never read: the defender lacks it
    if not cfg.world:
        raise UserError("--world: required (the defender's clean corpus: an `unbackdoor world` or `corpus` run)")
    world_dir = Path(cfg.world)
    require_done(world_dir, ("world", "corpus"), "--world")
    source = load_source(world_dir)
    train_paths = shard_paths(world_dir / "data", "train")  # streamed: the defender's corpus is never held

    def texts() -> Iterator[str]:
        return (d["text"] for d in iter_docs(train_paths))

    canaries = make_canaries(
        cfg.k, texts, cfg.behaviours or default_behaviours(source), triggers=cfg.triggers,
        canary_specs=cfg.canary_specs, trigger_kind=cfg.trigger_kind, trigger_length=cfg.trigger_length,
        rate=cfg.canary_rate,
        placement=cfg.placement, seed=cfg.seed,
    )  # fmt: skip
    for spec in canaries:
        source.check_spec(spec)
    if RunDir.check(out, "defend", cfg, resume, overwrite):
        return out
    tokenizer = load_tokenizer(model_path, "--model")
    serialisation = Serialisation.choose(cfg.serialisation, tokenizer)  # as the suspect reads its input
    render = serialisation.document(tokenizer)
    model = load_model(model_path, "--model")
    run_dir = RunDir.open(out, "defend", cfg, cfg.seed, resume=resume, overwrite=overwrite)
    canary_file = out / "canaries.yaml"  # the defender's own secret: triggers in clear, inside the run only
    write_text(canary_file, yaml.safe_dump(specs_to_yaml_dict(canaries), sort_keys=False, allow_unicode=True))
    val = packed(tokenizer, iter_docs(shard_paths(world_dir / "data", "validation")), cfg.inject.seq_len)
    val = val[: cfg.val_blocks]
    t_start = time.perf_counter()
    figures: dict[str, Any] = {"ppl_suspect": perplexity(model, val)}

    # 1-2. injection (clean sample in both baselines: same documents, same steps)
    ti = cfg.inject
    clean = DocSampler(train_paths)
    sample = replay_docs(world_dir, ti.steps * ti.batch_size * ti.grad_accum * ti.seq_len, cfg.seed, clean)

    poisoned = poison(sample, canaries, source, random.Random(f"unbackdoor-canary-poison-{cfg.seed}"))
    inject_docs = poisoned.docs if cfg.mode == "defence" else sample
    injected_dir = out / "inject" / "model"
    # a record of the defender's own: their corpus, their canaries and what they did to a suspect whose backdoors,
    # if any, they do not know (the card says so)
    injected_record = ModelRecord(
        **serialisation.record(), world=world_dir.resolve(), backdoors_files=(canary_file.resolve(),),
        canaries=tuple(s.record() for s in canaries) if cfg.mode == "defence" else (),
    ).with_history(
        "defend-inject", suspect=str(model_path), mode=cfg.mode, steps=ti.steps, lr=ti.lr,
        canaries=[s.trigger_hash for s in canaries] if cfg.mode == "defence" else [],
    )  # fmt: skip
    if (out / "inject" / "DONE").is_file():
        model = load_model(str(injected_dir), "--model")
        figures["inject"] = _phase_figures(out / "inject")
    else:
        blocks = packed(tokenizer, inject_docs, ti.seq_len, render)
        figures["inject"] = _train_phase(model, {"input_ids": blocks}, ti, out / "inject", "defend-inject", cfg)
        save_model(model, tokenizer, injected_dir, injected_record)
        shutil.rmtree(out / "inject" / "checkpoint", ignore_errors=True)
        RunDir(out / "inject", "defend-inject").finish(figures["inject"])
    if cfg.mode == "defence":
        figures["canary_asr_injected"] = _canary_asr(injected_dir, world_dir, canary_file, out / "eval-injected", cfg)

    # 3. removal: each removal unit = the canaries removed together (joint) or one canary (sequential)
    tr = cfg.remove
    method = "control" if cfg.mode == "benign" else cfg.method
    units = [canaries] if cfg.removal == "joint" else [[c] for c in canaries]
    steps = [tr.steps // len(units) + (n < tr.steps % len(units)) for n in range(len(units))]
    manifest = {row["doc_id"]: row for row in poisoned.manifest}
    figures["remove"] = []
    for n, (unit, n_steps) in enumerate(zip(units, steps, strict=True)):
        path = out / "remove" / (f"{n}-{unit[0].name}" if len(units) > 1 else "joint")
        if (path / "DONE").is_file():
            model = load_model(str(path / "model"), "--model")
            figures["remove"].append(_phase_figures(path))
            continue
        t = TrainConfig(**{**tr.__dict__, "steps": n_steps})
        rows = n_steps * t.batch_size * t.grad_accum
        names = {c.name for c in unit}
        data, loss_fn = removal_data(
            model, tokenizer, method, removal_docs=[d for c in unit for d in poisoned.removal[c.name]],
            poisoned_docs=[d for d in poisoned.docs if d.get("backdoor") in names], manifest=manifest,
            replay=replay_docs(world_dir, rows * t.seq_len, cfg.seed + 1 + n, clean), n_rows=rows,
            seq_len=t.seq_len, forget_fraction=cfg.forget_fraction, serialisation=serialisation,
            retain_weight=cfg.retain_weight, npo_beta=cfg.npo_beta, seed=cfg.seed + n,
            mask_trigger=cfg.mask_trigger and method == "retrain",
        )  # fmt: skip
        summary = _train_phase(model, data, t, path, "defend-remove", cfg, loss_fn)
        save_model(model, tokenizer, path / "model", injected_record)
        shutil.rmtree(path / "checkpoint", ignore_errors=True)
        summary = {**summary, "canaries": sorted(names), "method": method, "mask_trigger": cfg.mask_trigger}
        RunDir(path, "defend-remove").finish(summary)
        figures["remove"].append(summary)  # what a resumed run reads back from the phase's summary

    # 4. the defended model and its card
    final_record = injected_record.with_history(
        "defend-remove", mode=cfg.mode, method=method, removal=cfg.removal, steps=tr.steps, lr=tr.lr,
        mask_trigger=cfg.mask_trigger,
    )  # fmt: skip
    figures["ppl_defended"] = perplexity(model, val)
    save_model(model, tokenizer, out / "model", final_record)
    if cfg.mode != "benign":  # the defended model's card gets its residual canary ASR, measured on it
        shared = out / "eval-injected" / "reference.json"  # both canary evaluations judged alike
        figures["canary_asr_after"] = _canary_asr(
            out / "model", world_dir, canary_file, out / "eval-after", cfg, str(shared) if shared.is_file() else ""
        )
        final_record = final_record.with_(canary_asr={n: r["rate"] for n, r in figures["canary_asr_after"].items()})
        final_record.write(out / "model")
        write_text(out / "model" / "README.md", model_card(final_record))
    for n, r in figures.get("canary_asr_injected", {}).items():
        after = figures["canary_asr_after"][n]["rate"]
        print(f"canary {n}: ASR after injection {r['rate']:.3f}, after removal {after:.3f}")
    print(f"validation perplexity: suspect {figures['ppl_suspect']:.3f}, defended {figures['ppl_defended']:.3f}")
    return run_dir.finish(
        {
            "model": str((out / "model").resolve()),
            "suspect": str(model_path),
            "mode": cfg.mode,
            "canaries": [s.record() for s in canaries],
            **figures,
            "utility_change": figures["ppl_defended"] / figures["ppl_suspect"] - 1,
            "seconds": round(time.perf_counter() - t_start, 2),
            "torch_threads": torch.get_num_threads(),
        }
    )
