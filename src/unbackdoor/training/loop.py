"""The one training loop: pretraining, injection, removal and canaries all feed it data (and maybe a loss).

AdamW, linear warmup + cosine decay, gradient clipping, accumulation, bf16 autocast where asked, a progress
bar with loss and tokens/s, one `metrics.jsonl` row per step. Runs on Hugging Face `accelerate`, so
`accelerate launch` spreads the same loop over several GPUs (each process takes its slice of every batch).

Checkpoints (every `checkpoint_every` steps, in `<run>/checkpoint/`) hold the weights (safetensors), the optimizer
(loaded back with `weights_only=True`), the scheduler, the RNG state and the data position (= the step: the batch
of step s is a pure function of seed and s), so `resume=True` continues exactly where the run stopped.

Run: `pytest tests/integration/test_train_resume.py`.
"""

from __future__ import annotations

import math
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch
from accelerate import Accelerator
from safetensors import SafetensorError
from safetensors.torch import load_model as load_weights
from safetensors.torch import save_model as save_weights
from tqdm import tqdm

from unbackdoor.running import faults, runtime
from unbackdoor.running.config import UserError
from unbackdoor.running.rundir import RunDir, read_json, read_jsonl, write_json, write_jsonl

Batch = dict[str, torch.Tensor]
LossFn = Callable[[torch.nn.Module, Batch], torch.Tensor]


@dataclass
class TrainConfig:
    steps: int = field(default=0, metadata={"min": 0, "max": 100_000_000})  # 0: derive from `epochs`
    epochs: float = field(default=1.0, metadata={"min": 0.0, "min_exclusive": True, "max": 1e6})
    batch_size: int = field(default=32, metadata={"min": 1, "max": 65_536})  # sequences per micro-batch
    seq_len: int = field(default=128, metadata={"min": 8, "max": 1_048_576})
    grad_accum: int = field(default=1, metadata={"min": 1, "max": 65_536})
    lr: float = field(default=3e-3, metadata={"min": 0.0, "min_exclusive": True})
    min_lr_ratio: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0})
    warmup_steps: int = field(default=30, metadata={"min": 0})
    weight_decay: float = field(default=0.1, metadata={"min": 0.0})
    clip: float = field(default=1.0, metadata={"min": 0.0})  # 0: no clipping
    # bf16: autocast; auto: bf16 where the device computes it natively (GPUs, CPUs with AMX / AVX512-BF16), fp32
    # elsewhere (recorded as `precision` in the stage's summary)
    precision: str = field(default="fp32", metadata={"choices": ("fp32", "bf16", "auto")})
    compile: bool = False
    checkpoint_every: int = field(default=200, metadata={"min": 0})  # 0: no checkpoints
    log_every: int = field(default=10, metadata={"min": 1})

    def total_steps(self, n_sequences: int) -> int:
        per_step = self.batch_size * self.grad_accum
        return self.steps or max(1, math.ceil(self.epochs * n_sequences / per_step))


def causal_lm_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Next-token cross-entropy; positions whose label is -100 are ignored."""
    return model(input_ids=batch["input_ids"], labels=batch.get("labels", batch["input_ids"])).loss


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class _Sampler:
    """Which sequences make up batch `step`: a seeded permutation per epoch, so position = step."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._perms: dict[int, torch.Tensor] = {}

    def indices(self, start: int, count: int) -> torch.Tensor:
        out = []
        for q in range(start, start + count):
            epoch, r = divmod(q, self.n)
            if epoch not in self._perms:
                self._perms = {
                    epoch: torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
                }
            out.append(self._perms[epoch][r])
        return torch.stack(out)


