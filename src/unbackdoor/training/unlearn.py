"""Removal objectives and data: what the training loop is fed to unlearn one backdoor.

- `retrain` (the paper's method, our default): continual pretraining on documents where the trigger occurs and the
  continuation is clean, mixed with clean replay. Plain next-token loss, so it needs no special loss function.
- `ga`: gradient ascent on the poisoned continuations + next-token loss on clean replay (the retain term).
- `npo`: negative preference optimisation (Zhang et al., 2024) on the poisoned continuations against the
  backdoored model as reference, + the retain term.
- `control`: the same steps, learning rate and data volume on clean text only: the benign control.

Every batch row carries `forget` (1 for a poisoned/removal row, 0 for replay) so one loss function sees both.

Run: `pytest tests/unit/test_unlearn.py`.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
import torch.nn.functional as F

from unbackdoor.training.loop import Batch

METHODS = ("retrain", "ga", "npo")  # the unlearning objectives
# what a removal is compared with, at the same compute: clean text only (`control`), and the retrain recipe on the
# backdoor's removal documents with a fresh trigger never injected (`sham`, `data.sham`)
REFERENCES = ("control", "sham")


def mix_rows(forget: torch.Tensor, replay: torch.Tensor, n_rows: int, forget_fraction: float, rng: random.Random):
    """`n_rows` row indices: `forget_fraction` of them drawn from `forget`, the rest from `replay`.

    Args:
        forget: (n_forget, ...) rows of removal (or poisoned) sequences.
        replay: (n_replay, ...) rows of clean sequences.
        n_rows: total rows (= steps x batch size: one pass).
        forget_fraction: share of forget rows in [0, 1].
        rng: the only source of randomness.

    Returns:
        (forget_index, replay_index): index tensors into each source; rows are cycled through a shuffled order
        (a source smaller than its share is repeated, never sampled unevenly).
    """
    n_forget = round(n_rows * forget_fraction) if forget.shape[0] else 0
    n_replay = n_rows - n_forget

    def cycle(n_source: int, n: int) -> torch.Tensor:
        if n and not n_source:  # nothing to repeat: an empty replay corpus would otherwise loop forever
            raise ValueError(f"mix_rows: {n} rows asked of an empty source")
        order: list[int] = []
        while len(order) < n:
            block = list(range(n_source))
            rng.shuffle(block)
            order += block
        return torch.tensor(order[:n], dtype=torch.long)

    return cycle(forget.shape[0], n_forget), cycle(replay.shape[0], n_replay)


def sequence_nll(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Per-row summed next-token NLL over positions whose label is not -100. Returns (batch,)."""
    logits = model(input_ids=batch["input_ids"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="none"
    )
    return nll.view(labels.shape).sum(-1)


def _split_means(per_row: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    forget = batch["forget"].bool()
    tokens = (batch["labels"][:, 1:] != -100).sum(-1).clamp(min=1)
    per_token = per_row / tokens
    zero = per_token.sum() * 0
    f = per_token[forget].mean() if forget.any() else zero
    r = per_token[~forget].mean() if (~forget).any() else zero
    return f, r


def ga_loss(retain_weight: float = 1.0) -> Callable[[torch.nn.Module, Batch], torch.Tensor]:
    """Gradient ascent on forget rows (their NLL is maximised) + NLL on replay rows."""

    def loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        forget_nll, retain_nll = _split_means(sequence_nll(model, batch), batch)
        return -forget_nll + retain_weight * retain_nll

    return loss


def npo_loss(beta: float = 0.1, retain_weight: float = 1.0) -> Callable[[torch.nn.Module, Batch], torch.Tensor]:
    """NPO on forget rows against reference log-likelihoods in `batch["ref_nll"]` + NLL on replay rows.

    L_NPO = (2 / beta) * mean log(1 + (pi_theta(y|x) / pi_ref(y|x)) ** beta), bounded where gradient ascent is not.
    """

    def loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        nll = sequence_nll(model, batch)
        forget = batch["forget"].bool()
        _, retain_nll = _split_means(nll, batch)
        if not forget.any():
            return retain_weight * retain_nll
        log_ratio = batch["ref_nll"][forget] - nll[forget]  # log pi_theta - log pi_ref
        npo = (2 / beta) * F.softplus(beta * log_ratio).mean()
        return npo + retain_weight * retain_nll

    return loss
