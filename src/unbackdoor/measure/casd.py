"""Cross Activation Shift Distance (CASD): does removing backdoor i move trigger-j activations like removing j?

Our definition (the paper's exact formula is not public; this one is documented as ours and swappable):

    Delta_i^l(x) = h^l(x; theta_i) - h^l(x; theta_0)       residual stream after block l, pooled over positions
    CASD^l(i, j) = mean over x in probes(j) of d(Delta_i^l(x), Delta_j^l(x))
    CASD(i, j)   = mean over the chosen layers of CASD^l(i, j)

with d = 1 - cos (the default, "cosine") or the normalised L2 distance ||a - b|| / (||a|| + ||b||) ("l2", in
[0, 1], sensitive to magnitude as well as direction). theta_0 is the backdoored model, theta_i the model after
removing i. CASD(j, j) = 0 by construction; a small CASD(i, j) says removal i pushed trigger-j activations the way
removing j itself does, and predicts transfer.

Shapes: activations are `(probes, layers, d_model)` float32 tensors; per-layer distances are `(layers,)`.
Capture runs the unmodified Hugging Face model with forward hooks on its decoder blocks, pools in float32 inside
the hook (memory per batch: batch x layers x d_model), and never keeps per-token states.

Run: `pytest tests/unit/test_casd.py`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from transformers import PreTrainedModel, PreTrainedTokenizerBase

POOLINGS = ("after_trigger", "last", "mean")
METRICS = ("cosine", "l2")
EPS = 1e-12


# ---- distances ----------------------------------------------------------------------------------------------
def shift_distance(a: torch.Tensor, b: torch.Tensor, metric: str = "cosine") -> torch.Tensor:
    """Per-layer distance between two activation shifts, averaged over probes.

    Args:
        a: `(probes, layers, d_model)` shifts of one removal on a probe set.
        b: the same shape, the shifts of another removal on the same probes.
        metric: "cosine" (1 - cos, in [0, 2]; invariant to scaling either shift by a positive factor) or
            "l2" (||a - b|| / (||a|| + ||b||), in [0, 1]).

    Returns:
        `(layers,)` float64: the mean over probes of the distance at each layer. Both are symmetric in a and b;
        a shift of exactly zero has distance 1 from anything under "cosine" (no direction) and under "l2".
    """
    if a.shape != b.shape or a.dim() != 3:
        raise ValueError(f"shift_distance: shapes {tuple(a.shape)} and {tuple(b.shape)}; need equal (P, L, D)")
    a, b = a.double(), b.double()
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    if metric == "cosine":
        d = 1 - (a * b).sum(-1) / (na * nb).clamp_min(EPS)
    elif metric == "l2":
        d = (a - b).norm(dim=-1) / (na + nb).clamp_min(EPS)
        d = torch.where((na + nb) > EPS, d, torch.ones_like(d))
    else:
        raise ValueError(f"metric: {metric!r}; choose one of {METRICS}")
    return d.mean(0)


class ShiftAccumulator:
    """Streaming mean of `shift_distance` over probe chunks: memory is `layers` floats per pair."""

    def __init__(self, n_layers: int, metric: str) -> None:
        self.metric = metric
        self.total = torch.zeros(n_layers, dtype=torch.float64)
        self.count = 0

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        self.total += shift_distance(a, b, self.metric) * a.shape[0]
        self.count += a.shape[0]

    def value(self) -> torch.Tensor:
        return self.total / max(1, self.count)


# ---- activation capture -------------------------------------------------------------------------------------
def decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The model's stack of decoder blocks (llama/qwen3: `model.layers`, gpt_neox: `gpt_neox.layers`, ...)."""
    n = model.config.num_hidden_layers
    base = model.base_model
    for name in ("layers", "h", "blocks", "decoder.layers"):
        module = base
        for part in name.split("."):
            module = getattr(module, part, None)
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    for module in base.modules():  # any other architecture: the first ModuleList with one entry per layer
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"{type(model).__name__}: no list of {n} decoder blocks found")


