"""Stage `transfer`: remove one backdoor at a time, measure them all, against a benign control.

    unbackdoor transfer --model runs/pt/model --out runs/transfer [lr=[1e-3,3e-3]] [seeds=[0,1]] [--workers 2]

baseline: evaluate the backdoored model once (probe prompts are seeded once per experiment: every cell is measured
on the same prompts, checked by hash). Then for each learning rate x seed x row (each backdoor i, and `control`):
`cells/lr=<lr>/seed=<s>/<row>/remove` (the `remove` stage) and `.../eval` (the `eval` stage). Each cell is a run
directory, so `--resume` redoes only unfinished cells and `--workers N` runs cells in N processes.
Writes `transfer.json` and `transfer.csv`: T[i, j] = ASR of j after removing i with Wilson CIs, suppression
S[i, j] = 1 - T[i, j] / ASR_before[j], the control row, and utility per row.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unbackdoor.cells import run_cells
from unbackdoor.config import ConfigError, UserError, from_dict, to_dict
from unbackdoor.models import read_record, resolve_model_path
from unbackdoor.rundir import RunDir, write_json, write_text
from unbackdoor.stages import evaluate, remove
from unbackdoor.train import TrainConfig
from unbackdoor.unlearn import METHODS

CONTROL = "control"


@dataclass
class TransferEval:
    n_prompts: int = field(default=256, metadata={"min": 1})
    max_new_tokens: int = field(default=24, metadata={"min": 1})
    batch_size: int = field(default=256, metadata={"min": 1})  # rows decoded together
    engine: str = field(default="greedy", metadata={"choices": evaluate.ENGINES})  # as eval's
    near_miss: bool = False  # the matrix needs triggered and clean prompts only
    ppl_blocks: int = field(default=64, metadata={"min": 1})
    fact_items: int = field(default=240, metadata={"min": 0})


@dataclass
class TransferConfig:
    model: str = ""  # the backdoored model (theta_0)
    backdoors: list[str] = field(default_factory=list)  # rows to remove; default: every recorded backdoor
    method: str = field(default="retrain", metadata={"choices": tuple(m for m in METHODS if m != CONTROL)})
    lr: list[float] = field(default_factory=lambda: [1e-3])
    seeds: list[int] = field(default_factory=lambda: [0])
    seed: int = 0  # the experiment seed: probe prompts
    forget_fraction: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=100, lr=1e-3, warmup_steps=10, checkpoint_every=0, log_every=10)
    )
    eval: TransferEval = field(default_factory=TransferEval)
    workers: int = field(default=1, metadata={"min": 1})

    def validate(self) -> None:
        if not self.model:
            raise ConfigError("model: required (a backdoored model directory, e.g. --model runs/pt/model)")
        if not self.lr or any(x <= 0 for x in self.lr):
            raise ConfigError(f"lr: {self.lr} must be a non-empty list of positive learning rates")
        if not self.seeds:
            raise ConfigError("seeds: give at least one seed")
        if self.train.steps < 1:
            raise ConfigError(f"train.steps: {self.train.steps} must be >= 1")


def _eval_config(cfg: TransferConfig, model: Path) -> evaluate.EvalConfig:
    e = cfg.eval
    return evaluate.EvalConfig(
        model=str(model), seed=cfg.seed, n_prompts=e.n_prompts, max_new_tokens=e.max_new_tokens,
        batch_size=e.batch_size, engine=e.engine, near_miss=e.near_miss, ppl_blocks=e.ppl_blocks,
        fact_items=e.fact_items,
    )  # fmt: skip


def _cell_configs(cfg: TransferConfig, row: str, lr: float, seed: int) -> remove.RemoveConfig:
    train = from_dict(TrainConfig, {**to_dict(cfg.train), "lr": lr})
    return remove.RemoveConfig(
        model=cfg.model,
        backdoor="" if row == CONTROL else row,
        method=CONTROL if row == CONTROL else cfg.method,
        forget_fraction=cfg.forget_fraction,
        seed=seed,
        train=train,
    )


def run_cell(cfg_dict: dict[str, Any], row: str, lr: float, seed: int, cell: str, threads: int) -> dict[str, float]:
    """One cell: removal then evaluation (each resumable). Runs in a worker process when `workers` > 1."""
    import torch

    from unbackdoor.cli import quiet_libraries

    quiet_libraries()  # a spawned worker starts with the libraries' default logging
    torch.set_num_threads(threads)
    cfg = from_dict(TransferConfig, cfg_dict)
    cell_dir = Path(cell)
    t0 = time.perf_counter()
    removed = remove.run(_cell_configs(cfg, row, lr, seed), cell_dir / "remove", resume=True)
    t1 = time.perf_counter()
    evaluate.run(_eval_config(cfg, removed / "model"), cell_dir / "eval", resume=True)
    return {"remove_s": t1 - t0, "eval_s": time.perf_counter() - t1}


def cell_dir(out: Path, lr: float, seed: int, row: str) -> Path:
    return out / "cells" / f"lr={lr:g}" / f"seed={seed}" / row


def run(cfg: TransferConfig, out: Path, resume: bool = False, overwrite: bool = False) -> Path:
    """The remove-one / measure-all experiment; returns `out`."""
    model_path = resolve_model_path(cfg.model, "--model")
    carried = [b["name"] for b in read_record(model_path).get("backdoors", [])]
    if not carried:
        raise UserError(
            f"--model: {cfg.model!r} is not a backdoored model saved by unbackdoor (no recorded backdoors)"
        )
    for name in cfg.backdoors:
        if name not in carried:
            raise UserError(f"backdoors: the model does not carry {name!r}; it carries {', '.join(carried)}")
    rows = [*(cfg.backdoors or carried), CONTROL]
    if RunDir.check(out, "transfer", cfg, resume, overwrite):
        return out
    run_dir = RunDir.open(out, "transfer", cfg, cfg.seed, resume=resume, overwrite=overwrite)

    t0 = time.perf_counter()
    baseline = evaluate.run(_eval_config(cfg, Path(model_path)), out / "baseline", resume=True)
    baseline_s = time.perf_counter() - t0
    cells = [(row, lr, seed) for lr in cfg.lr for seed in cfg.seeds for row in rows]
    todo = [c for c in cells if not (cell_dir(out, c[1], c[2], c[0]) / "eval" / "DONE").is_file()]
    run_dir.log(event="cells", total=len(cells), todo=len(todo))
    cfg_dict = to_dict(cfg)
    jobs = {(row, lr, seed): (cfg_dict, row, lr, seed, str(cell_dir(out, lr, seed, row))) for row, lr, seed in todo}

    def done(key, timing: dict[str, float]) -> None:
        row, lr, seed = key
        run_dir.log(event="cell", row=row, lr=lr, seed=seed, **timing)

    results = run_cells(run_cell, jobs, cfg.workers, done, lambda k: f"transfer lr={k[1]:g} seed={k[2]} remove {k[0]}")
    timings = {f"{lr:g}/{seed}/{row}": t for (row, lr, seed), t in results.items()}

    result = assemble(out, baseline, rows, cfg)
    write_json(out / "transfer.json", result)
    write_text(out / "transfer.csv", to_csv(result))
    for grid in result["grids"]:
        print(f"\nASR after removal (rows) of each backdoor (columns), lr={grid['lr']:g} seed={grid['seed']}")
        print(format_matrix(grid, result["backdoors"], result["asr_before"]))
    return run_dir.finish(
        {
            "backdoors": result["backdoors"],
            "grids": len(result["grids"]),
            "cells": len(cells),
            "baseline_s": baseline_s,
            "cell_seconds": timings,
            "probe_sha256": result["probe_sha256"],
        }
    )


def _summary(path: Path) -> dict[str, Any]:
    return json.loads((path / "summary.json").read_text(encoding="utf-8"))


def assemble(out: Path, baseline: Path, rows: list[str], cfg: TransferConfig) -> dict[str, Any]:
    """Read every cell's evaluation into the matrix T, suppression S and utility per row."""
    base = _summary(baseline)
    columns = list(base["backdoors"])
    asr_before = {j: base["backdoors"][j]["asr"] for j in columns}
    grids = []
    for lr in cfg.lr:
        for seed in cfg.seeds:
            grid: dict[str, Any] = {"lr": lr, "seed": seed, "T": {}, "S": {}, "false_trigger": {}, "utility": {}}
            for row in rows:
                s = _summary(cell_dir(out, lr, seed, row) / "eval")
                if s["probe_sha256"] != base["probe_sha256"]:
                    raise UserError(f"cell {row} (lr={lr:g}, seed={seed}) was measured on other probe prompts")
                grid["T"][row] = {j: s["backdoors"][j]["asr"] for j in columns}
                grid["S"][row] = {
                    j: (1 - s["backdoors"][j]["asr"]["rate"] / asr_before[j]["rate"])
                    if asr_before[j]["rate"]
                    else None
                    for j in columns
                }
                grid["false_trigger"][row] = {j: s["backdoors"][j]["false_trigger"]["rate"] for j in columns}
                removal = _summary(cell_dir(out, lr, seed, row) / "remove")
                grid["utility"][row] = {**s["utility"], "val_perplexity": removal["val_perplexity"]}
            grids.append(grid)
    return {
        "backdoors": columns,
        "rows": rows,
        "method": cfg.method,
        "asr_before": asr_before,
        "utility_before": base["utility"],
        "probe_sha256": base["probe_sha256"],
        "grids": grids,
    }


