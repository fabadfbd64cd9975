"""CASD identities: the distances, the streaming accumulator, capture on a real HF model, the weight baseline."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from unbackdoor.measure.casd import (
    ShiftAccumulator,
    capture,
    decoder_layers,
    pair_profile,
    shift_distance,
    spearman_ci,
    weight_delta_cosines,
)


def _shifts(seed: int, shape=(5, 3, 8)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_identical_shifts_have_distance_zero(metric):
    a = _shifts(0)
    assert torch.allclose(shift_distance(a, a.clone(), metric), torch.zeros(3, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_symmetric(metric):
    a, b = _shifts(0), _shifts(1)
    assert torch.allclose(shift_distance(a, b, metric), shift_distance(b, a, metric))


def test_cosine_is_scale_invariant_and_l2_is_not():
    a, b = _shifts(0), _shifts(1)
    assert torch.allclose(shift_distance(3.0 * a, 0.5 * b), shift_distance(a, b))
    assert not torch.allclose(shift_distance(3.0 * a, b, "l2"), shift_distance(a, b, "l2"))


def test_known_values_on_a_hand_made_example():
    # one probe, two layers, d = 2. Layer 0: orthogonal shifts; layer 1: opposite shifts.
    a = torch.tensor([[[1.0, 0.0], [2.0, 0.0]]])
    b = torch.tensor([[[0.0, 3.0], [-1.0, 0.0]]])
    assert shift_distance(a, b).tolist() == pytest.approx([1.0, 2.0])
    # l2: layer 0 ||(1,-3)|| / (1 + 3) = sqrt(10)/4 ; layer 1 ||(3,0)|| / (2 + 1) = 1
    assert shift_distance(a, b, "l2").tolist() == pytest.approx([math.sqrt(10) / 4, 1.0])
    # the mean over probes: a second probe with identical shifts halves the distance
    a2, b2 = torch.cat([a, a]), torch.cat([b, a])
    assert shift_distance(a2, b2).tolist() == pytest.approx([0.5, 1.0])


def test_zero_shift_is_no_direction():
    a, z = _shifts(0), torch.zeros(5, 3, 8)
    assert shift_distance(a, z).tolist() == pytest.approx([1.0] * 3)
    assert shift_distance(z, z, "l2").tolist() == pytest.approx([1.0] * 3)


def test_bad_shapes_and_metric_are_refused():
    with pytest.raises(ValueError, match="shapes"):
        shift_distance(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="metric"):
        shift_distance(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), "manhattan")


def test_streaming_equals_one_shot(tmp_path):
    h0, hi, hj = _shifts(0, (37, 3, 8)), _shifts(1, (37, 3, 8)), _shifts(2, (37, 3, 8))
    acc = ShiftAccumulator(3, "cosine")
    for s in range(0, 37, 10):
        acc.add(hi[s : s + 10] - h0[s : s + 10], hj[s : s + 10] - h0[s : s + 10])
    one_shot = shift_distance(hi - h0, hj - h0)
    assert torch.allclose(acc.value(), one_shot)
    paths = []
    for n, t in enumerate((h0, hi, hj)):
        paths.append(tmp_path / f"{n}.safetensors")
        save_file({"acts": t}, str(paths[-1]))
    assert torch.allclose(pair_profile(*paths, "cosine", chunk=8), one_shot)


def _tiny_llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def test_capture_matches_output_hidden_states_and_ignores_padding():
    model = _tiny_llama(0)
    ids = [[1, 5, 6, 7, 8], [1, 9, 10]]
    spans = [(2, 5), (2, 3)]
    acts = capture(model, ids, spans, layers=[0, 2], batch_size=2)
    assert acts.shape == (2, 2, 16) and acts.dtype == torch.float32
    assert len(decoder_layers(model)) == 3
    for row, (seq, (a, b)) in enumerate(zip(ids, spans, strict=True)):
        with torch.no_grad():
            hs = model(torch.tensor([seq]), output_hidden_states=True).hidden_states
        # hidden_states[l + 1] is the output of block l (the last one after the final norm in HF llama)
        assert torch.allclose(acts[row, 0], hs[1][0, a:b].mean(0), atol=1e-5)
    alone = capture(model, ids[1:], spans[1:], layers=[0, 2], batch_size=1)
    assert torch.allclose(acts[1], alone[0], atol=1e-5)  # right padding in a batch changes nothing


def test_weight_delta_cosines(tmp_path):
    base = {"w": torch.zeros(4), "b": torch.zeros(2)}
    models = {
        "x": {"w": torch.tensor([1.0, 0, 0, 0]), "b": torch.zeros(2)},
        "y": {"w": torch.tensor([2.0, 0, 0, 0]), "b": torch.zeros(2)},
        "z": {"w": torch.zeros(4), "b": torch.tensor([0.0, 1.0])},
    }
    save_file(base, str(tmp_path / "base.safetensors"))
    for name, sd in models.items():
        save_file(sd, str(tmp_path / f"{name}.safetensors"))
    cos = weight_delta_cosines(tmp_path / "base.safetensors", {n: tmp_path / f"{n}.safetensors" for n in models})
    assert cos["x"]["y"] == pytest.approx(1.0) and cos["x"]["z"] == pytest.approx(0.0)
    assert cos["y"]["x"] == pytest.approx(cos["x"]["y"])


def test_spearman_with_ci():
    x = list(range(20))
    r = spearman_ci(x, [-v for v in x], n_boot=200)
    assert r["rho"] == pytest.approx(-1.0) and r["hi"] == pytest.approx(-1.0) and r["n"] == 20
    noisy = spearman_ci(x, [(v * 7) % 11 for v in x], n_boot=200)
    assert noisy["lo"] <= noisy["rho"] <= noisy["hi"]
    assert spearman_ci([1, 2], [3, 4])["rho"] is None
    assert spearman_ci([1, 1, 1], [3, 4, 5])["rho"] is None
