"""Measurement: ASR with Wilson intervals, batched greedy generation, evaluation prompts, utility.

Pure functions over a model and its tokenizer; only the `eval` stage touches disk. Generation is greedy, batched
with left padding and the KV cache, in float32 (bf16 changed 12.5 % of greedy generations in our measurements, so
ASR is computed in fp32 and the dtype is recorded). Two engines give the same tokens: `greedy_decode`, our loop
(the default, ~1.3-1.5x faster than `model.generate` batched on CPU), and `model.generate` itself (`hf`, the
reference and the fallback).

Run: `pytest tests/unit/test_evaluation.py tests/integration/test_models.py`.
"""

from __future__ import annotations

import inspect
import math
import random
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer

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


ENGINES = ("greedy", "hf")

# Generation-config fields that make `model.generate` differ from plain argmax decoding: a checkpoint that sets one
# of them is decoded by `model.generate` (engine `hf`) so that its own rules apply.
_LOGITS_RULES = (
    "repetition_penalty",
    "no_repeat_ngram_size",
    "bad_words_ids",
    "suppress_tokens",
    "begin_suppress_tokens",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "sequence_bias",
    "min_new_tokens",
    "min_length",
    "encoder_repetition_penalty",
    "renormalize_logits",
    "exponential_decay_length_penalty",
)


