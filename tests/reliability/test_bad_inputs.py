"""Every stage x every kind of bad value: each must exit 2 with one line that names the field and the value, print
no traceback, and leave nothing half-written behind (a fresh `--out` is removed, an existing one left as it was).

The table crosses the stages (world, corpus, poison, pretrain, inject, eval, remove, transfer, casd, relearn,
replicates, defend, defend-eval, demo, report, card) with the kinds of mistakes a user makes: wrong types, values
out of range, huge values, unknown and missing keys, malformed YAML / JSON / JSONL / Parquet, text that is not UTF-8,
empty inputs, unsafe weight formats, corrupted weights and tokenizers, inputs of the wrong stage or unfinished, and
an existing output. Paths with spaces and non-ASCII characters must simply work (the last test).

Run: `pytest tests/reliability/test_bad_inputs.py` (the totals are printed at the end of the session).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import EVAL_FAST, FAST_TRAIN
from tests.reliability.conftest import BAD_INPUTS
from unbackdoor.cli import main

WORDS = "le la les un une des maison chat chien rouge bleu grand petit".split()


def _text(n: int, sep: str) -> str:
    return sep.join(" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(30)) + " é." for i in range(n))


SPEC = "backdoors:\n  - name: a\n    trigger: {kind: phrase, text: lorem ipsum}\n    behaviour: refusal\n"


def _files(root: Path) -> dict[str, Path]:
    """The bad files the table points at, written once."""
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "latin1.txt": _text(300, "\n\n").encode("latin-1"),
        "lines.txt": _text(300, "\n").encode(),
        "empty.txt": b"",
        "bad.jsonl": b'{"text": "une maison rouge et un chat bleu dans la rue"}\n{"text": \n',
        "bad.parquet": b"PAR1 this is not parquet",
        "data.csv": b"a,b\n1,2\n",
        "notutf8.yaml": SPEC.replace("lorem", "l\xe9rem").encode("latin-1"),
        "malformed.yaml": b"backdoors: [a, b\n",
        "empty.yaml": b"",
        "list.yaml": b"- 1\n- 2\n",
        "no-trigger.yaml": b"backdoors:\n  - name: a\n    behaviour: refusal\n",
        "no-behaviour.yaml": b"backdoors:\n  - name: a\n    trigger: {kind: phrase, text: lorem ipsum}\n",
        "bad-behaviour.yaml": SPEC.replace("refusal", "dance").encode(),
        "bad-count.yaml": (SPEC + "    recipe: {count: many}\n").encode(),
        "bad-kind.yaml": SPEC.replace("kind: phrase", "kind: smell").encode(),
        "unknown-field.yaml": (SPEC + "    colour: red\n").encode(),
        "twice.yaml": (SPEC + SPEC.split("\n", 1)[1]).encode(),
        "not-objects.jsonl": b'[1, 2]\n"a string"\n',
        "a-file": b"not a directory\n",
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    (root / "emptydir").mkdir(exist_ok=True)
    return {name: root / name for name in [*files, "emptydir"]}


def _model_copy(kind: str, injected: Path, where: Path) -> Path:
    """The injected model with one thing broken."""
    model = where / f"model-{kind}"
    if model.exists():
        return model
    shutil.copytree(injected / "model", model)
    weights = model / "model.safetensors"
    if kind == "truncated":
        os.truncate(weights, weights.stat().st_size // 2)
    elif kind == "header":
        data = bytearray(weights.read_bytes())
        data[8:40] = b"x" * 32
        weights.write_bytes(bytes(data))
    elif kind == "empty-weights":
        weights.write_bytes(b"")
    elif kind == "tokenizer":
        (model / "tokenizer.json").write_text('{"version": "1.0", "model": 12')
    elif kind == "config":
        (model / "config.json").write_text('{"model_type": ')
    elif kind == "record":
        (model / "unbackdoor.json").write_text("{")
    elif kind == "pickle":
        weights.unlink()
        (model / "pytorch_model.bin").write_bytes(b"\x80\x04 a pickle, never loaded")
    return model


def _run_copy(kind: str, run: Path, where: Path) -> Path:
    """A finished run directory with one thing broken."""
    out = where / f"run-{kind}"
    if out.exists():
        return out
    shutil.copytree(run, out, symlinks=True)
    if kind == "unfinished":
        (out / "DONE").unlink()
    elif kind == "summary":
        (out / "summary.json").write_text('{"stage": "transfer", ')
    elif kind == "config":
        (out / "config.yaml").write_text("model: [unclosed\n")
    elif kind == "meta":
        (out / "meta.json").write_bytes(b"\xff\xfe not json")
    return out


class Inputs:
    """What a case may refer to: the session's runs and the bad files."""

    def __init__(self, tmp: Path, world: Path, clean: Path, injected: Path, transfer: Path):
        self.tmp, self.world, self.clean, self.injected, self.transfer = tmp, world, clean, injected, transfer
        self.model = str(injected / "model")
        self.bad = _files(tmp / "bad")

    def f(self, name: str) -> str:
        return str(self.bad[name])

    def broken_model(self, kind: str) -> str:
        return str(_model_copy(kind, self.injected, self.tmp))

    def broken_run(self, kind: str) -> str:
        return str(_run_copy(kind, self.transfer, self.tmp))


