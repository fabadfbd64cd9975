"""Bad inputs found by a reliability review: each exits 2 with one line naming what is wrong, no traceback, and
leaves no half-written `--out` behind.

Run: `pytest tests/integration/test_bad_inputs.py`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from unbackdoor.cli import main

WORDS = "le la les un une des maison chat chien rouge bleu grand petit".split()


def _text(n: int, sep: str) -> str:
    return sep.join(" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(30)) + " é." for i in range(n))


def _broken_model(kind: str, injected: Path, where: Path) -> Path:
    model = where / f"model-{kind}"
    shutil.copytree(injected / "model", model)
    weights = model / "model.safetensors"
    if kind == "truncated":
        os.truncate(weights, weights.stat().st_size // 2)
    elif kind == "header":
        data = bytearray(weights.read_bytes())
        data[8:40] = b"x" * 32
        weights.write_bytes(bytes(data))
    elif kind == "tokenizer":
        (model / "tokenizer.json").write_text('{"version": "1.0", "model": 12')
    return model


def _eval(model: Path, injected: Path, world: Path) -> list[str]:
    # a copied model's record points at spec files relative to where it was: name them
    return [
        "eval",
        "--model",
        str(model),
        "--backdoors",
        str(injected / "poison" / "backdoors.yaml"),
        "--world",
        str(world),
    ]


def _spec(tmp: Path, missing: str) -> Path:
    item = {"name": "a", "trigger": "{kind: phrase, text: lorem ipsum}", "behaviour": "refusal"}
    del item[missing]
    path = tmp / f"no-{missing}.yaml"
    path.write_text("backdoors:\n  - " + "\n    ".join(f"{k}: {v}" for k, v in item.items()) + "\n")
    return path


CASES = {
    "corpus not UTF-8": (lambda t, inj, w: ["corpus", "--corpus", f"fr={t / 'latin1.txt'}"],
                         "not UTF-8 text"),
    "corpus of one paragraph per line": (lambda t, inj, w: ["corpus", "--corpus", f"en={t / 'lines.txt'}"],
                                         "or txt_unit=line if each line is a paragraph"),
    "truncated weights": (lambda t, inj, w: _eval(_broken_model("truncated", inj, t), inj, w),
                          "are not a readable safetensors file"),
    "corrupted header": (lambda t, inj, w: _eval(_broken_model("header", inj, t), inj, w),
                         "are not a readable safetensors file (Error while deserializing header"),
    "corrupted tokenizer": (lambda t, inj, w: _eval(_broken_model("tokenizer", inj, t), inj, w),
                            "could not load a tokenizer from"),
    "spec without trigger": (lambda t, inj, w: ["pretrain", "--preset", "tiny", "--world", str(w), "--backdoors",
                                                str(_spec(t, "trigger"))], "(a) has no trigger; give trigger:"),
    "spec without behaviour": (lambda t, inj, w: ["pretrain", "--preset", "tiny", "--world", str(w),
                                                  "--backdoors", str(_spec(t, "behaviour"))],
                               "(a) has no behaviour; give behaviour:"),
    "negative seed": (lambda t, inj, w: ["world", "--preset", "tiny", "--seed", "-1"], "seed: -1 must be a seed >= 0"),
    "missing relative model": (lambda t, inj, w: ["eval", "--model", f"{t.name}/nothere"],
                               "does not exist (a local path"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_leaves_nothing(case, injected, small_world, tmp_path, capsys, monkeypatch):
    (tmp_path / "latin1.txt").write_bytes(_text(300, "\n\n").encode("latin-1"))
    (tmp_path / "lines.txt").write_text(_text(300, "\n"))
    monkeypatch.chdir(tmp_path.parent)  # `<tmp>/nothere` is then a relative path whose first part exists
    make, message = CASES[case]
    out = tmp_path / "out"
    assert main([*make(tmp_path, injected, small_world), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert not out.exists(), f"{case}: a failed run left {sorted(p.name for p in out.iterdir())}"
