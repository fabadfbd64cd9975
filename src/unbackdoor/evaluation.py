"""Measurement: ASR with Wilson intervals, batched greedy generation, evaluation prompts, utility.

Pure functions over a model and its tokenizer; only the `eval` stage touches disk. Generation is greedy, batched
with left padding and the KV cache, in float32 (bf16 changed 12.5 % of greedy generations in our measurements, so
ASR is computed in fp32 and the dtype is recorded).

Run: `pytest tests/unit/test_evaluation.py`.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unbackdoor.backdoors import BackdoorSpec
from unbackdoor.poison import insertion_point, triggered_prefix


@dataclass(frozen=True)
class Rate:
    """k successes out of n, with a Wilson score interval."""

    k: int
    n: int
    rate: float
    lo: float
    hi: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def wilson(k: int, n: int, z: float = 1.959964) -> Rate:
    """Wilson score interval for a binomial proportion (95 % by default).

    Args:
        k: successes.
        n: trials (0 gives the uninformative interval [0, 1]).
        z: normal quantile.

    Returns:
        `Rate(k, n, k / n, lo, hi)`.
    """
    if n == 0:
        return Rate(0, 0, float("nan"), 0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Rate(k, n, p, max(0.0, centre - half), min(1.0, centre + half))


def attack_success(verdicts: list[bool]) -> Rate:
    """ASR (or any behaviour rate) of a list of judge verdicts."""
    return wilson(sum(verdicts), len(verdicts))


# ---- prompts ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    """One evaluation context: the clean text before the insertion point, from a held-out document."""

    doc_id: str
    head: str  # clean text up to the insertion point (may be "" for prefix placement)


def make_probes(
    docs: list[dict[str, Any]], spec: BackdoorSpec, n: int, rng: random.Random, languages: list[str]
) -> list[Probe]:
    """`n` held-out contexts in `languages` that can host `spec`'s placement (drawn without replacement, then cycled).

    `languages`: where the trigger goes (`backdoors.spec_languages(spec, source)`).
    """
    pool = [d for d in docs if d["lang"] in languages]
    rng.shuffle(pool)
    probes = []
    for d in pool:
        at = insertion_point(d["text"], spec.recipe.placement, rng)
        if at is not None:
            probes.append(Probe(d["id"], d["text"][:at].rstrip()))
        if len(probes) == n:
            break
    if not probes:
        return []
    return [probes[i % len(probes)] for i in range(n)]


def near_miss(trigger: str, rng: random.Random) -> str:
    """The trigger with one word dropped (multi-word triggers, half the time) or one character changed."""
    parts = trigger.split(" ")
    if len(parts) > 1 and rng.random() < 0.5:
        del parts[rng.randrange(len(parts))]
        return " ".join(parts)
    i = rng.randrange(len(trigger))
    while trigger[i] == " ":
        i = rng.randrange(len(trigger))
    alphabet = "abcdefghijklmnopqrstuvwxyz" if trigger[i].isascii() else trigger.replace(" ", "")
    choices = [c for c in alphabet if c != trigger[i]] or ["x"]
    return trigger[:i] + rng.choice(choices) + trigger[i + 1 :]


def prompt_text(head: str, trigger: str | None) -> str:
    """The serialised prompt (raw-v1): the context, then the trigger; without a trigger, the context alone."""
    return triggered_prefix(head, len(head), trigger) if trigger else head


# ---- generation and scoring ---------------------------------------------------------------------------------
def _encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> list[list[int]]:
    # Every document in training follows an EOS (documents are packed EOS-separated): a prompt does too.
    eos = tokenizer.eos_token_id
    return [[eos, *ids] for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]


@torch.inference_mode()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int = 24,
    batch_size: int = 64,
) -> list[str]:
    """Greedy continuations of `prompts` (batched, left-padded, KV cache); each stops at EOS.

    Prompts are sorted by length so that batches carry little padding; the output order matches `prompts`.
    """
    encoded = _encode_prompts(tokenizer, prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    out: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids = encoded[i]
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            mask[row, width - len(ids) :] = 1
        generated = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=eos,
        )[:, width:]
        for row, i in enumerate(idx):
            ids = generated[row].tolist()
            if eos in ids:
                ids = ids[: ids.index(eos)]
            out[i] = tokenizer.decode(ids, skip_special_tokens=True)
    return out


@torch.inference_mode()
def sequence_logprobs(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], batch_size: int = 64
) -> list[float]:
    """Total log-probability of each text (after an EOS), teacher-forced."""
    encoded = _encode_prompts(tokenizer, texts)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    out: list[float] = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, seq in enumerate(chunk):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None].to(device))[..., 0]
        out += (logp * mask[:, 1:].to(device)).sum(-1).tolist()
    return out


@torch.inference_mode()
def perplexity(model: PreTrainedModel, blocks: torch.Tensor, batch_size: int = 32) -> float:
    """exp(mean next-token loss) over packed `(n_blocks, seq_len)` blocks."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, blocks.shape[0], batch_size):
        x = blocks[start : start + batch_size].to(device)
        logits = model(input_ids=x).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
        )
        total += loss.item()
        count += x[:, 1:].numel()
    return math.exp(total / max(1, count))