class _BufferedLayer(DynamicLayer):
    """A KV-cache layer written in place into a buffer sized for the whole generation.

    HF's `DynamicLayer` concatenates every step (a copy of the whole cache each time: 18-25 % of batched decoding on
    CPU, measured); this one writes the new position into preallocated memory and hands attention a view.
    `kbuf`, `vbuf`: (batch, kv_heads, capacity, head_dim); `keys`, `values`: their first `length` positions.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.allocate(key_states.shape[0], key_states, value_states)

    def allocate(self, batch: int, key_like: torch.Tensor, value_like: torch.Tensor) -> None:
        """Empty buffers for `batch` rows, shaped and typed like `key_like` / `value_like` past dim 0.

        Positions are written before they are read, except the left padding, which `greedy_decode` zeroes (masked
        keys must hold finite numbers)."""
        self.device = key_like.device
        self.kbuf = key_like.new_empty(batch, key_like.shape[1], self.capacity, key_like.shape[3])
        self.vbuf = value_like.new_empty(batch, value_like.shape[1], self.capacity, value_like.shape[3])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        self.kbuf[:, :, self.length : end] = key_states
        self.vbuf[:, :, self.length : end] = value_states
        self.set_length(end)
        return self.keys, self.values

    def set_length(self, length: int) -> None:
        self.length = length
        self.keys, self.values = self.kbuf[:, :, :length], self.vbuf[:, :, :length]

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        # only the filled part is copied; the rest of the buffer is written before it is read
        kbuf = self.kbuf.new_empty(len(indices), *self.kbuf.shape[1:])
        vbuf = self.vbuf.new_empty(len(indices), *self.vbuf.shape[1:])
        kbuf[:, :, : self.length] = self.keys.index_select(0, indices)
        vbuf[:, :, : self.length] = self.values.index_select(0, indices)
        self.kbuf, self.vbuf = kbuf, vbuf
        self.set_length(self.length)


def _buffered_cache(model: PreTrainedModel, capacity: int) -> DynamicCache | None:
    """A cache of `_BufferedLayer`s for `model`, or None when its layers are not plain dynamic ones (sliding
    windows, linear attention, ...): those models are decoded by `model.generate`."""
    try:
        cache = DynamicCache(config=model.config)
    except (TypeError, ValueError, KeyError):
        return None
    if not cache.layers or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    cache.layers = [_BufferedLayer(capacity) for _ in cache.layers]
    return cache


def greedy_engine_supported(model: PreTrainedModel) -> bool:
    """Whether `greedy_decode` reproduces `model.generate(do_sample=False)` for this model: a decoder with plain
    dynamic KV-cache layers that takes position ids, and a generation config without logits rules."""
    params = inspect.signature(model.forward).parameters
    if "position_ids" not in params or not ({"cache", "past_key_values"} & set(params)):
        return False
    config = getattr(model, "generation_config", None)
    if config is not None:
        default = type(config)()
        if any(getattr(config, k, None) != getattr(default, k, None) for k in _LOGITS_RULES):
            return False
    return _buffered_cache(model, 1) is not None


def resolve_engine(model: PreTrainedModel, engine: str) -> str:
    """The engine that decodes for `engine` on `model`: `greedy` falls back to `hf` where it is not supported."""
    if engine not in ENGINES:
        raise ValueError(f"engine: {engine!r} is not one of {', '.join(ENGINES)}")
    return "hf" if engine == "greedy" and not greedy_engine_supported(model) else engine


def _until_eos(ids: list[int], eos: int) -> list[int]:
    """A generated row up to its first EOS (excluded)."""
    return ids[: ids.index(eos)] if eos in ids else ids


def _left_padded(rows: list[list[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """`(input_ids, attention_mask)` of token lists, right-aligned (left padding), each `(len(rows), width)`."""
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        mask[row, width - len(ids) :] = 1
    return input_ids.to(device), mask.to(device)


@torch.inference_mode()
def greedy_decode(
    model: PreTrainedModel,
    rows: list[list[int]],
    max_new_tokens: int,
    eos: int,
    pad: int,
    prefill_tokens: int = 4096,
    compact_at: float = 0.25,
) -> list[list[int]]:
    """Greedy continuations of one batch of token lists (sorted by length), each up to its EOS (excluded).

    The tokens of `model.generate(do_sample=False)` (tested on trained models of every family), computed with less
    waste on small models: the prompts are prefilled in slices of about `prefill_tokens` padded tokens (each slice
    padded to its own width, not the batch's), the KV cache is written in place (`_BufferedLayer`), and finished rows
    leave the batch once they are `compact_at` of it (HF's loop computes them until the last row ends).
    Needs `greedy_engine_supported(model)`.
    """
    if not rows:
        return []
    device = next(model.parameters()).device
    n, width = len(rows), max(map(len, rows))
    cache = _buffered_cache(model, width + max_new_tokens)
    params = inspect.signature(model.forward).parameters
    cache_key = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.x
    keep_last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def last_logits(ids: torch.Tensor, mask: torch.Tensor, position: torch.Tensor, cache: DynamicCache):
        out = model(input_ids=ids, attention_mask=mask, position_ids=position, **{cache_key: cache}, **keep_last)
        return out.logits[:, -1].float()  # (batch, vocab)

    mask = torch.ones((n, width + max_new_tokens), dtype=torch.long, device=device)
    logits = []
    start = 0
    while start < n:  # prefill, slice by slice; each slice's keys and values land right-aligned in the batch's cache
        end = start + 1
        while end < n and (end + 1 - start) * len(rows[end]) <= prefill_tokens:
            end += 1
        ids, part_mask = _left_padded(rows[start:end], pad, device)
        w = ids.shape[1]
        part = _buffered_cache(model, w)
        logits.append(last_logits(ids, part_mask, (part_mask.cumsum(-1) - 1).clamp(min=0), part))
        mask[start:end, :width] = 0
        mask[start:end, width - w : width] = part_mask
        for whole, piece in zip(cache.layers, part.layers, strict=True):
            if not whole.is_initialized:
                whole.allocate(n, piece.kbuf, piece.vbuf)
            whole.kbuf[start:end, :, : width - w] = 0
            whole.vbuf[start:end, :, : width - w] = 0
            whole.kbuf[start:end, :, width - w : width] = piece.kbuf
            whole.vbuf[start:end, :, width - w : width] = piece.vbuf
        start = end
    for layer in cache.layers:
        layer.set_length(width)
    next_logits = torch.cat(logits)
    position = mask[:, :width].sum(-1, keepdim=True) - 1  # (batch, 1): the last prompt token's position
    alive = torch.arange(n, device=device)  # which input row each batch row is
    new = torch.full((n, max_new_tokens), eos, dtype=torch.long, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        token = torch.where(done, eos, next_logits.argmax(-1))
        new[alive, step] = token
        done = done | (token == eos)
        n_done = int(done.sum())
        if step == max_new_tokens - 1 or n_done == len(done):
            break
        if n_done >= compact_at * len(done):  # drop finished rows (and their cache) in one copy
            keep = (~done).nonzero().squeeze(1)
            alive, token, mask, position, done = alive[keep], token[keep], mask[keep], position[keep], done[keep]
            cache.batch_select_indices(keep)
        position = position + 1
        next_logits = last_logits(token[:, None], mask[:, : width + step + 1], position, cache)
    return [_until_eos(ids, eos) for ids in new.tolist()]


@torch.inference_mode()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int = 24,
    batch_size: int = 64,
    engine: str = "greedy",
) -> list[str]:
    """Greedy continuations of `prompts` (batched, left-padded, KV cache); each stops at EOS.

    Prompts are sorted by length so that batches carry little padding; the output order matches `prompts`.
    `engine`: `greedy` (`greedy_decode`, the default: the same tokens as `model.generate`, faster; models it does not
    support fall back to `hf`) or `hf` (`model.generate`, the reference).
    """
    engine = resolve_engine(model, engine)
    if not prompts:
        return []
    encoded = _encode_prompts(tokenizer, prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    out: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        if engine == "greedy":
            new = greedy_decode(model, [encoded[i] for i in idx], max_new_tokens, eos, pad)
        else:
            input_ids, mask = _left_padded([encoded[i] for i in idx], pad, device)
            generated = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=eos,
            )[:, input_ids.shape[1] :].tolist()
            new = [_until_eos(ids, eos) for ids in generated]
        for row, i in enumerate(idx):
            out[i] = tokenizer.decode(new[row], skip_special_tokens=True)
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
