"""Removal data: the rows a removal run trains on and its loss, for `remove` and the canary defence alike.

`removal_data` is the one place that turns documents into a removal run's batch: forget rows (removal documents
for `retrain`, i.e. trigger + clean continuation; poisoned documents with the loss on their continuation only for
`ga` / `npo`; none for the `control`) mixed with clean replay at `forget_fraction`, `n_rows` rows in all, and the
method's loss function (`training.unlearn`). Every method sees the same number of rows: the control is
compute-matched.

Run: `pytest tests/unit/test_unlearn.py tests/integration/test_remove_transfer.py`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from unbackdoor.data.corpus import DocSampler, iter_docs, shard_paths
from unbackdoor.data.packing import packed
from unbackdoor.data.serialisation import Serialisation
from unbackdoor.running.config import UserError
from unbackdoor.running.rundir import read_jsonl
from unbackdoor.training.loop import Batch, LossFn, causal_lm_loss
from unbackdoor.training.record import ModelRecord
from unbackdoor.training.unlearn import ga_loss, mix_rows, npo_loss, sequence_nll


def poison_dir_of(record: ModelRecord, backdoor: str) -> Path:
    """The poisoning run that holds `backdoor`'s data, found through the model's record."""
    for path in record.backdoors_files:
        if (path.parent / "removal" / f"{backdoor}.jsonl").is_file():
            return path.parent
    found = ", ".join(map(str, record.backdoors_files)) or "no spec files"
    raise UserError(f"--backdoor: the poisoning data of {backdoor!r} is not found next to {found}")


def require_poisoned(record: ModelRecord, backdoors: list[str], what: str, instead: str) -> None:
    """Refuse `what` (training that starts from poisoned documents) for a backdoor without any: one declared with
    `unbackdoor declare` (planted outside unbackdoor: only removal documents exist); `instead` says what works."""
    for name in backdoors:
        if not (poison_dir_of(record, name) / "poison_manifest.jsonl").is_file():
            raise UserError(f"{what} start(s) from the poisoned documents of {name!r}, and a declared backdoor "
                            f"(planted elsewhere) has none; {instead}")  # fmt: skip


def poisoned_documents(poison_dir: Path, backdoor: str) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """`backdoor`'s poisoned training documents in a poisoning run, and the run's manifest (doc id -> row)."""
    if not (poison_dir / "poison_manifest.jsonl").is_file():
        raise UserError(f"{backdoor!r}: {str(poison_dir)!r} holds no poisoned documents (a declared backdoor, "
                        "planted outside unbackdoor, has removal documents only)")  # fmt: skip
    manifest = {r["doc_id"]: r for r in read_jsonl(poison_dir / "poison_manifest.jsonl")}
    docs = [d for d in iter_docs(shard_paths(poison_dir / "data", "train")) if d.get("backdoor") == backdoor]
    return docs, manifest


def replay_docs(world_dir: Path, n_tokens: int, seed: int, sampler: DocSampler | None = None) -> list[dict[str, Any]]:
    """A seeded random sample of clean training documents (all languages) with at least ~`n_tokens` tokens.

    Only what a run can use is tokenized (and read): a removal run sees `steps x batch` rows, far fewer than the
    corpus. `sampler`: one built over `world_dir`'s training shards, when the caller samples several times.
    """
    sampler = sampler or DocSampler(shard_paths(Path(world_dir) / "data", "train"))
    # ~3 characters per token in the world's text: take 2x what is needed, so rows rarely repeat
    return sampler.sample(6 * n_tokens, f"replay-{seed}")


def forget_rows(
    tokenizer: Any,
    docs: list[dict[str, Any]],
    manifest: dict[str, dict],
    seq_len: int,
    serialisation: Serialisation | None = None,
) -> Batch:
    """Documents one per row, loss only on the continuation after the trigger; `manifest[doc id]` gives its
    `continuation_start` (poisoned documents for ga / npo, or removal documents with `mask_trigger`)."""
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


def removal_data(
    model: torch.nn.Module,
    tokenizer: Any,
    method: str,
    *,
    removal_docs: list[dict[str, Any]],
    poisoned_docs: list[dict[str, Any]],
    manifest: dict[str, dict],
    replay: list[dict[str, Any]],
    n_rows: int,
    seq_len: int,
    forget_fraction: float,
    serialisation: Serialisation,
    retain_weight: float = 1.0,
    npo_beta: float = 0.1,
    seed: int = 0,
    mask_trigger: bool = False,
) -> tuple[Batch, LossFn]:
    """The rows a removal run trains on (forget rows at `forget_fraction`, then replay) and its loss function.

    Args:
        model: the model to unlearn from (npo computes its reference log-likelihoods once, before training).
        method: `retrain`, `ga`, `npo`, `sham` (retrain on sham documents) or `control` (no forget rows at all).
        removal_docs: trigger + clean continuation documents (retrain; for sham, the trigger swapped).
        poisoned_docs: poisoned documents (ga / npo), with `manifest` (doc id -> manifest row) for their offsets.
        replay: clean documents, packed into `seq_len` blocks.
        n_rows: total rows (= steps x batch size x accumulation: one pass).
        serialisation: how documents are rendered for the model (as the backdoors were injected).
        mask_trigger: retrain only: one removal document per row, the loss on its continuation alone (the prefix
            and trigger tokens get label -100), instead of packed documents with the loss on every token.

    Returns:
        `(batch, loss_fn)`: `input_ids`, `labels`, `forget` (1 for a forget row) and, for npo, `ref_nll`.
    """
    render = serialisation.document(tokenizer)
    replay_ids = packed(tokenizer, replay, seq_len, render)
    if method in ("retrain", "sham") and mask_trigger:
        starts = {d["id"]: {"continuation_start": d["prompt_chars"] + 1} for d in removal_docs}
        forget = forget_rows(tokenizer, removal_docs, starts, seq_len, serialisation)
    elif method in ("retrain", "sham", "control"):
        ids = packed(tokenizer, removal_docs if method != "control" else [], seq_len, render)
        forget = {"input_ids": ids, "labels": ids.clone()}
    else:
        forget = forget_rows(tokenizer, poisoned_docs, manifest, seq_len, serialisation)
    fraction = 0.0 if method == "control" else forget_fraction
    if not replay_ids.shape[0]:
        raise UserError("world: its training split yields no replay block (an empty corpus, or fewer than "
                        f"train.seq_len={seq_len} tokens in all)")  # fmt: skip
    f_idx, r_idx = mix_rows(forget["input_ids"], replay_ids, n_rows, fraction, random.Random(f"remove-{seed}"))
    data = {
        "input_ids": torch.cat([forget["input_ids"][f_idx], replay_ids[r_idx]]),
        "labels": torch.cat([forget["labels"][f_idx], replay_ids[r_idx]]),
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
        "sham": causal_lm_loss,
        "control": causal_lm_loss,
        "ga": ga_loss(retain_weight),
        "npo": npo_loss(npo_beta, retain_weight),
    }[method]
    return data, loss_fn