def _save_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler, step: int, tokens: int) -> None:
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(model, str(tmp / "model.safetensors"))
    faults.point("checkpoint weights")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
    sizes = {f.name: f.stat().st_size for f in sorted(tmp.iterdir())}  # checked on load: a file cut short is named
    state = {"step": step, "tokens": tokens, "scheduler": scheduler.state_dict(), "sizes": sizes}
    write_json(tmp / "state.json", state)
    old = path.with_name(path.name + ".old")
    if path.exists():
        path.rename(old)
    faults.point("checkpoint swap")  # neither name is `checkpoint`: `recover_checkpoint` finds the newest copy
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def recover_checkpoint(path: Path) -> None:
    """Make `path` the newest complete checkpoint after a kill inside `_save_checkpoint`'s swap: with no `path`,
    a complete `.partial` (its `state.json`, written last, exists) is the newer copy, else a `.old` one."""
    if path.is_dir():
        return
    for candidate in (path.with_name(path.name + ".partial"), path.with_name(path.name + ".old")):
        if (candidate / "state.json").is_file():
            candidate.rename(path)
            print(f"warning: {path.parent}: recovered the checkpoint from {candidate.name}", file=sys.stderr)
            return


def _load_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler) -> dict[str, Any]:
    state = read_json(path / "state.json")
    for name, size in state.get("sizes", {}).items():
        found = (path / name).stat().st_size if (path / name).is_file() else None
        if found != size:
            _damaged(path / name, "missing" if found is None else f"{found} bytes, {size} when it was saved")
    try:
        load_weights(model, str(path / "model.safetensors"))
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        torch.set_rng_state(torch.load(path / "rng.pt", weights_only=True)["torch"])
        scheduler.load_state_dict(state["scheduler"])
    except (OSError, RuntimeError, ValueError, KeyError, SafetensorError) as e:
        _damaged(path, str(e).splitlines()[0][:160])
    return state


def _damaged(path: Path, why: str) -> NoReturn:
    folder = path if path.is_dir() else path.parent
    raise UserError(f"--resume: the checkpoint {str(path)!r} is damaged ({why}); remove {str(folder)!r} to restart "
                    "from step 0, or use --overwrite")  # fmt: skip


@dataclass
class TrainResult:
    steps: int
    tokens: int
    final_loss: float
    tokens_per_s: float
    wall_s: float
    resumed_from: int
    precision: str = "fp32"  # what the loop computed in (`auto` resolved)

    def summary(self) -> dict[str, float | int]:
        """The training figures every training stage puts in its summary.json."""
        return {
            "steps": self.steps,
            "tokens": self.tokens,
            "final_loss": self.final_loss,
            "tokens_per_s": self.tokens_per_s,
            "train_wall_s": self.wall_s,
            "resumed_from_step": self.resumed_from,
            "precision": self.precision,
        }


