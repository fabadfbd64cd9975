"""Removal cells of one model trained together (one vmapped model over stacked weights) vs one after another.

    .venv/bin/python benchmarks/bench_cells_together.py [--cells 4] [--steps 20] [--family llama] [--size tiny]

Issue #17 lists "training the removal cells of one model together" as a lever. A transfer trains 10 removal cells
per learning rate from the same checkpoint, each on its own data; on a 2-core CPU they run one after another. This
measures, side by side in one process, the core of a training step (forward, causal-LM loss, backward, per-model
gradient clipping, fused AdamW with the loop's decay groups) at the demo's removal shape (32 x 128 tokens):

- `sequential`: K models, one after another, S steps each (today's way; the loop's bookkeeping left out, which
  flatters it slightly);
- `together`: the K models' weights stacked (`torch.func.stack_module_state`), one forward of the stacked model
  with `torch.func.vmap(functional_call)` on K batches, one backward, clipping per model, one AdamW over the
  stacked tensors (AdamW is element-wise, so this is K independent optimizers); with the model's SDPA attention
  and with eager attention (vmap has no batching rule for CPU flash attention and loops over it).

Each arm runs twice, alternating, after one untimed warm-up step; the figure is the faster of the two. The numerics
are checked, not assumed: the per-step losses and the final weights of the two ways are compared (the same
arithmetic in another order: differences at float32 rounding). Writes `benchmarks/results/cells_together.json`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch.func import functional_call, stack_module_state, vmap
from transformers import AutoModelForCausalLM

from unbackdoor.running.rundir import write_json
from unbackdoor.training.models import MODEL_PRESETS, build_config

RESULTS = Path(__file__).resolve().parent / "results"
SPECIAL = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


def make_models(family: str, size: str, vocab: int, k: int, attn: str) -> list[torch.nn.Module]:
    """K copies of one random initialisation (removal cells all start from the same checkpoint)."""
    torch.manual_seed(0)
    cfg = build_config(family, size, vocab, SPECIAL)
    cfg._attn_implementation = attn
    first = AutoModelForCausalLM.from_config(cfg)
    return [copy.deepcopy(first) for _ in range(k)]


def groups(named: list[tuple[str, torch.Tensor]], per_model_ndim: int) -> list[dict[str, Any]]:
    """The loop's AdamW groups: weight decay on matrices only."""
    decay = [p for _, p in named if p.ndim >= per_model_ndim]
    rest = [p for _, p in named if p.ndim < per_model_ndim]
    return [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]


def batches(k: int, steps: int, batch: int, seq: int, vocab: int) -> torch.Tensor:
    """[K, steps, batch, seq] token ids: every cell its own data."""
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, vocab, (k, steps, batch, seq), generator=g)


def sequential(models: list[torch.nn.Module], data: torch.Tensor) -> tuple[float, list[list[float]]]:
    """Train each model on its own batches, one model after another; (seconds, losses per model)."""
    losses: list[list[float]] = []
    seconds = 0.0
    for m, cell in zip(models, data, strict=True):
        m.train()
        opt = torch.optim.AdamW(groups(list(m.named_parameters()), 2), lr=1e-3, betas=(0.9, 0.95), fused=True)
        out = []
        for s, ids in enumerate(cell):
            t = time.perf_counter()
            loss = m(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            out.append(loss.item())
            if s:  # the first step carries start-up
                seconds += time.perf_counter() - t
        losses.append(out)
    return seconds, losses


def together(models: list[torch.nn.Module], data: torch.Tensor) -> tuple[float, list[list[float]], dict]:
    """Train the K models at once: stacked weights, one vmapped forward and backward per step."""
    for m in models:
        m.train()
    params, buffers = stack_module_state(models)  # leaves that require grad, [K, ...]
    base = copy.deepcopy(models[0]).to("meta")
    tied = models[0].config.tie_word_embeddings
    named = list(params.items())
    opt = torch.optim.AdamW(groups(named, 3), lr=1e-3, betas=(0.9, 0.95), fused=True)

    def loss_of(p: dict, b: dict, ids: torch.Tensor) -> torch.Tensor:
        if tied:  # the meta copy does not re-tie the output projection to the stacked embedding
            p = {**p, "lm_head.weight": p["model.embed_tokens.weight"]}
        return functional_call(base, (p, b), (), {"input_ids": ids, "labels": ids}).loss

    step_fn = vmap(loss_of)
    k = len(models)
    losses: list[list[float]] = [[] for _ in range(k)]
    seconds = 0.0
    for s in range(data.shape[1]):
        t = time.perf_counter()
        per_model = step_fn(params, buffers, data[:, s])
        per_model.sum().backward()  # each model's gradient is its own loss's: the models share no weight
        grads = [p.grad for p in params.values()]
        norms = torch.stack([g.reshape(k, -1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
        scale = (1.0 / (norms + 1e-6)).clamp(max=1.0)  # clip_grad_norm_(max_norm=1) per model
        for g in grads:
            g.mul_(scale.view(k, *([1] * (g.ndim - 1))))
        opt.step()
        opt.zero_grad(set_to_none=True)
        for i, v in enumerate(per_model.tolist()):
            losses[i].append(v)
        if s:
            seconds += time.perf_counter() - t
    return seconds, losses, {n: p.detach() for n, p in params.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--family", default="llama")
    ap.add_argument("--size", default="tiny", choices=sorted(MODEL_PRESETS))
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    data = batches(args.cells, args.steps, args.batch, args.seq, args.vocab)
    timed: dict[str, list[float]] = {"sequential": [], "together_sdpa": [], "together_eager": []}
    check: dict[str, Any] = {}
    for _ in range(args.repeats):
        models = make_models(args.family, args.size, args.vocab, args.cells, "sdpa")
        t, seq_losses = sequential(models, data)
        timed["sequential"].append(t)
        seq_weights = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]) for n, _ in
                       models[0].named_parameters()}  # fmt: skip
        for attn in ("sdpa", "eager"):
            t, losses, weights = together(make_models(args.family, args.size, args.vocab, args.cells, attn), data)
            timed[f"together_{attn}"].append(t)
            diffs = [abs(a - b) for x, y in zip(seq_losses, losses, strict=True) for a, b in zip(x, y, strict=True)]
            check[attn] = {
                "max_loss_diff": max(diffs),
                "max_weight_diff": max((weights[n] - w).abs().max().item() for n, w in seq_weights.items()),
            }
    tokens = args.cells * (args.steps - 1) * args.batch * args.seq
    best = {name: min(ts) for name, ts in timed.items()}
    result = {
        "cells": args.cells, "steps": args.steps, "model": f"{args.family}/{args.size}", "vocab": args.vocab,
        "batch": [args.batch, args.seq], "threads": torch.get_num_threads(),
        "ld_preload": os.environ.get("LD_PRELOAD", ""), "seconds": timed,
        "tokens_per_s": {name: round(tokens / s) for name, s in best.items()},
        "speedup_vs_sequential": {name: round(best["sequential"] / s, 3) for name, s in best.items()},
        "numerics": check,
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    write_json(RESULTS / "cells_together.json", result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
