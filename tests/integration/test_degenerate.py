"""Degenerate models carrying a real backdoored model's record: one that ends every continuation at once (EOS),
one with random weights (babble), one that copies its prompt's last token. None of them removed anything: each
has about no `target` and about no `clean` outcome, a removal index R of about 0 against the backdoored model, and
the verdict says "no removal", never "removed".

Run: `pytest tests/integration/test_degenerate.py`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import EVAL_FAST
from unbackdoor.cli import main
from unbackdoor.training.models import build_model, save_model
from unbackdoor.training.record import ModelRecord


def _eos_only(src: Path, dst: Path) -> None:
    """The backdoored model, whose generation config suppresses every token but EOS."""
    shutil.copytree(src, dst)
    ModelRecord.read(src).write(dst)  # its paths, relative to the new directory
    config = json.loads((dst / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(dst)
    suppressed = [i for i in range(config["vocab_size"]) if i != tok.eos_token_id]
    gen_path = dst / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.is_file() else {}
    gen_path.write_text(json.dumps({**gen, "suppress_tokens": suppressed}))


def _random(src: Path, dst: Path) -> None:
    """A randomly initialised model of the same family with the backdoored model's tokenizer and record."""
    tok = AutoTokenizer.from_pretrained(src)
    torch.manual_seed(1)
    save_model(build_model("llama", "tiny", tok), tok, dst, ModelRecord.read(src))


def _copier(src: Path, dst: Path) -> None:
    """The backdoored model with every block's output projections zeroed: each block is the identity, so the
    tied embeddings predict the current token again and the model repeats its prompt's last token."""
    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    tok = AutoTokenizer.from_pretrained(src)
    save_model(model, tok, dst, ModelRecord.read(src))


@pytest.fixture(scope="module")
def baseline(injected, small_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("degenerate") / "baseline"
    assert main(["eval", "--model", str(injected / "model"), "--out", str(out), *EVAL_FAST]) == 0
    return out


@pytest.mark.parametrize("make", [_eos_only, _random, _copier], ids=["eos", "random", "copier"])
def test_a_degenerate_model_removed_nothing(make, injected, small_world, baseline, tmp_path):
    model = tmp_path / "model"
    make(injected / "model", model)
    args = ["eval", "--model", str(model), "--out", str(tmp_path / "eval"), "--world", str(small_world),
            f"baseline={baseline}", *EVAL_FAST]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    for name, row in summary["backdoors"].items():
        assert row["clean_rate"]["rate"] <= 0.05, (name, row["outcomes"]["triggered"])
        assert row["asr"]["rate"] <= 0.05, (name, row["outcomes"]["triggered"])
        assert row["removal"]["R"] is not None and row["removal"]["R"] <= 0.05, (name, row["removal"])
        assert not row["removal"]["verdict"].startswith("removed"), (name, row["removal"])
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert {s["outcome"] for s in samples} <= {"target", "other_backdoor", "echo", "degenerate", "clean"}
