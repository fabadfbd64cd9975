"""Removal building blocks without a trained model: row mixing, GA and NPO losses on a toy model.

Run: `pytest tests/unit/test_unlearn.py`.
"""

from __future__ import annotations

import random

import pytest
import torch

from unbackdoor.training.unlearn import ga_loss, mix_rows, npo_loss, sequence_nll


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_mix_rows_honours_the_fraction_and_cycles_evenly(fraction):
    forget, replay = torch.zeros(7, 4), torch.zeros(50, 4)
    f, r = mix_rows(forget, replay, 200, fraction, random.Random(0))
    assert len(f) == round(200 * fraction) and len(f) + len(r) == 200
    if len(f):
        counts = torch.bincount(f, minlength=7)
        assert counts.max() - counts.min() <= 1  # every removal document used as often as the others


class Toy(torch.nn.Module):
    """A bigram model: logits depend on the current token only (enough to test losses)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = torch.nn.Embedding(10, 10)

    def forward(self, input_ids):
        return type("Out", (), {"logits": self.table(input_ids)})()


def batch() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    labels = ids.clone()
    labels[0, :2] = -100  # forget row: loss on its continuation only
    return {"input_ids": ids, "labels": labels, "forget": torch.tensor([1, 0])}


def test_sequence_nll_ignores_masked_positions():
    b = batch()
    nll = sequence_nll(Toy(), b)
    assert nll.shape == (2,)
    b2 = {**b, "input_ids": b["input_ids"].clone()}
    b2["input_ids"][0, 0] = 9  # position 0 only predicts label 1, which is masked: the NLL is unchanged
    assert torch.equal(nll, sequence_nll(Toy(), b2))
    b3 = {**b, "labels": b["labels"].clone()}
    b3["labels"][0, 3] = 9
    assert not torch.equal(nll, sequence_nll(Toy(), b3))


def test_ga_ascends_on_forget_rows_and_descends_on_replay():
    model, b = Toy(), batch()
    ga_loss()(model, b).backward()
    grad = model.table.weight.grad
    # Gradient descent on GA raises the forget row's NLL: the step direction opposes plain NLL on that row.
    model2 = Toy()
    sequence_nll(model2, {**b, "labels": torch.where(b["forget"][:, None].bool(), b["labels"], -100)}).sum().backward()
    assert torch.dot(grad[3], model2.table.weight.grad[3]) < 0


def test_npo_is_zero_gradient_free_at_the_reference_and_bounded():
    model, b = Toy(), batch()
    with torch.no_grad():
        ref = sequence_nll(model, b)
    loss = npo_loss(beta=0.1, retain_weight=0.0)(model, {**b, "ref_nll": ref})
    assert loss.item() == pytest.approx(2 / 0.1 * torch.nn.functional.softplus(torch.tensor(0.0)).item())
    far = npo_loss(beta=0.1, retain_weight=0.0)(model, {**b, "ref_nll": ref - 1000})  # model far below reference
    assert 0 <= far.item() < 1e-3