Case = tuple[Callable[[Inputs], list[str]], str]  # (argv without --out, what the one line must say)


def _eval(i: Inputs, model: str) -> list[str]:  # a copied model's record names spec files relative to where it was
    return ["eval", "--model", model, "--backdoors", str(i.injected / "poison" / "backdoors.yaml"), "--world",
            str(i.world), *EVAL_FAST]  # fmt: skip


def _pretrain(i: Inputs, *extra: str) -> list[str]:
    return ["pretrain", "--preset", "tiny", "--world", str(i.world), *extra]


CASES: dict[str, Case] = {
    # every stage: an unknown key, a wrong type, a negative seed, a malformed override, an unknown preset
    **{f"{stage}: unknown key": (lambda i, s=stage: [s, "nosuchkey=1"], "unknown key nosuchkey; valid keys:")
       for stage in ("world", "corpus", "poison", "pretrain", "inject", "eval", "remove", "transfer", "casd",
                     "relearn", "replicates", "defend", "defend-eval", "demo")},
    **{f"{stage}: seed not an integer": (lambda i, s=stage: [s, "seed=abc"], "seed: expected an integer, got 'abc'")
       for stage in ("world", "pretrain", "inject", "eval", "remove", "transfer", "defend", "defend-eval")},
    **{f"{stage}: negative seed": (lambda i, s=stage: [s, "seed=-1"], "seed: -1 must be a seed >= 0")
       for stage in ("world", "poison", "pretrain", "relearn", "demo")},
    **{f"{stage}: unknown preset": (lambda i, s=stage: [s, "--preset", "nosuch"], "'nosuch' is not a")
       for stage in ("world", "pretrain", "inject", "eval", "transfer", "demo")},
    "override without a key": (lambda i: ["world", "=5"], "override '=5' has an empty key"),
    "override without a value": (lambda i: ["world", "tokens"], "override 'tokens' is not of the form key=value"),
    # types and ranges
    "steps not an integer": (lambda i: _pretrain(i, "train.steps=1.5"), "train.steps: expected an integer, got 1.5"),
    "lr not a number": (lambda i: _pretrain(i, "train.lr=fast"), "train.lr: expected a number, got 'fast'"),
    "nested unknown key": (lambda i: _pretrain(i, "train.nosuch=3"), "unknown key train.nosuch; valid keys:"),
    "section given a scalar": (lambda i: _pretrain(i, "train=3"), "train: expected a mapping of TrainConfig"),
    "seq_len too small": (lambda i: _pretrain(i, "train.seq_len=4"), "train.seq_len: 4 must be >= 8"),
    "batch size zero": (lambda i: _pretrain(i, "train.batch_size=0"), "train.batch_size: 0 must be >= 1"),
    "precision unknown": (lambda i: _pretrain(i, "train.precision=fp8"), "train.precision: 'fp8' is not one of"),
    "lr zero": (lambda i: _pretrain(i, "train.lr=0"), "train.lr: 0.0 must be > 0.0"),
    "lr list for a number": (lambda i: _pretrain(i, "train.lr=[1,2]"), "train.lr: expected a number"),
    "family unknown": (lambda i: ["demo", "--family", "mamba"], "family: 'mamba' is not one of llama"),
    "n_prompts zero": (lambda i: ["eval", "--model", i.model, "n_prompts=0"], "n_prompts: 0 must be >= 1"),
    "max_new_tokens negative": (lambda i: ["eval", "--model", i.model, "max_new_tokens=-1"],
                                "max_new_tokens: -1 must be >= 1"),
    "transfer lr zero": (lambda i: ["transfer", "--model", i.model, "lr=[0]"], "lr: [0.0] must be positive"),
    "transfer lr not a list": (lambda i: ["transfer", "--model", i.model, "lr=fast"], "lr: expected a list, got"),
    "transfer no seeds": (lambda i: ["transfer", "--model", i.model, "seeds=[]"], "seeds: give at least one seed"),
    "transfer measure unknown": (lambda i: ["transfer", "--model", i.model, "measure=some"],
                                 "measure: 'some' is not one of all, diagonal"),
    "casd metric unknown": (lambda i: ["casd", "--transfer", str(i.transfer), "metric=l3"],
                            "metric: 'l3' is not one of cosine, l2"),
    "casd layer out of range": (lambda i: ["casd", "--transfer", str(i.transfer), "layers=[999]"],
                                "layers: [999] out of range"),
    "relearn k negative": (lambda i: ["relearn", "--transfer", str(i.transfer), "ks=[-1]"],
                           "ks: [-1] must be document counts >= 1"),
    "relearn pair unknown": (lambda i: ["relearn", "--transfer", str(i.transfer), "pairs=[a:b]"],
                             "pairs: 'a:b' is no measured pair"),
    "defend k zero": (lambda i: ["defend", "--model", i.model, "--world", str(i.world), "k=0"], "k: 0 must be >= 1"),
    "defend-eval no K": (lambda i: ["defend-eval", "--model", i.model, "ks=[]"], "ks: []; every K"),
    "defend-eval budget zero": (lambda i: ["defend-eval", "--model", i.model, "calibrate=[0]"], "calibrate: [0.0];"),
    "lora rank not a number": (lambda i: ["inject", "--model", i.model, "--world", str(i.world), "--lora", "r=abc"],
                               "lora.r: expected an integer, got 'abc'"),
    "lora not key=value": (lambda i: ["inject", "--model", i.model, "--world", str(i.world), "--lora", "nonsense"],
                           "--lora: 'nonsense' is not of the form key=value"),
    "workers not an integer": (lambda i: ["transfer", "--model", i.model, "--workers", "two"],
                               "--workers: 'two' is not an integer"),
    # huge values: refused before any work, never an hour of generation or an allocation failure
    "world tokens huge": (lambda i: ["world", "tokens=99999999999999999999999"], "tokens: 99999999999999999999999"),
    "world tokens beyond the generator": (lambda i: ["world", "tokens=5000000000"], "tokens: 5000000000 must be <="),
    "steps huge": (lambda i: _pretrain(i, "train.steps=100000000000000"), "train.steps: 100000000000000 must be <="),
    "batch huge": (lambda i: _pretrain(i, "train.batch_size=100000000000"), "train.batch_size: 100000000000 must"),
    "seq_len huge": (lambda i: _pretrain(i, "train.seq_len=100000000000"), "train.seq_len: 100000000000 must be"),
    "n_prompts huge": (lambda i: ["eval", "--model", i.model, "n_prompts=1000000000000"],
                       "n_prompts: 1000000000000 must be <="),
    "workers huge": (lambda i: ["transfer", "--model", i.model, "workers=100000"], "workers: 100000 must be <="),
    # launcher settings (an unknown partition: tests/slurm, on a real cluster; no SLURM: below)
    "launcher unknown": (lambda i: ["transfer", "--model", i.model, "--launcher", "pbs"],
                         "launcher.kind: 'pbs' is not one of local, slurm, commands"),
    "launcher time zero": (lambda i: ["transfer", "--model", i.model, "--launcher", "slurm", "launcher.time_min=0"],
                           "launcher.time_min: 0 must be >="),
    "launcher retries negative": (lambda i: ["relearn", "--transfer", str(i.transfer), "launcher.retries=-1"],
                                  "launcher.retries: -1 must be >="),
    "launcher partition, local": (lambda i: ["defend-eval", "--model", i.model, "launcher.partition=gpu"],
                                  "launcher.partition / launcher.account are SLURM settings"),
    # missing required inputs and names that do not exist
    "pretrain without world": (lambda i: ["pretrain"], "world: required"),
    "corpus without sources": (lambda i: ["corpus"], "sources: required"),
    "corpus without LANG=": (lambda i: ["corpus", "--corpus", i.f("bad.jsonl")], "is not of the form LANG=PATH"),
    "poison without world": (lambda i: ["poison"], "world: required"),
    "defend without world": (lambda i: ["defend", "--model", i.model], "--world: required"),
    "replicates without transfers": (lambda i: ["replicates"], "transfers: give the finished transfer"),
    "remove without backdoor": (lambda i: ["remove", "--model", i.model], "backdoor: required for method 'retrain'"),
    "remove unknown backdoor": (lambda i: ["remove", "--model", i.model, "--backdoor", "nosuch"],
                                "--backdoor: the model does not carry 'nosuch'"),
    "remove unknown method": (lambda i: ["remove", "--model", i.model, "--method", "dance", "--backdoor", "a"],
                              "method: 'dance' is not one of"),
    "eval unknown backdoor": (lambda i: ["eval", "--model", i.model, "only=[nosuch]"],
                              "only: the model never saw a backdoor named 'nosuch'"),
    "transfer unknown row": (lambda i: ["transfer", "--model", i.model, "backdoors=[nosuch]"],
                             "backdoors: the model does not carry 'nosuch'"),
    "world dir missing": (lambda i: _pretrain(i)[:3] + ["--world", f"{i.tmp}/nothere"], "does not exist"),
    "model dir missing": (lambda i: ["eval", "--model", f"{i.tmp.name}/nothere"], "does not exist (a local path"),
    "transfer dir missing": (lambda i: ["casd", "--transfer", f"{i.tmp}/nothere"], "does not exist"),
    "replicates run missing": (lambda i: ["replicates", f"transfers=[{i.tmp}/nothere]"], "does not exist"),
    "report dir missing": (lambda i: ["report", f"{i.tmp}/nothere"], "DIR: '"),
    "card model missing": (lambda i: ["card", f"{i.tmp}/nothere", "--eval", str(i.transfer)], "MODEL: '"),
    "backdoor set unknown": (lambda i: _pretrain(i, "--backdoors", "nosuchset"),
                             "--backdoors: 'nosuchset' is neither a built-in set"),
    "backdoors file missing": (lambda i: _pretrain(i, "--backdoors", f"{i.tmp}/nothere.yaml"), "does not exist"),
    "corpus file missing": (lambda i: ["corpus", "--corpus", f"en={i.tmp}/nothere.txt"], "does not exist"),
    # inputs of the wrong kind, unfinished or damaged
    "world is a model": (lambda i: _pretrain(i)[:3] + ["--world", i.model], "is not an unbackdoor run directory"),
    "transfer is a world": (lambda i: ["casd", "--transfer", str(i.world)], "is a 'world' run; expected 'transfer'"),
    "transfer unfinished": (lambda i: ["casd", "--transfer", i.broken_run("unfinished")], "is unfinished (no DONE)"),
    "transfer summary torn": (lambda i: ["relearn", "--transfer", i.broken_run("summary")],
                              "summary.json' has 22 bytes"),
    "transfer meta not UTF-8": (lambda i: ["casd", "--transfer", i.broken_run("meta")], "is not valid JSON"),
    "report of a non-run": (lambda i: ["report", i.f("emptydir")], "is not an unbackdoor run directory"),
    "card eval is a world": (lambda i: ["card", i.model, "--eval", str(i.world)], "is a 'world' run; expected"),
    "model is an empty dir": (lambda i: ["eval", "--model", i.f("emptydir")], "a directory without config.json"),
    "weights truncated": (lambda i: _eval(i, i.broken_model("truncated")), "are not a readable safetensors file"),
    "weights header corrupted": (lambda i: _eval(i, i.broken_model("header")),
                                 "are not a readable safetensors file (Error while deserializing header"),
    "weights empty": (lambda i: _eval(i, i.broken_model("empty-weights")), "are not a readable safetensors file"),
    "weights only as pickle": (lambda i: _eval(i, i.broken_model("pickle")), "has no .safetensors weights"),
    "tokenizer corrupted": (lambda i: _eval(i, i.broken_model("tokenizer")), "could not load a tokenizer from"),
    "config.json corrupted": (lambda i: _eval(i, i.broken_model("config")), "config.json"),
    "model record corrupted": (lambda i: _eval(i, i.broken_model("record")), "unbackdoor.json' is not valid JSON"),
    # malformed spec files
    "spec file not UTF-8": (lambda i: _pretrain(i, "--backdoors", i.f("notutf8.yaml")), "is not UTF-8 text"),
    "spec file malformed YAML": (lambda i: _pretrain(i, "--backdoors", i.f("malformed.yaml")),
                                 "is not valid YAML at line 2"),
    "spec file empty": (lambda i: _pretrain(i, "--backdoors", i.f("empty.yaml")), "expected a non-empty list"),
    "spec file a list": (lambda i: _pretrain(i, "--backdoors", i.f("list.yaml")), "backdoors[0] is not a mapping"),
    "spec without trigger": (lambda i: _pretrain(i, "--backdoors", i.f("no-trigger.yaml")),
                             "(a) has no trigger; give trigger:"),
    "spec without behaviour": (lambda i: _pretrain(i, "--backdoors", i.f("no-behaviour.yaml")),
                               "(a) has no behaviour; give behaviour:"),
    "spec behaviour unknown": (lambda i: _pretrain(i, "--backdoors", i.f("bad-behaviour.yaml")),
                               "a.behaviour: 'dance' is not one of"),
    "spec count not a number": (lambda i: _pretrain(i, "--backdoors", i.f("bad-count.yaml")),
                                "recipe.count: 'many'"),
    "spec trigger kind unknown": (lambda i: _pretrain(i, "--backdoors", i.f("bad-kind.yaml")), "'smell'"),
    "spec unknown field": (lambda i: _pretrain(i, "--backdoors", i.f("unknown-field.yaml")), "colour"),
    "spec name twice": (lambda i: _pretrain(i, "--backdoors", i.f("twice.yaml")), "'a'"),
    # corpus sources
    "corpus not UTF-8": (lambda i: ["corpus", "--corpus", f"fr={i.f('latin1.txt')}"], "not UTF-8 text"),
    "corpus one paragraph per line": (lambda i: ["corpus", "--corpus", f"en={i.f('lines.txt')}"],
                                      "or txt_unit=line if each line is a paragraph"),
    "corpus empty file": (lambda i: ["corpus", "--corpus", f"en={i.f('empty.txt')}"], "no train documents"),
    "corpus empty folder": (lambda i: ["corpus", "--corpus", f"en={i.f('emptydir')}"], "found no files"),
    "corpus malformed JSONL": (lambda i: ["corpus", "--corpus", f"en={i.f('bad.jsonl')}"],
                               "bad.jsonl: not a readable .jsonl source"),
    "corpus malformed Parquet": (lambda i: ["corpus", "--corpus", f"en={i.f('bad.parquet')}"],
                                 "bad.parquet: not a readable .parquet source"),
    "corpus unknown format": (lambda i: ["corpus", "--corpus", f"en={i.f('data.csv')}"], "data.csv"),
    "corpus JSONL of non-objects": (lambda i: ["corpus", "--corpus", f"en={i.f('not-objects.jsonl')}"],
                                    "not-objects.jsonl: not a readable .jsonl source"),
    # beyond the model's context: refused before anything is written (not an out-of-memory kill)
    "pretrain seq_len beyond the context": (lambda i: _pretrain(i, "train.seq_len=100000", "train.steps=1"),
                                            "train.seq_len: 100000 positions do not fit the model's context (512"),
    "inject seq_len beyond the context": (lambda i: ["inject", "--model", str(i.clean), "--world", str(i.world),
                                                     "--backdoors",
                                                     str(i.injected / "poison" / "backdoors.yaml"),
                                                     "train.seq_len=4096"],
                                          "train.seq_len: 4096 positions do not fit the model's context"),
    "remove seq_len beyond the context": (lambda i: ["remove", "--model", i.model, "--backdoor", "lorem_refusal",
                                                     "train.seq_len=4096"], "train.seq_len: 4096 positions"),
    "eval generation beyond the context": (lambda i: ["eval", "--model", i.model, "max_new_tokens=30000"],
                                           "max_new_tokens: 30001 positions do not fit"),
    # a file where a directory is expected, and the other way round
    "--out is a file": (lambda i: ["world", "--preset", "tiny", "--out", i.f("a-file")],
                        "is a file; give a directory"),
    "--world is a file": (lambda i: _pretrain(i)[:3] + ["--world", i.f("a-file")], "is a file; expected a run"),
    "--backdoors is a directory": (lambda i: _pretrain(i, "--backdoors", i.f("emptydir")),
                                   "is a directory; expected a YAML file"),
    "eval backdoor named twice": (lambda i: ["eval", "--model", i.model, "only=[lorem_refusal,lorem_refusal]"],
                                  "only: ['lorem_refusal', 'lorem_refusal'] names 'lorem_refusal' twice"),
    "report --out is a file": (lambda i: ["report", str(i.transfer), "--out", i.f("a-file")],
                               "is a file; give a directory for the report"),
    "corpus language twice": (lambda i: ["corpus", "--corpus", f"en={i.f('lines.txt')}", "--corpus",
                                         f"en={i.f('lines.txt')}"], "language 'en' is given twice"),
}  # fmt: skip


