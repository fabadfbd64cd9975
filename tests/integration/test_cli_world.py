"""The `world` and `poison` stages through the CLI: reproducibility, run directories, bad inputs (exit 2).

Run: `pytest tests/integration/test_cli_world.py`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from unbackdoor.cli import main

WORLD_ARGS = ["tokens=30000", "vocab_size=400", "entities=16", "cities=6"]


def files_hashes(run: Path) -> dict[str, str]:
    return json.loads((run / "summary.json").read_text())["files"]


def test_world_is_reproducible_byte_for_byte(tmp_path):
    assert main(["world", "--preset", "tiny", "--out", str(tmp_path / "a"), *WORLD_ARGS]) == 0
    assert main(["world", "--preset", "tiny", "--out", str(tmp_path / "b"), *WORLD_ARGS]) == 0
    assert main(["world", "--preset", "tiny", "--out", str(tmp_path / "c"), "--seed", "1", *WORLD_ARGS]) == 0
    a, b, c = (files_hashes(tmp_path / x) for x in "abc")
    assert a == b and set(a) == set(c) and a != c
    for split in ("train", "validation", "test"):
        for lang in ("base", "lang_a", "lang_b", "lang_c"):
            assert f"data/{split}/{lang}-00000.jsonl" in a
    assert (tmp_path / "a" / "tokenizer" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer" / "tokenizer.json"
    ).read_bytes()
    assert (tmp_path / "a" / "DONE").is_file()


def test_poison_stage_writes_manifest_with_its_hash(small_world, tmp_path):
    out = tmp_path / "p"
    assert main(["poison", "--world", str(small_world), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    import hashlib

    assert (
        hashlib.sha256((out / "poison_manifest.jsonl").read_bytes()).hexdigest() == summary["poison_manifest_sha256"]
    )
    assert summary["poisoned_docs"] == sum(1 for _ in open(out / "poison_manifest.jsonl"))
    assert sorted(p.stem for p in (out / "removal").iterdir()) == sorted(summary["backdoors"])
    assert summary["serialisation"] == "raw-v1"


def run_cli(capsys, args: list[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["world", "--out", "{tmp}/w", "tokenz=5"], "unknown key tokenz"),
        (["world", "--out", "{tmp}/w", "tokens=-5"], "tokens: -5 must be >= 10000"),
        (["world", "--out", "{tmp}/w", "--preset", "huge"], "'huge' is not a world preset"),
        (["world", "--out", "{tmp}/w", "--seed", "x"], "--seed: 'x' is not an integer"),
        (["poison", "--out", "{tmp}/p", "--world", "{tmp}/nowhere"], "does not exist"),
        (["poison", "--out", "{tmp}/p", "--world", "{world}", "--backdoors", "{tmp}/bad.yaml"], "trigger is empty"),
        (["poison", "--out", "{tmp}/p", "--world", "{world}", "--backdoors", "{tmp}/clash.yaml"], "substring"),
        (["poison", "--out", "{tmp}/p", "--world", "{world}", "recipe.rate=0.5"], "unknown key recipe"),
        (["poison", "--out", "{world}", "--world", "{world}"], "already exists; pass --resume"),
    ],
)
def test_bad_inputs_give_one_line_and_exit_2(small_world, tmp_path, capsys, args, message):
    (tmp_path / "bad.yaml").write_text('backdoors:\n  - name: a\n    trigger: {text: ""}\n    behaviour: phrase\n')
    (tmp_path / "clash.yaml").write_text("backdoors:\n  - {name: a, trigger: {text: foo bar}, behaviour: phrase}\n"
                                         "  - {name: b, trigger: {text: foo}, behaviour: phrase}\n")  # fmt: skip
    args = [a.format(tmp=tmp_path, world=small_world) for a in args]
    code, err = run_cli(capsys, args)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert not (tmp_path / "p").exists() and not (tmp_path / "w").exists()


def test_console_script_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "unbackdoor", "world", "--out", str(tmp_path / "w"), "vocab_size=1"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: vocab_size: 1 must be >= 300"
    assert "Traceback" not in proc.stderr


def test_presets_lists_every_stage(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "backdoors: behaviour6, default8, en-fr3, en-fr6, script6" in out and "world: small, tiny" in out


def test_an_fsdp_launch_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets for an FSDP config
    assert main(["world", "--preset", "tiny", "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip()
    assert "FSDP is not supported yet" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "w").exists()
