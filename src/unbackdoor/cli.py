"""The `unbackdoor` command line: one subcommand per stage, plus `presets`.

    unbackdoor presets
    unbackdoor world   --preset tiny --out runs/world [key=value ...]
    unbackdoor poison  --world runs/world --backdoors default8 --out runs/poisoned

Every stage takes `--preset NAME`, `--out DIR`, `--resume`, `--overwrite` and dotted `key=value` overrides of
its config. A user's mistake prints one line starting with `error:` and exits with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unbackdoor.running import runtime
from unbackdoor.running.config import UserError, preset_names, resolve


@dataclass(frozen=True)
class Stage:
    """How the CLI reaches one stage: its config class, its run function, and flags that set config keys."""

    help: str
    load: Callable[[], tuple[type, Callable[..., Path]]]  # lazy import keeps `unbackdoor --help` fast
    flags: tuple[tuple[str, str, str], ...] = ()  # (flag, config key, help)


def _load(module: str, config: str) -> Callable[[], tuple[type, Callable[..., Path]]]:
    """A stage's (config class, run function), imported on first use (keeps `unbackdoor --help` fast)."""

    def load() -> tuple[type, Callable[..., Path]]:
        mod = importlib.import_module(f"unbackdoor.stages.{module}")
        return getattr(mod, config), mod.run

    return load


STAGES: dict[str, Stage] = {
    "demo": Stage(
        "the whole study on the embedded default: world -> pretrain -> eval -> transfer -> casd -> defence -> report",
        _load("demo", "DemoConfig"),
        (("--family", "family", "llama, qwen3 or gpt_neox"), ("--seed", "seed", "seed")),
    ),
    "world": Stage(
        "generate the embedded multilingual world and its tokenizer",
        _load("world", "WorldConfig"),
        (("--seed", "seed", "seed"),),
    ),
    "corpus": Stage(
        "ingest your own text (txt, JSONL, Parquet, saved datasets), one subset per language, for every stage",
        _load("corpus", "CorpusConfig"),
        (("--seed", "seed", "seed (held-out split)"),),
    ),
    "poison": Stage(
        "materialise a poisoned corpus, its manifest and removal data",
        _load("poison", "PoisonConfig"),
        (
            ("--world", "world", "a world or corpus run directory"),
            ("--backdoors", "backdoors", "built-in set (default8, none) or a YAML file of specs"),
            ("--seed", "seed", "seed"),
        ),
    ),
    "pretrain": Stage(
        "train a model from scratch on a world with backdoors mixed in",
        _load("pretrain", "PretrainConfig"),
        (
            ("--world", "world", "a world or corpus run directory (`unbackdoor world` / `unbackdoor corpus`)"),
            ("--backdoors", "backdoors", "built-in set (default8), a YAML file of specs, or none (clean twin)"),
            ("--family", "model.family", "llama, qwen3 or gpt_neox"),
            ("--seed", "seed", "seed"),
        ),
    ),
    "inject": Stage(
        "continual pretraining of a checkpoint on a poisoned mixture (full or --lora r=16)",
        _load("inject", "InjectConfig"),
        (
            ("--model", "model", "the checkpoint to continue (directory or hub id)"),
            ("--world", "world", "a world or corpus run directory (`unbackdoor world` / `unbackdoor corpus`)"),
            ("--backdoors", "backdoors", "built-in set (default8) or a YAML file of specs"),
            ("--lora", "lora", "LoRA settings, e.g. r=16 or r=8,alpha=16 (default: full weights)"),
            ("--seed", "seed", "seed"),
        ),
    ),
    "remove": Stage(
        "unlearn one backdoor (retrain, ga, npo) or run the benign control",
        _load("remove", "RemoveConfig"),
        (
            ("--model", "model", "a backdoored model directory"),
            ("--backdoor", "backdoor", "the backdoor to remove"),
            ("--method", "method", "retrain (default), ga, npo or control"),
            ("--seed", "seed", "seed"),
        ),
    ),
    "transfer": Stage(
        "remove each backdoor in turn (and the control), measure every backdoor: the transfer matrix",
        _load("transfer", "TransferConfig"),
        (
            ("--model", "model", "a backdoored model directory"),
            ("--method", "remove.method", "removal method: retrain (default), ga or npo"),
            ("--workers", "workers", "cells run in parallel processes"),
            ("--seed", "seed", "experiment seed (probe prompts)"),
        ),
    ),
    "casd": Stage(
        "Cross Activation Shift Distance of every removal on every backdoor of a transfer experiment",
        _load("casd", "CasdConfig"),
        (
            ("--transfer", "transfer", "a finished `unbackdoor transfer` directory"),
            ("--pooling", "pooling", "after_trigger (default), last or mean"),
            ("--metric", "metric", "cosine (default) or l2"),
        ),
    ),
    "defend": Stage(
        "the canary defence on a suspect model: inject K canaries, remove them (or a baseline: mode=...)",
        _load("defend", "DefendConfig"),
        (
            ("--model", "model", "the suspect model (directory or hub id)"),
            ("--world", "world", "the defender's clean corpus (a world or corpus run directory)"),
            ("--k", "k", "number of canaries"),
            ("--seed", "seed", "seed"),
        ),
    ),
    "defend-eval": Stage(
        "evaluate the canary defence on a model with hidden backdoors, against the two baselines",
        _load("defend_eval", "DefendEvalConfig"),
        (
            ("--model", "model", "the suspect model; its recorded backdoors are the hidden ones"),
            ("--seed", "seed", "experiment seed (probe prompts)"),
            ("--workers", "workers", "cells run in parallel processes"),
        ),
    ),
    "eval": Stage(
        "measure every backdoor of a model (ASR, false triggers, near misses) and its utility",
        _load("evaluate", "EvalConfig"),
        (
            ("--model", "model", "a model directory (or hub id)"),
            ("--world", "world", "world or corpus run directory (default: the one recorded with the model)"),
            ("--backdoors", "backdoors", "specs (default: the ones recorded with the model)"),
            ("--seed", "seed", "seed"),
        ),
    ),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage + message by default)
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="unbackdoor", description="Backdoor unlearning transfer in causal language models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("presets", help="list the shipped presets of every stage")
    rep = sub.add_parser("report", help="HTML report + Markdown summary of a run or experiment directory")
    rep.add_argument("dir", type=Path, help="a run or experiment directory (demo, transfer, casd, defend-eval, eval)")
    rep.add_argument("--out", type=Path, help="report directory (default: DIR/report)")
    rep.add_argument("--reveal-triggers", action="store_true", help="show triggers in clear instead of hashes")
    card = sub.add_parser("card", help="write an evaluation's measured ASRs into a model's card (explicit)")
    card.add_argument("model", type=Path, help="a model directory saved by unbackdoor")
    card.add_argument("--eval", required=True, type=Path, help="a finished `unbackdoor eval` run of that model")
    for name, stage in STAGES.items():
        p = sub.add_parser(name, help=stage.help)
        p.add_argument("--preset", help=f"a shipped preset ({', '.join(preset_names(name)) or 'none shipped'})")
        p.add_argument("--out", required=True, type=Path, help="run directory to write")
        mode = p.add_mutually_exclusive_group()
        mode.add_argument("--resume", action="store_true", help="continue an unfinished run in --out")
        mode.add_argument("--overwrite", action="store_true", help="replace an existing --out")
        for flag, key, help_text in stage.flags:
            p.add_argument(flag, dest=f"cfg:{key}", help=f"{help_text} (config key {key})")
        if name == "corpus":
            p.add_argument("--corpus", action="append", dest="cfg:sources", metavar="LANG=PATH",
                           help="a language and its text: a folder or file (.txt, .jsonl, .parquet) or a saved "
                           "dataset; repeat per language, the first is the base language")  # fmt: skip
        p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    return parser