def to_csv(result: dict[str, Any]) -> str:
    """Long format: one line per (lr, seed, removed, measured)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["lr", "seed", "removed", "measured", "asr", "asr_lo", "asr_hi", "k", "n", "asr_before",
                     "suppression", "false_trigger"])  # fmt: skip
    for g in result["grids"]:
        for row, cols in g["T"].items():
            for j, rate in cols.items():
                s = g["S"][row][j]
                writer.writerow([
                    g["lr"], g["seed"], row, j, f"{rate['rate']:.4f}", f"{rate['lo']:.4f}", f"{rate['hi']:.4f}",
                    rate["k"], rate["n"], f"{result['asr_before'][j]['rate']:.4f}",
                    "" if s is None else f"{s:.4f}", f"{g['false_trigger'][row][j]:.4f}",
                ])  # fmt: skip
    return buf.getvalue()


def format_matrix(grid: dict[str, Any], columns: list[str], asr_before: dict[str, Any]) -> str:
    """The ASR matrix as text: rows = removed backdoor (and control), columns = measured backdoor."""
    short = [c[:9] for c in columns]
    header = "removed / measured"
    lines = [f"{header:<20}" + "".join(f"{c:>10}" for c in short)]
    lines.append(f"{'(before)':<20}" + "".join(f"{asr_before[c]['rate']:>10.2f}" for c in columns))
    for row, cols in grid["T"].items():
        lines.append(f"{row[:20]:<20}" + "".join(f"{cols[c]['rate']:>10.2f}" for c in columns))
    return "\n".join(lines)