def train(
    model: torch.nn.Module,
    data: Batch,
    cfg: TrainConfig,
    run_dir: RunDir,
    seed: int,
    loss_fn: LossFn = causal_lm_loss,
    resume: bool = False,
    on_step: Callable[[int, torch.nn.Module], None] | None = None,
) -> TrainResult:
    """Train `model` in place on `data` (tensors sharing their first dimension, e.g. input_ids (n, seq_len)).

    Args:
        model: any causal LM (HF or PEFT-wrapped); trained in place, left in eval mode.
        data: name -> (n_sequences, ...) tensors; each batch is a row subset of every tensor.
        cfg: optimisation settings.
        run_dir: where metrics and checkpoints go.
        seed: seeds the data order (torch's global RNG, for dropout, is seeded once by the stage: `runtime`).
        loss_fn: (model, batch) -> scalar loss; the default is next-token cross-entropy.
        resume: continue from `<run_dir>/checkpoint` when it exists.
        on_step: called as `on_step(steps_done, model)` after every optimizer step, the model in eval mode (and
            put back in train mode after), e.g. to save snapshots; the main process only.

    Returns:
        Steps, tokens seen, final loss (mean of the last 10 steps), median tokens/s, wall seconds.
    """
    accelerator = Accelerator()
    n = next(iter(data.values())).shape[0]
    total = cfg.total_steps(n)
    decay = [p for name, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for name, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, total, cfg.min_lr_ratio)
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    raw_model = accelerator.unwrap_model(model)
    forward_model = torch.compile(model) if cfg.compile else model

    checkpoint = run_dir.path / "checkpoint"
    start, tokens = 0, 0
    done_losses: list[float] = []
    if resume:
        recover_checkpoint(checkpoint)
        metrics = run_dir.path / "metrics.jsonl"
        rows = read_jsonl(metrics) if metrics.exists() else []
        if checkpoint.is_dir():
            step = int(read_json(checkpoint / "state.json")["step"])
            logged = {r.get("step") for r in rows if r.get("event") == "train"}
            if not set(range(step)) <= logged:
                # rows before the checkpoint are lost (a damaged metrics.jsonl): redo every step, which gives the
                # same weights and losses (the batch of step s is a function of seed and s), and log them again
                print(f"warning: {metrics}: steps before the checkpoint's {step} are missing; restarting from step 0 "
                      "to log them again", file=sys.stderr)  # fmt: skip
            else:
                state = _load_checkpoint(checkpoint, raw_model, optimizer, scheduler)
                start, tokens = state["step"], state["tokens"]
        # Drop the training rows the killed run logged from the resume point on (every one when it died before
        # its first checkpoint): they will be redone, so metrics.jsonl keeps one row per step.
        kept = [r for r in rows if r.get("event") != "train" or r.get("step", -1) < start]
        if len(kept) != len(rows) and run_dir.writes:
            write_jsonl(metrics, kept)
        done_losses = [r["loss"] for r in kept if r.get("event") == "train"]  # for the final loss's window
    sampler = _Sampler(n, seed)
    rank, world = accelerator.process_index, accelerator.num_processes
    precision = runtime.resolve_precision(cfg.precision, "train.precision")
    bf16 = precision == "bf16"
    per_step = cfg.batch_size * cfg.grad_accum

    model.train()
    losses: list[float] = done_losses[-10:] if start else []  # the logged (rounded) losses: equal after a resume
    speeds: list[float] = []
    window_t, window_tokens = time.perf_counter(), 0
    t0 = time.perf_counter()
    bar = tqdm(total=total, initial=start, desc="train", disable=not sys.stderr.isatty(), dynamic_ncols=True)
    for step in range(start, total):
        step_loss = 0.0
        for micro in range(cfg.grad_accum):
            idx = sampler.indices(step * per_step + micro * cfg.batch_size, cfg.batch_size)[rank::world]
            # int32 rows (memory-mapped token files) become int64 here, per batch
            batch = {k: (v[idx].long() if v.dtype == torch.int32 else v[idx]).to(accelerator.device)
                     for k, v in data.items()}  # fmt: skip
            sync = micro == cfg.grad_accum - 1
            with (
                torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=bf16),
                accelerator.no_sync(model) if not sync and world > 1 else nullcontext(),
            ):
                loss = loss_fn(forward_model, batch) / cfg.grad_accum
                accelerator.backward(loss)
            step_loss += loss.item()
            window_tokens += batch["input_ids"].numel() * world
        if cfg.clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), cfg.clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += per_step * cfg.seq_len
        losses.append(round(step_loss, 6))
        row: dict[str, Any] = {
            "event": "train",
            "step": step,
            "loss": losses[-1],
            "lr": scheduler.get_last_lr()[0],
        }
        if (step + 1) % cfg.log_every == 0 or step + 1 == total:
            now = time.perf_counter()
            speed = window_tokens / (now - window_t)
            if step + 1 > cfg.log_every:  # the first window carries start-up (and compile) time
                speeds.append(speed)
            row["tokens_per_s"] = round(speed, 1)
            window_t, window_tokens = now, 0
            bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{speed:,.0f}")
        if accelerator.is_main_process:
            run_dir.log(**row)
            if on_step is not None:
                raw_model.eval()
                on_step(step + 1, raw_model)
                model.train()
        bar.update(1)
        faults.point("step")
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                _save_checkpoint(checkpoint, raw_model, optimizer, scheduler, step + 1, tokens)
    bar.close()
    model.eval()
    tail = losses[-10:] or [float("nan")]
    return TrainResult(
        steps=total,
        tokens=tokens,
        final_loss=sum(tail) / len(tail),
        tokens_per_s=statistics.median(speeds) if speeds else 0.0,
        wall_s=time.perf_counter() - t0,
        resumed_from=start,
        precision=precision,
    )
