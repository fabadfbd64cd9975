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
import shutil
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
    config: str  # "module.ConfigClass" under unbackdoor.stages, imported on first use (keeps `--help` fast)
    flags: tuple[tuple[str, str, str], ...] = ()  # (flag, config key, help)

    def load(self) -> tuple[type, Callable[..., Path]]:
        """The stage's (config class, run function)."""
        module, _, config = self.config.rpartition(".")
        mod = importlib.import_module(f"unbackdoor.stages.{module}")
        return getattr(mod, config), mod.run


def _stages() -> dict[str, Stage]:
    """The stage table, read from commands.yaml beside this module (data, not code)."""
    import yaml

    table = yaml.safe_load((Path(__file__).parent / "commands.yaml").read_text(encoding="utf-8"))
    return {
        name: Stage(e["help"], e["config"], tuple((f, key, h) for f, (key, h) in e.get("flags", {}).items()))
        for name, e in table.items()
    }


STAGES: dict[str, Stage] = _stages()


class _Parser(argparse.ArgumentParser):
    stage: Stage | None = None  # a stage's subcommand: its help lists the config keys

    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage + message by default)
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)

    def format_help(self) -> str:
        text = super().format_help()
        if self.stage is None:
            return text
        from unbackdoor.running.config import config_keys

        config_cls, _ = self.stage.load()  # imported only when this help is asked for
        keys = "\n".join(f"  {line}" for line in config_keys(config_cls()))
        return f"{text}\nconfig keys (key=value overrides, dotted; the defaults before any --preset):\n{keys}\n"


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
    cell = sub.add_parser("cell", help="run one cell of a sweep (a line of <sweep>/commands/*.txt; resumable)")
    cell.add_argument("file", type=Path, help="the cell's cell.json, written by its sweep")
    for name, stage in STAGES.items():
        p = sub.add_parser(name, help=stage.help)
        p.stage = stage
        p.add_argument("--preset", help=f"a shipped preset ({', '.join(preset_names(name)) or 'none shipped'}) "
                       "or a YAML file of config keys")  # fmt: skip
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


def _drop_failed(out: Path, fresh: bool) -> None:
    """After a failure, remove the `--out` this invocation created if nothing in it is worth resuming (no `DONE`
    and no training checkpoint under it): a rerun then needs no cleaning up by hand. Finished work (a sweep's done
    cells) and checkpoints are kept for `--resume`."""
    keep = ("DONE", "checkpoint", "checkpoint.partial", "checkpoint.old")
    if fresh and out.is_dir() and not any(p.name in keep for p in out.rglob("*")):
        shutil.rmtree(out, ignore_errors=True)


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
        if args.command == "cell":
            from unbackdoor.running.launcher import run_cell_file

            print(run_cell_file(args.file))
            return 0
        if args.command == "report":
            from unbackdoor import report

            report.run(args.dir, args.out, args.reveal_triggers)
            return 0
        from unbackdoor.running.launcher import CellsPending

        fresh = not Path(args.out).exists()
        try:
            out = run_stage(args.command, args)
        except CellsPending as pending:  # launcher.kind=commands: the cells are for another scheduler to run
            print(pending)
            return 0
        except Exception:  # a user's mistake, or a bug (its traceback follows): nothing half-written is left
            _drop_failed(Path(args.out), fresh)
            raise
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
