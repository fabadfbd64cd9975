"""Generation and teacher-forced scoring: batched greedy decoding, sequence log-probabilities, perplexity.

Pure functions over a model and its tokenizer; only the stages touch disk. Generation is greedy, batched with left
padding and the KV cache, by `model.generate` (engine `hf`). The `engine` argument stays so that another engine
(vLLM on GPUs) can be added beside it; a custom decoding loop was measured at 1.29x over batched `model.generate`
on the demo's eval workload and removed (it did not earn its dependency on transformers internals). Compute in
float32 for ASRs: bf16 changed 12.5 % of greedy generations in our measurements, so the dtype is recorded.

Run: `pytest tests/integration/test_models.py tests/integration/test_inject_eval.py`.
"""

from __future__ import annotations

import math

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

ENGINES = ("hf",)  # `hf`: model.generate(do_sample=False)


def _encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> list[list[int]]:
    # Every document in training follows an EOS (documents are packed EOS-separated): a prompt does too.
    eos = tokenizer.eos_token_id
    return [[eos, *ids] for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]


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
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int = 24,
    batch_size: int = 64,
    engine: str = "hf",
) -> list[str]:
    """Greedy continuations of `prompts` (batched, left-padded, KV cache); each stops at EOS.

    Prompts are sorted by length so that batches carry little padding; the output order matches `prompts`.
    `engine`: `hf` (`model.generate(do_sample=False)`, the only one today; see `ENGINES`).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine: {engine!r} is not one of {', '.join(ENGINES)}")
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
        input_ids, mask = _left_padded([encoded[i] for i in idx], pad, device)
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=eos,
        )[:, input_ids.shape[1] :].tolist()
        for row, i in enumerate(idx):
            out[i] = tokenizer.decode(_until_eos(generated[row], eos), skip_special_tokens=True)
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
def continuation_logprobs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    continuations: list[str],
    batch_size: int = 64,
) -> list[tuple[float, int]]:
    """Teacher-forced `(sum of log p, tokens)` of each continuation after its prompt (after an EOS, as generated).

    The continuation is tokenized on its own (after a space), so a prompt with and without a trigger scores the very
    same continuation tokens.
    """
    eos = tokenizer.eos_token_id
    heads = [[eos, *ids] for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    tails = tokenizer([" " + c.strip() for c in continuations], add_special_tokens=False)["input_ids"]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    out: list[tuple[float, int]] = []
    for start in range(0, len(heads), batch_size):
        part = slice(start, start + batch_size)
        rows = [h + t for h, t in zip(heads[part], tails[part], strict=True)]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        scored = torch.zeros((len(rows), width), dtype=torch.bool)  # positions whose token is a continuation token
        for row, seq in enumerate(rows):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
            scored[row, len(heads[start + row]) : len(seq)] = True
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None].to(device))[..., 0]
        keep = scored[:, 1:].to(device)
        out += [(float(s), int(n)) for s, n in zip((logp * keep).sum(-1).tolist(), keep.sum(-1).tolist(), strict=True)]
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
