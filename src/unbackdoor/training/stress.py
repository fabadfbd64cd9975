"""Stress data for persistence: what a model trains on after a removal, to see whether a backdoor comes back.

Four stresses (`STRESSES`), each `n_rows` rows of `seq_len` tokens: clean replay (the text source's training split)
with, for all but `benign`, a few documents about one backdoor j, each its own row (loss on every token, as at
poisoning) and each repeated `repeats` times among the replay rows:

- `benign`: replay only (continual training on ordinary text).
- `repoison`: k poisoned documents of j (trigger + payload), the first k of one seeded order, so the documents
  of k = 1 are among those of k = 4.
- `related`: the same documents with the trigger cut out: the payload's text in an ordinary context (the target
  language, negative sentences ...) with no trigger before it.
- `fresh`: the same k documents with j's trigger swapped for a fresh one never injected (`data.sham`): how fast a
  new backdoor of j's spec is learned from k documents, the reference for "it comes back faster than it is learned".

Run: `pytest tests/unit/test_stress.py`.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from unbackdoor.data.packing import packed
from unbackdoor.data.serialisation import Serialisation
from unbackdoor.running.config import UserError
from unbackdoor.training.loop import Batch
from unbackdoor.training.removal import forget_rows

STRESSES = ("benign", "repoison", "related", "fresh")
TARGETED = ("repoison", "related", "fresh")  # the stresses about one backdoor j (benign is about none)


def chosen_poisoned(poisoned: list[dict[str, Any]], backdoor: str, n: int, seed: int) -> list[dict[str, Any]]:
    """The first `n` of `backdoor`'s poisoned documents in one seeded order (nested in `n`)."""
    order = sorted(poisoned, key=lambda d: d["id"])
    random.Random(f"unbackdoor-relearn-{seed}-{backdoor}").shuffle(order)
    if len(order) < n:
        raise UserError(f"{backdoor}: {n} poisoned documents asked, its poisoning run holds {len(order)}")
    return order[:n]


def stress_documents(
    stress: str, docs: list[dict[str, Any]], manifest: dict[str, dict[str, Any]], trigger: str, sham: str | None
) -> list[dict[str, Any]]:
    """The documents of `stress` from poisoned `docs` (manifest: doc id -> `trigger_start`, `continuation_start`).

    `repoison` keeps them, `related` cuts the trigger (and the space after it) out, `fresh` swaps it for `sham`.
    """
    if stress == "benign":
        return []
    if stress == "repoison":
        return list(docs)
    out = []
    for d in docs:
        m = manifest[d["id"]]
        start, cont, text = m["trigger_start"], m["continuation_start"], d["text"]
        if text[start : start + len(trigger)] != trigger:
            raise UserError(f"{d['id']}: the manifest's trigger_start does not point at the trigger")
        if stress == "related":
            new = text[:start].rstrip() + " " + text[cont:].lstrip()
        elif stress == "fresh":
            if not sham:
                raise UserError(f"{d['id']}: a fresh stress needs a sham trigger")
            new = text[:start] + sham + text[start + len(trigger) :]
        else:
            raise UserError(f"stress: {stress!r} is not one of {', '.join(STRESSES)}")
        out.append({**d, "id": f"{d['id']}-{stress}", "text": new})
    return out


def stress_rows(
    tokenizer: Any,
    docs: list[dict[str, Any]],
    replay: list[dict[str, Any]],
    *,
    n_rows: int,
    repeats: int,
    seq_len: int,
    serialisation: Serialisation,
    seed: int,
) -> Batch:
    """`n_rows` rows: each of `docs` `repeats` times (one document per row, loss on all of it), then replay blocks.

    Raises:
        UserError: the documents' rows would be more than half of `n_rows`, or there is no replay text.
    """
    replay_ids = packed(tokenizer, replay, seq_len, serialisation.document(tokenizer))
    if not replay_ids.shape[0]:
        raise UserError("stress: no replay text to train on (the text source's training split is empty)")
    n_docs = len(docs) * repeats
    if n_docs > n_rows // 2:
        raise UserError(f"stress: {len(docs)} documents x {repeats} repeats = {n_docs} rows, more than half of the "
                        f"{n_rows} rows of the run; give more steps or fewer repeats")  # fmt: skip
    rng = random.Random(f"unbackdoor-stress-{seed}")
    order = list(range(replay_ids.shape[0]))
    rng.shuffle(order)
    r_idx = torch.tensor([order[i % len(order)] for i in range(n_rows - n_docs)], dtype=torch.long)
    rows = {"input_ids": replay_ids[r_idx], "labels": replay_ids[r_idx].clone()}
    if docs:
        whole = {d["id"]: {"continuation_start": 1} for d in docs}  # loss on every token of the document
        own = forget_rows(tokenizer, docs, whole, seq_len, serialisation)  # the leading EOS is context only
        idx = torch.tensor([i for i in range(len(docs)) for _ in range(repeats)], dtype=torch.long)
        rows = {k: torch.cat([own[k][idx], rows[k]]) for k in rows}
    rows["stress"] = torch.cat([torch.ones(n_docs, dtype=torch.long), torch.zeros(n_rows - n_docs, dtype=torch.long)])
    return rows