def probe_tokens(
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    continuations: list[str],
    pooling: str,
    continuation_tokens: int = 16,
) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Token ids of EOS + prompt (+ the clean continuation) and the `[start, end)` positions to pool.

    "after_trigger": from the last prompt token (the trigger's end, which predicts the continuation) through
    `continuation_tokens` tokens of the clean continuation; "last": the last prompt token only; "mean": every
    token of prompt and continuation.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling: {pooling!r}; choose one of {POOLINGS}")
    eos = tokenizer.eos_token_id
    heads = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    tails = tokenizer([" " + c if c else "" for c in continuations], add_special_tokens=False)["input_ids"]
    ids, spans = [], []
    for head, tail in zip(heads, tails, strict=True):
        tail = tail[:continuation_tokens] if pooling != "last" else []
        seq = [eos, *head, *tail]
        ids.append(seq)
        last = len(head)  # index of the last prompt token in seq (seq[0] is EOS)
        spans.append({"after_trigger": (last, len(seq)), "last": (last, last + 1), "mean": (0, len(seq))}[pooling])
    return ids, spans


@torch.inference_mode()
def capture(
    model: PreTrainedModel,
    ids: list[list[int]],
    spans: list[tuple[int, int]],
    layers: list[int],
    batch_size: int = 64,
    pad_token_id: int = 0,
) -> torch.Tensor:
    """Pooled residual stream after each chosen block: `(probes, len(layers), d_model)` float32.

    Runs the model's own forward (hooks only read the blocks' outputs), right-padded, in the model's dtype;
    each block's output is pooled over the row's `[start, end)` span in float32 inside the hook.
    """
    blocks = decoder_layers(model)
    device = next(model.parameters()).device
    out = torch.zeros(len(ids), len(layers), model.config.hidden_size, dtype=torch.float32)
    weights: torch.Tensor | None = None
    current: list[torch.Tensor | None] = [None] * len(layers)

    def hook(slot: int):
        def fn(_module, _inputs, output):
            h = output[0] if isinstance(output, tuple) else output
            current[slot] = torch.einsum("btd,bt->bd", h.float(), weights)

        return fn

    handles = [blocks[layer].register_forward_hook(hook(slot)) for slot, layer in enumerate(layers)]
    try:
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            width = max(map(len, chunk))
            input_ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            w = torch.zeros((len(chunk), width), dtype=torch.float32)
            for row, seq in enumerate(chunk):
                input_ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
                a, b = spans[start + row]
                w[row, a:b] = 1.0 / (b - a)
            weights = w.to(device)
            model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False)
            for slot in range(len(layers)):
                out[start : start + len(chunk), slot] = current[slot].cpu()
    finally:
        for handle in handles:
            handle.remove()
    return out


def read_chunks(path: Path, chunk: int = 256) -> Iterator[torch.Tensor]:
    """Stream `(chunk, layers, d_model)` slices of the `acts` tensor of a safetensors file."""
    with safe_open(str(path), framework="pt") as f:
        acts = f.get_slice("acts")
        n = acts.get_shape()[0]
        for start in range(0, n, chunk):
            yield acts[start : start + chunk]


def pair_profile(base: Path, removal_i: Path, removal_j: Path, metric: str, chunk: int = 256) -> torch.Tensor:
    """CASD^l(i, j) for every layer, streamed from three `(probes, layers, d_model)` activation files.

    Args:
        base: theta_0's activations on probes(j).
        removal_i: theta_i's activations on the same probes.
        removal_j: theta_j's activations on the same probes.
    """
    acc: ShiftAccumulator | None = None
    for h0, hi, hj in zip(read_chunks(base, chunk), read_chunks(removal_i, chunk), read_chunks(removal_j, chunk),
                          strict=True):  # fmt: skip
        acc = acc or ShiftAccumulator(h0.shape[1], metric)
        acc.add(hi - h0, hj - h0)
    if acc is None:
        raise ValueError(f"{base}: no probes")
    return acc.value()


# ---- weight-space baseline ----------------------------------------------------------------------------------
def weight_delta_cosines(base: Path, others: dict[str, Path]) -> dict[str, dict[str, float]]:
    """cos(theta_i - theta_0, theta_k - theta_0) over all parameters, for every pair of models in `others`.

    Streams one parameter name at a time from the safetensors files (memory: one tensor per model), and
    accumulates the Gram matrix of the deltas in float64.
    """
    names = list(others)
    gram = np.zeros((len(names), len(names)))
    files = {n: safe_open(str(p), framework="pt") for n, p in others.items()}
    with safe_open(str(base), framework="pt") as f0:
        for key in f0.keys():
            t0 = f0.get_tensor(key).double().flatten()
            deltas = torch.stack([files[n].get_tensor(key).double().flatten() - t0 for n in names])
            gram += (deltas @ deltas.T).numpy()
    norms = np.sqrt(np.clip(np.diag(gram), EPS, None))
    cos = gram / np.outer(norms, norms)
    return {a: {b: float(cos[x, y]) for y, b in enumerate(names)} for x, a in enumerate(names)}


# ---- relation to transfer -----------------------------------------------------------------------------------
def spearman_ci(x: list[float], y: list[float], n_boot: int = 2000, seed: int = 0) -> dict[str, float | None]:
    """Spearman's rho between x and y with a percentile bootstrap 95 % CI over pairs (scipy.stats).

    Returns `{"rho", "lo", "hi", "n"}`; rho is None when it is undefined (fewer than 3 pairs, or a constant side).
    """
    from scipy import stats

    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(xs)
    if n < 3 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return {"rho": None, "lo": None, "hi": None, "n": n}
    rho = float(stats.spearmanr(xs, ys).statistic)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        if np.ptp(xs[idx]) > 0 and np.ptp(ys[idx]) > 0:
            boots.append(stats.spearmanr(xs[idx], ys[idx]).statistic)
    lo, hi = (float(v) for v in np.nanpercentile(boots, [2.5, 97.5])) if boots else (None, None)
    return {"rho": rho, "lo": lo, "hi": hi, "n": n}