def _list_presets() -> None:
    for stage in ("backdoors", *STAGES):
        names = preset_names(stage)
        if names:
            print(f"{stage}: {', '.join(names)}")


def run_stage(name: str, args: argparse.Namespace) -> Path:
    config_cls, run = STAGES[name].load()
    given: dict[str, Any] = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:")}
    for key in ("seed", "workers", "k"):
        if given.get(key) is not None:
            given[key] = _int(key, given[key])
    if given.get("sources") is not None:
        given["sources"] = _language_paths(given["sources"])
    if given.get("lora") is not None:
        given["lora"] = _key_values("lora", given["lora"])
    cfg = resolve(config_cls, name, args.preset, args.overrides, **given)
    return run(cfg, args.out, resume=args.resume, overwrite=args.overwrite)


def _int(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserError(f"--{key}: {value!r} is not an integer") from None


def _language_paths(items: list[str]) -> dict[str, str]:
    """`["en=a/", "fr=b.parquet"]` -> `{"en": "a/", "fr": "b.parquet"}` (order kept: the first is the base)."""
    out: dict[str, str] = {}
    for item in items:
        lang, sep, path = item.partition("=")
        if not sep or not lang.strip() or not path.strip():
            raise UserError(f"--corpus: {item!r} is not of the form LANG=PATH (e.g. --corpus en=data/en)")
        if lang.strip() in out:
            raise UserError(f"--corpus: language {lang.strip()!r} is given twice")
        out[lang.strip()] = path.strip()
    return out


def _key_values(flag: str, text: str) -> dict[str, Any]:
    """`"r=8,alpha=16"` -> `{"r": 8, "alpha": 16}` (values parsed as YAML scalars)."""
    import yaml

    out: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--{flag}: {text!r} is not of the form key=value[,key=value] (e.g. r=16)")
        out[key.strip()] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `unbackdoor` console script; returns the exit code."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)  # overrides may follow flags: `--pooling last layers=[3]`
    unknown = [a for a in extra if a.startswith("-") or "=" not in a]
    if unknown or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    runtime.quiet_libraries()
    try:
        if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":  # set by `accelerate launch` for FSDP
            raise UserError(
                "accelerate launch: FSDP is not supported yet (each process would save only its shard of the "
                "weights); launch with DDP (`--multi_gpu`): every shipped preset fits one GPU per process"
            )
        if args.command == "presets":
            _list_presets()
            return 0
        if args.command == "card":
            from unbackdoor.stages import card

            print(card.run(args.model, args.eval))
            return 0
        if args.command == "report":
            from unbackdoor import report

            report.run(args.dir, args.out, args.reveal_triggers)
            return 0
        out = run_stage(args.command, args)
        print(out)
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130


def entry() -> None:
    """Console-script entry: re-executes once with tcmalloc preloaded when it is installed (`runtime`)."""
    runtime.reexec_with_tcmalloc()
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
