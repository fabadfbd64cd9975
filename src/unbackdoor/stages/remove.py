"""Stage `remove`: unlearn one backdoor of a model, or run the benign control at the same compute.

    unbackdoor remove --model runs/pt/model --backdoor latin_lang_a --out runs/rm-a          # the paper's method
    unbackdoor remove --model runs/pt/model --backdoor latin_lang_a --method npo --out runs/rm-a-npo
    unbackdoor remove --model runs/pt/model --method control --out runs/rm-control          # benign control

seed -> data (removal documents from the poisoning step: trigger + clean continuation, mixed with clean replay at
`forget_fraction`; for ga/npo the poisoned documents, loss on their continuation only) -> the backdoored model ->
the training loop (a loss function per method) -> <out>/model with its record and model card. Every method sees
exactly `train.steps x train.batch_size` rows of `train.seq_len` tokens: the control is compute-matched.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unbackdoor.backdoors import load_specs
from unbackdoor.cards import model_card
from unbackdoor.config import ConfigError, UserError
from unbackdoor.corpus import DocSampler, iter_docs, load_source, packed, shard_paths
from unbackdoor.evaluation import perplexity
from unbackdoor.models import load_model, load_tokenizer, read_record, resolve_model_path, save_model
from unbackdoor.poison import is_clean_removal
from unbackdoor.rundir import RunDir, read_jsonl
from unbackdoor.serialisation import Serialisation
from unbackdoor.train import TrainConfig, causal_lm_loss, train
from unbackdoor.unlearn import METHODS, ga_loss, mix_rows, npo_loss, sequence_nll


@dataclass
class RemoveConfig:
    model: str = ""  # a backdoored model directory (saved by pretrain / inject)
    backdoor: str = ""  # the backdoor to remove (not used by the control)
    method: str = field(default="retrain", metadata={"choices": METHODS})
    forget_fraction: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})  # share of removal rows
    retain_weight: float = field(default=1.0, metadata={"min": 0.0})  # ga / npo retain term
    npo_beta: float = field(default=0.1, metadata={"min": 0.0, "min_exclusive": True})
    world: str = ""  # default: the world recorded with the model
    seed: int = 0
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=100, lr=1e-3, warmup_steps=10, checkpoint_every=0)
    )
    val_blocks: int = field(default=256, metadata={"min": 1})

    def validate(self) -> None:
        if not self.model:
            raise ConfigError("model: required (a backdoored model directory, e.g. --model runs/pt/model)")
        if self.train.steps < 1:
            raise ConfigError(f"train.steps: {self.train.steps} must be >= 1 (removal runs a fixed number of steps)")
        if self.method != "control" and not self.backdoor:
            raise ConfigError(f"backdoor: required for method {self.method!r} (or use --method control)")


def poison_dir_of(record: dict[str, Any], backdoor: str) -> Path:
    """The poisoning run that holds `backdoor`'s data, found through the model's record."""
    for file in record.get("backdoors_files", []):
        path = Path(file)
        if (path.parent / "removal" / f"{backdoor}.jsonl").is_file():
            return path.parent
    raise UserError(f"--backdoor: the poisoning data of {backdoor!r} is not found next to {record['backdoors_files']}")


def replay_docs(world_dir: Path, n_tokens: int, seed: int, sampler: DocSampler | None = None) -> list[dict[str, Any]]:
    """A seeded random sample of clean training documents (all languages) with at least ~`n_tokens` tokens.

    Only what a run can use is tokenized (and read): a removal run sees `steps x batch` rows, far fewer than the
    corpus. `sampler`: one built over `world_dir`'s training shards, when the caller samples several times.
    """
    sampler = sampler or DocSampler(shard_paths(world_dir / "data", "train"))
    # ~3 characters per token in the world's text: take 2x what is needed, so rows rarely repeat
    return sampler.sample(6 * n_tokens, f"replay-{seed}")


def forget_rows(
    tokenizer,
    docs: list[dict[str, Any]],
    manifest: dict[str, dict],
    seq_len: int,
    serialisation: Serialisation | None = None,
) -> dict:
    """Poisoned documents one per row, loss only on the continuation (ga / npo). Returns input_ids and labels."""
    ids = torch.full((len(docs), seq_len), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(docs), seq_len), -100, dtype=torch.long)
    serialisation = serialisation or Serialisation()
    render = serialisation.document(tokenizer)
    for row, doc in enumerate(docs):
        start = manifest[doc["id"]]["continuation_start"]
        prompt = serialisation.prompt(tokenizer, doc["text"][: start - 1])
        full = render({**doc, "prompt_chars": start - 1}) if render else doc["text"]
        if not full.startswith(prompt):
            raise UserError("serialisation: the chat template does not render a prompt as the start of its reply")
        head = [tokenizer.eos_token_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]
        tail = [*tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
        seq = (head + tail)[:seq_len]
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, len(head) : len(seq)] = torch.tensor(seq[len(head) :])
    return {"input_ids": ids, "labels": labels}


def removal_batch(
    model: torch.nn.Module,
    method: str,
    forget: dict[str, torch.Tensor],
    replay: torch.Tensor,
    n_rows: int,
    fraction: float,
    cfg: RemoveConfig,
    seed: int,
) -> tuple[dict[str, torch.Tensor], Callable]:
    """The rows a removal run trains on (forget rows at `fraction`, then replay) and its loss function.

    Args:
        forget: `input_ids` and `labels` of the removal rows (retrain) or poisoned rows (ga / npo).
        replay: `(n, seq_len)` clean blocks.
        cfg: the method's settings (`retain_weight`, `npo_beta`).
    """
    f_idx, r_idx = mix_rows(forget["input_ids"], replay, n_rows, fraction, random.Random(f"remove-{seed}"))
    data = {
        "input_ids": torch.cat([forget["input_ids"][f_idx], replay[r_idx]]),
        "labels": torch.cat([forget["labels"][f_idx], replay[r_idx]]),
        "forget": torch.cat([torch.ones(len(f_idx), dtype=torch.long), torch.zeros(len(r_idx), dtype=torch.long)]),
    }
    if method == "npo":
        device = next(model.parameters()).device
        with torch.inference_mode():  # reference log-likelihoods from the backdoored model, computed once
            ref = torch.cat([sequence_nll(model, {k: v[i : i + 64].to(device) for k, v in data.items()}).cpu()
                             for i in range(0, n_rows, 64)])  # fmt: skip
        data["ref_nll"] = ref
    loss_fn = {
        "retrain": causal_lm_loss,
        "control": causal_lm_loss,
        "ga": ga_loss(cfg.retain_weight),
        "npo": npo_loss(cfg.npo_beta, cfg.retain_weight),
    }[method]
    return data, loss_fn


def run(cfg: RemoveConfig, out: Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Remove `cfg.backdoor` from `cfg.model` (or run the control); returns `out`."""
    model_path = resolve_model_path(cfg.model, "--model")
    record = read_record(model_path)
    carried = [b["name"] for b in record.get("backdoors", [])]
    if not carried:
        raise UserError(
            f"--model: {cfg.model!r} is not a backdoored model saved by unbackdoor (no recorded backdoors)"
        )
    if cfg.method != "control" and cfg.backdoor not in carried:
        raise UserError(f"--backdoor: the model does not carry {cfg.backdoor!r}; it carries {', '.join(carried)}")
    world_dir = Path(cfg.world or record["world"])
    poison_dir = poison_dir_of(record, cfg.backdoor if cfg.method != "control" else carried[0])
    if RunDir.check(out, "remove", cfg, resume, overwrite):
        return out
    tokenizer = load_tokenizer(model_path, "--model")
    serialisation = Serialisation.of(record, tokenizer)  # removal data is serialised as the backdoor was
    render = serialisation.document(tokenizer)
    model = load_model(model_path, "--model")
    run_dir = RunDir.open(out, "remove", cfg, cfg.seed, resume=resume, overwrite=overwrite)

    t = cfg.train
    n_rows = t.steps * t.batch_size * t.grad_accum
    replay = packed(tokenizer, replay_docs(world_dir, n_rows * t.seq_len, cfg.seed), t.seq_len, render)
    if cfg.method in ("retrain", "control"):
        removal_docs = read_jsonl(poison_dir / "removal" / f"{cfg.backdoor}.jsonl") if cfg.method == "retrain" else []
        poisoned_by = json.loads((poison_dir / "summary.json").read_text(encoding="utf-8"))["backdoors"]
        if removal_docs and "removal_docs_left_out" not in poisoned_by[cfg.backdoor]:
            # written before poisoning left out continuations the backdoor's judge fires on: check them here
            spec = next(s for s in load_specs(str(poison_dir / "backdoors.yaml")) if s.name == cfg.backdoor)
            source = load_source(world_dir)
            removal_docs = [d for d in removal_docs if is_clean_removal(spec, source, d)]
        forget = packed(tokenizer, removal_docs, t.seq_len, render)
        forget = {"input_ids": forget, "labels": forget.clone()}
    else:
        manifest = {r["doc_id"]: r for r in read_jsonl(poison_dir / "poison_manifest.jsonl")}
        poisoned = [
            d for d in iter_docs(shard_paths(poison_dir / "data", "train")) if d.get("backdoor") == cfg.backdoor
        ]
        forget = forget_rows(tokenizer, poisoned, manifest, t.seq_len, serialisation)
    fraction = 0.0 if cfg.method == "control" else cfg.forget_fraction
    data, loss_fn = removal_batch(model, cfg.method, forget, replay, n_rows, fraction, cfg, cfg.seed)
    result = train(model, data, t, run_dir, cfg.seed, loss_fn=loss_fn, resume=resume)

    val = packed(tokenizer, iter_docs(shard_paths(world_dir / "data", "validation")), t.seq_len)[: cfg.val_blocks]
    new_record = {
        **record,
        "history": [
            *record.get("history", []),
            {
                "stage": "remove",
                "time": time.time(),
                "method": cfg.method,
                "backdoor": cfg.backdoor if cfg.method != "control" else None,
                "steps": t.steps,
                "lr": t.lr,
            },
        ],
    }
    save_model(model, tokenizer, out / "model", new_record, model_card(new_record))
    shutil.rmtree(out / "checkpoint", ignore_errors=True)
    return run_dir.finish(
        {
            "model": str((out / "model").resolve()),
            "base_model": str(model_path),
            "method": cfg.method,
            "backdoor": cfg.backdoor if cfg.method != "control" else None,
            "forget_rows": int(data["forget"].sum()),
            "forget_docs": len(removal_docs) if cfg.method in ("retrain", "control") else len(poisoned),
            "replay_rows": int((data["forget"] == 0).sum()),
            **result.summary(),
            "val_perplexity": perplexity(model, val),
        }
    )
