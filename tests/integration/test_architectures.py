"""The whole study on a toy twin of each real-size architecture preset (Qwen3 0.6B, Llama 3.2 1B, Gaperon 1.5B):
the same model classes and attention layouts as the checkpoints users run on GPUs, shrunk to run here.

pretrain (backdoors mixed in; or clean, then inject) -> eval -> transfer -> casd -> defend-eval -> report.

Run: `pytest tests/integration/test_architectures.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import DEFEND_FAST, EVAL_FAST, FAST_TRAIN, TRANSFER_FAST, inject
from unbackdoor.cli import main

# As in the paper: Gaperon carries its backdoors from pretraining, Qwen3 and Llama 3 from continual pretraining.
INJECTION = {"qwen3-0.6b": "inject", "llama3.2-1b": "inject", "gaperon-1.5b": "pretrain"}


# The toy twins are the slow tier's (`make test-slow`; `make test` must stay under 10 minutes, and Qwen3's alone
# took 58 s of it): the llama classes run in every other test, the real tier (`make test-real`) runs a real Llama
# checkpoint end to end, backdoors from pretraining run in the demo and reliability tests, and
# tests/unit/test_presets.py builds every architecture's shrunk twin.
ARCHS = [pytest.param(a, marks=pytest.mark.slow) for a in INJECTION]


@pytest.mark.parametrize("arch", ARCHS)
def test_whole_study_on_a_toy_twin_of_each_architecture(arch, small_world: Path, spec_file: Path, tmp_path: Path):
    pt = tmp_path / "pretrain"
    backdoors = str(spec_file) if INJECTION[arch] == "pretrain" else "none"
    args = ["pretrain", "--world", str(small_world), "--backdoors", backdoors, "--out", str(pt)]
    steps = "train.steps=400" if INJECTION[arch] == "pretrain" else "train.steps=150"
    assert main([*args, f"model.config={arch}", "model.shrink_to=tiny", *FAST_TRAIN, steps]) == 0
    config = json.loads((pt / "model" / "config.json").read_text())
    expected = {"qwen3-0.6b": "qwen3", "llama3.2-1b": "llama", "gaperon-1.5b": "llama"}[arch]
    assert config["model_type"] == expected
    assert json.loads((pt / "summary.json").read_text())["architecture"] == arch
    model = str(pt / "model")
    if INJECTION[arch] == "inject":
        assert inject(small_world, pt / "model", spec_file, tmp_path / "inject") == 0
        model = str(tmp_path / "inject" / "model")

    assert main(["eval", "--model", model, "--out", str(tmp_path / "eval"), *EVAL_FAST]) == 0
    ev = json.loads((tmp_path / "eval" / "summary.json").read_text())
    # at least one backdoor learned: its ASR's 95 % interval lies above its false-trigger interval
    assert any(r["asr"]["lo"] > r["false_trigger"]["hi"] for r in ev["backdoors"].values()), ev["backdoors"]

    tr = tmp_path / "transfer"
    fast = [a if not a.startswith("remove.train.steps") else "remove.train.steps=40" for a in TRANSFER_FAST]
    assert main(["transfer", "--model", model, "--out", str(tr), *fast]) == 0
    rows = json.loads((tr / "transfer.json").read_text())["rows"]
    assert set(rows) == {"lorem_refusal", "at_repeat", "control", "sham"}
    assert main(["casd", "--transfer", str(tr), "--out", str(tmp_path / "casd"), "n_probes=16"]) == 0
    assert (tmp_path / "casd" / "casd.json").is_file()

    de = tmp_path / "defence"
    # the defence's stages run on this architecture (every arm, the calibration); whether canaries are learned at
    # this budget is test_defend's question, not this one's
    short = [a.replace("inject.steps=60", "inject.steps=10").replace("remove.steps=30", "remove.steps=10")
             for a in DEFEND_FAST]  # fmt: skip
    assert main(["defend-eval", "--model", model, "--out", str(de), "ks=[1]", "calibrate=[1.0]", *short,
                 *(f"eval.{k}" for k in EVAL_FAST)]) == 0  # fmt: skip
    arms = {c["arm"] for c in json.loads((de / "defend.json").read_text())["cells"]}
    assert arms == {"benign", "defence", "removal_only"}
    assert main(["report", str(tr)]) == 0 and (tr / "report" / "index.html").is_file()