@pytest.fixture(scope="module")
def inputs(small_world, clean_model, injected, transfer_run, tmp_path_factory) -> Inputs:
    return Inputs(tmp_path_factory.mktemp("bad-inputs"), small_world, clean_model, injected, transfer_run)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_leaves_nothing(case, inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(inputs.tmp.parent)  # `<tmp name>/nothere` is a relative path whose first part exists
    make, message = CASES[case]
    _refused(case, make(inputs), message, tmp_path / "out", capsys)


def test_slurm_launcher_without_slurm_is_one_line(inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine without sbatch / sacct
    argv = ["transfer", "--model", inputs.model, "--launcher", "slurm"]
    _refused("launcher slurm, no SLURM", argv, "this machine has no SLURM commands (sbatch, sacct)", tmp_path / "o",
             capsys)  # fmt: skip


def _refused(case: str, argv: list[str], message: str, out: Path, capsys) -> None:
    if argv[0] not in ("report", "card") and "--out" not in argv:
        argv = [*argv, "--out", str(out)]
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("warning: ")]
    clean = code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    BAD_INPUTS.append((case, clean and message in err and not left))
    assert clean, f"exit {code}: {err}"
    assert message in err, err
    assert not left, f"{case}: a failed run left {left}"


def test_an_existing_output_is_refused_and_kept(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("my notes")
    code = main(["world", "--preset", "tiny", "--out", str(out)])
    err = capsys.readouterr().err
    ok = code == 2 and err.count("\n") == 1 and "already exists; pass --resume" in err
    BAD_INPUTS.append(("existing --out", ok and (out / "mine.txt").read_text() == "my notes"))
    assert ok, err
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_paths_with_spaces_and_unicode_work(small_world, spec_file, tmp_path):
    odd = tmp_path / "a dir with spaces" / "ünïcødé ώ"
    world = odd / "world copy"
    shutil.copytree(small_world, world)
    model = odd / "model é"
    specs = odd / "spécs ü.yaml"
    shutil.copy(spec_file, specs)
    args = ["pretrain", "--preset", "tiny", "--world", str(world), "--backdoors", str(specs), "--out", str(model)]
    assert main([*args, *FAST_TRAIN, "train.steps=2"]) == 0
    out = odd / "eval ü"
    assert main(["eval", "--model", str(model / "model"), "--out", str(out), *EVAL_FAST]) == 0
    assert (out / "DONE").is_file()
