"""Stage `transfer`: remove one backdoor at a time, measure them all, against a benign control.

    unbackdoor transfer --model runs/pt/model --out runs/transfer [lr=[1e-3,3e-3]] [seeds=[0,1]] [--workers 2]

baseline: evaluate the backdoored model once (probe prompts are seeded once per experiment: every cell is measured
on the same prompts, checked by hash). Then for each learning rate x seed x row (each backdoor i, and `control`):
`cells/lr=<lr>/seed=<s>/<row>/remove` (the `remove` stage) and `.../eval` (the `eval` stage). Each cell is a run
directory, so `--resume` redoes only unfinished cells; `--workers N` runs cells in N processes, `--launcher slurm`
as cluster jobs, `--launcher commands` writes their command lines for another scheduler (`running.launcher`).
Writes `transfer.json` and `transfer.csv`: T[i, j] = ASR of j after removing i with Wilson CIs, the judge-based
suppression S[i, j] = 1 - T[i, j] / ASR_before[j], the clean-continuation rate C[i, j] and the removal index
R[i, j] = (C[i, j] - C_before[j]) / (1 - C_before[j]) (what "removed" means: see `measure.outcomes`), the outcome
composition and teacher-forced measures of every cell, the control row, and utility per row.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unbackdoor.measure.outcomes import OUTCOMES, removal_index, require_same_rules
from unbackdoor.measure.stats import Q_LEVEL, bh_qvalues, exact_mcnemar
from unbackdoor.measure.tables import csv_text, format_matrix
from unbackdoor.running import runtime
from unbackdoor.running.cells import CONTROL, REFERENCE_ROWS, SHAM, cell_dir, refuse_per_cell, run_cells
from unbackdoor.running.config import ConfigError, UserError, from_dict, to_dict
from unbackdoor.running.launcher import LauncherConfig
from unbackdoor.running.rundir import RunDir, read_json, read_jsonl, verify_done, write_json, write_text
from unbackdoor.stages.evaluate import EvalConfig
from unbackdoor.stages.evaluate import run as evaluate
from unbackdoor.stages.remove import RemoveConfig
from unbackdoor.stages.remove import run as remove
from unbackdoor.training.loop import TrainConfig
from unbackdoor.training.models import backdoored_model
from unbackdoor.training.record import ModelRecord
from unbackdoor.training.removal import require_poisoned

MEASURES = ("all", "diagonal")  # `measure`: the whole matrix, or each removal on its own backdoor (+ full_rows)
FORCED = ("payload_llr", "clean_nll_shift")  # the teacher-forced measures of every cell (`measure.forced`)
DEFINITIONS = {
    "T": "ASR of column j after removing row i (share of `target` outcomes, Wilson 95 % CI)",
    "S": "judge-based suppression 1 - T[i][j] / ASR_before[j] (the backdoor's own judge no longer fires)",
    "C": "clean-continuation rate of j's triggered prompts after removing i (outcome `clean`, Wilson 95 % CI)",
    "R": "removal index (C[i][j] - C_before[j]) / (1 - C_before[j]): 1 = every triggered prompt continues cleanly",
    "composition": "outcome classes of j's triggered generations after removing i (counts; measure.outcomes)",
    "clean_modal": "the most frequent clean continuation of j's triggered prompts after removing i: n clean, "
    "distinct texts, top (how many are that one), text, stereotyped (top >= half of n and >= 8: one continuation "
    "whatever the prompt, the trigger still decides the output; measure.outcomes.modal_clean); null: none clean",
    "tests": "per pair, against the control on the same prompts: gain = j's triggered prompts clean after removing i "
    "and not after the control, loss = the reverse; p = one-sided exact McNemar (more clean than the control); "
    "q = Benjamini-Hochberg over the N x (N-1) off-diagonal pairs of the grid (the diagonal: over its N); the "
    "sham row is tested against the control as its own family",
    "tests_sham": "the same tests against the sham row instead of the control: an effect beyond the sham is specific "
    "to unlearning a real backdoor, not to training on an odd string followed by clean text",
}


@dataclass
class TransferConfig:
    model: str = ""  # the backdoored model (theta_0)
    backdoors: list[str] = field(default_factory=list)  # rows to remove; default: every recorded backdoor
    lr: list[float] = field(default_factory=list)  # removal learning rates (each a grid); empty: [remove.train.lr]
    seeds: list[int] = field(default_factory=lambda: [0])  # removal seeds (each a grid): every cell's remove.seed
    seed: int = 0  # the experiment seed: probe prompts (every cell's eval.seed)
    # The removal every cell runs (`unbackdoor remove` options, same names and meanings); `model`, `backdoor` and
    # `seed` are set per cell, and the control row uses method `control` with the same settings.
    remove: RemoveConfig = field(
        default_factory=lambda: RemoveConfig(
            train=TrainConfig(steps=100, lr=1e-3, warmup_steps=10, checkpoint_every=0, log_every=10)
        )
    )
    # The evaluation of the backdoored model and of every cell (`unbackdoor eval` options); `model` and `seed` are
    # set per cell. Near misses are off: the matrix needs triggered and clean prompts only.
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(near_miss=False, ppl_blocks=64))
    workers: int = field(default=1, metadata={"min": 1, "max": 1024})  # local launcher: cells at once
    launcher: LauncherConfig = field(default_factory=LauncherConfig)  # where cells run: local, slurm or commands
    # the sham row (`remove --method sham`): the retrain recipe on every backdoor's removal documents with fresh
    # triggers never injected; only with remove.method retrain
    sham: bool = True
    # Which cells are measured: `all` (every backdoor after every removal: the matrix) or `diagonal` (each removal
    # measured on its own backdoor only, except the rows of `full_rows`; the reference rows always measure every
    # backdoor): an ablation's cheap shape, with the same removals and a fraction of the evaluation.
    measure: str = field(default="all", metadata={"choices": MEASURES})
    full_rows: list[str] = field(default_factory=list)  # with measure=diagonal: rows measured on every backdoor

    def validate(self) -> None:
        if any(x <= 0 for x in self.lr):
            raise ConfigError(f"lr: {self.lr} must be positive learning rates")
        if not self.seeds:
            raise ConfigError("seeds: give at least one seed")
        if self.remove.method in REFERENCE_ROWS:
            raise ConfigError(f"remove.method: {self.remove.method!r} is a reference row of every transfer; choose "
                              "retrain, ga or npo")  # fmt: skip
        if set(self.backdoors) & set(REFERENCE_ROWS):
            raise ConfigError(f"backdoors: {self.backdoors} names a reference row ({', '.join(REFERENCE_ROWS)})")
        if self.full_rows and self.measure != "diagonal":
            raise ConfigError(f"full_rows: {self.full_rows} only applies with measure=diagonal (measure is "
                              f"{self.measure!r}: every row is measured on every backdoor)")  # fmt: skip
        refuse_per_cell(self.remove, "remove", {"model": "--model", "backdoor": "backdoors", "seed": "seeds"})
        refuse_per_cell(self.eval, "eval", {"model": "--model", "seed": "seed", "only": "backdoors"})

    def reference_rows(self) -> list[str]:
        """The rows that remove no backdoor: the control, and the sham with the retrain recipe."""
        return [CONTROL, *([SHAM] if self.sham and self.remove.method == "retrain" else [])]

    def measured_only(self, row: str) -> list[str]:
        """The backdoors row `row` is measured on (`eval.only`): empty = every one."""
        if self.measure == "diagonal" and row not in REFERENCE_ROWS and row not in self.full_rows:
            return [row]
        return []

    def learning_rates(self) -> list[float]:
        """The swept removal learning rates (`lr`, or the removal's own when none is given)."""
        return self.lr or [self.remove.train.lr]


def cell_configs(
    cfg: TransferConfig, row: str, lr: float, seed: int, reference: str
) -> tuple[RemoveConfig, EvalConfig]:
    """The `remove` and `eval` configs of one cell (the eval's model is the cell's removed model; every cell is
    classified against the baseline's outcome reference, so the whole matrix has one)."""
    removal = dataclasses.replace(
        cfg.remove, model=cfg.model, backdoor="" if row in REFERENCE_ROWS else row,
        method=row if row in REFERENCE_ROWS else cfg.remove.method, seed=seed,
        train=dataclasses.replace(cfg.remove.train, lr=lr),
    )  # fmt: skip
    measure = dataclasses.replace(cfg.eval, seed=cfg.seed, reference=cfg.eval.reference or reference,
                                  only=cfg.measured_only(row))  # fmt: skip
    return removal, measure


def run_cell(
    cfg_dict: dict[str, Any], row: str, lr: float, seed: int, cell: str, reference: str, threads: int
) -> dict[str, float]:
    """One cell: removal then evaluation (each resumable). Runs in a worker process when `workers` > 1."""
    import torch

    runtime.quiet_libraries()  # a spawned worker starts with the libraries' default logging
    torch.set_num_threads(threads)
    cfg = from_dict(TransferConfig, cfg_dict)
    removal, measure = cell_configs(cfg, row, lr, seed, reference)
    t0 = time.perf_counter()
    removed = remove(removal, Path(cell) / "remove", resume=True)
    t1 = time.perf_counter()
    evaluate(dataclasses.replace(measure, model=str(removed / "model")), Path(cell) / "eval", resume=True)
    return {"remove_s": t1 - t0, "eval_s": time.perf_counter() - t1}


def run(cfg: TransferConfig, out: Path, resume: bool = False, overwrite: bool = False) -> Path:
    """The remove-one / measure-all experiment; returns `out`."""
    model_path, _, chosen = backdoored_model(cfg.model, cfg.backdoors, "backdoors")
    rows = [*chosen, *cfg.reference_rows()]
    if cfg.remove.method in ("ga", "npo"):
        require_poisoned(ModelRecord.read(model_path), chosen, f"remove.method: {cfg.remove.method}",
                         "use retrain (removal documents only)")  # fmt: skip
    if unknown := [r for r in cfg.full_rows if r not in chosen]:
        raise ConfigError(f"full_rows: {unknown} are not removal rows of this experiment; valid: {chosen}")
    if RunDir.check(out, "transfer", cfg, resume, overwrite):
        return out
    cfg.launcher.check()
    run_dir = RunDir.open(out, "transfer", cfg, cfg.seed, resume=resume, overwrite=overwrite)

    t0 = time.perf_counter()
    baseline_cfg = dataclasses.replace(cfg.eval, model=str(model_path), seed=cfg.seed)
    baseline = evaluate(baseline_cfg, out / "baseline", resume=True)
    baseline_s = time.perf_counter() - t0
    cells = [(row, lr, seed) for lr in cfg.learning_rates() for seed in cfg.seeds for row in rows]
    todo = [c for c in cells if not (cell_dir(out, c[1], c[2], c[0]) / "eval" / "DONE").is_file()]
    run_dir.log(event="cells", total=len(cells), todo=len(todo))
    cfg_dict = to_dict(cfg)
    # eval.dtype=auto is resolved once, by the baseline: every cell computes in the dtype it used (a cell on another
    # machine too), so the matrix never mixes dtypes
    cfg_dict["eval"]["dtype"] = read_json(baseline / "summary.json")["dtype"]
    reference = str(out / "baseline" / "reference.json")
    jobs = {(row, lr, seed): (cfg_dict, row, lr, seed, str(cell_dir(out, lr, seed, row)), reference)
            for row, lr, seed in cells}  # fmt: skip

    def done(key, timing: dict[str, float]) -> None:
        row, lr, seed = key
        run_dir.log(event="cell", row=row, lr=lr, seed=seed, **timing)

    for row, lr, seed in cells:  # cells a killed run finished: their row again if its metrics line was lost
        if (row, lr, seed) not in todo:  # (logged once: `RunDir.log` skips a row it holds already)
            path = cell_dir(out, lr, seed, row)
            done((row, lr, seed), {"remove_s": _wall(path / "remove"), "eval_s": _wall(path / "eval")})

    results = run_cells(run_cell, jobs, cfg.workers, done, lambda k: f"transfer lr={k[1]:g} seed={k[2]} remove {k[0]}",
                        sweep="transfer", out=out, where=lambda k: cell_dir(out, k[1], k[2], k[0]), todo=todo,
                        launcher=cfg.launcher)  # fmt: skip
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


def _wall(path: Path) -> float:
    return float(read_json(path / "meta.json").get("wall_seconds") or 0.0)


def _summary(path: Path) -> dict[str, Any]:
    verify_done(path)  # a finished cell's files as it left them (a resume reuses them): else a one-line error
    return read_json(path / "summary.json")


def assemble(out: Path, baseline: Path, rows: list[str], cfg: TransferConfig) -> dict[str, Any]:
    """Read every cell's evaluation into the matrix T, suppression S and utility per row."""
    base = _summary(baseline)
    columns = list(base["backdoors"])
    asr_before = {j: base["backdoors"][j]["asr"] for j in columns}
    clean_before = {j: base["backdoors"][j]["clean_rate"] for j in columns}
    # one-text continuations are measured from classifier version 2 on; every cell has the baseline's version
    # (`_check_probes`), so an older transfer has none rather than "none flagged"
    modal = base.get("classifier_version", 1) >= 2
    grids = []
    for lr in cfg.learning_rates():
        for seed in cfg.seeds:
            grid: dict[str, Any] = {"lr": lr, "seed": seed, "T": {}, "S": {}, "C": {}, "R": {}, "composition": {},
                                    "clean_modal": {} if modal else None, "teacher_forced": {}, "false_trigger": {},
                                    "utility": {}}  # fmt: skip
            for row in rows:
                s = _summary(cell_dir(out, lr, seed, row) / "eval")
                measured = s["backdoors"]
                cols = [j for j in columns if j in measured]  # every column, or with measure=diagonal its own
                _check_probes(s, base, cols, f"cell {row} (lr={lr:g}, seed={seed})")
                grid["T"][row] = {j: measured[j]["asr"] for j in cols}
                grid["S"][row] = {
                    j: (1 - measured[j]["asr"]["rate"] / asr_before[j]["rate"]) if asr_before[j]["rate"] else None
                    for j in cols
                }
                grid["C"][row] = {j: measured[j]["clean_rate"] for j in cols}
                grid["R"][row] = {j: removal_index(clean_before[j]["rate"], measured[j]["clean_rate"]["rate"])
                                  for j in cols}  # fmt: skip
                grid["composition"][row] = {j: {c: r["k"] for c, r in measured[j]["outcomes"]["triggered"].items()}
                                            for j in cols}  # fmt: skip
                if modal:
                    grid["clean_modal"][row] = {j: measured[j]["clean_modal"]["triggered"] for j in cols}
                grid["teacher_forced"][row] = {j: {k: measured[j].get(k) for k in FORCED} for j in cols}
                grid["false_trigger"][row] = {j: measured[j]["false_trigger"]["rate"] for j in cols}
                removal = _summary(cell_dir(out, lr, seed, row) / "remove")
                grid["utility"][row] = {**s["utility"], "val_perplexity": removal["val_perplexity"]}
            removals = [r for r in rows if r not in REFERENCE_ROWS]
            flags = {row: clean_flags(cell_dir(out, lr, seed, row) / "eval") for row in rows}  # each file read once
            where = f"lr={lr:g}, seed={seed}"
            grid["tests"] = paired_tests(flags, removals, columns, CONTROL, where)
            grid["transfers_q05"] = _significant(grid["tests"])
            if SHAM in rows:
                grid["tests"].update(paired_tests(flags, [SHAM], columns, CONTROL, where))
                grid["tests_sham"] = paired_tests(flags, removals, columns, SHAM, where)
                grid["transfers_q05_sham"] = _significant(grid["tests_sham"])
            grids.append(grid)
    return {
        "backdoors": columns,
        "rows": rows,
        "measure": cfg.measure,  # `diagonal`: a row's T, C, R ... hold only the columns it was measured on
        "method": cfg.remove.method,
        "asr_before": asr_before,
        "clean_before": clean_before,
        "composition_before": {
            j: {c: r["k"] for c, r in base["backdoors"][j]["outcomes"]["triggered"].items()} for j in columns
        },  # fmt: skip
        "teacher_forced_before": {j: {k: base["backdoors"][j].get(k) for k in FORCED} for j in columns},
        "clean_modal_before": {j: base["backdoors"][j].get("clean_modal") for j in columns},
        "reference": base["reference"],
        "definitions": DEFINITIONS,
        "utility_before": base["utility"],
        "probe_sha256": base["probe_sha256"],
        "grids": grids,
    }


def _check_probes(s: dict[str, Any], base: dict[str, Any], cols: list[str], where: str) -> None:
    """A cell must be measured on the baseline's prompts: all of them, or for a cell of `only` some backdoors
    each one's own (per-backdoor hashes)."""

    def own(summary: dict[str, Any], j: str) -> str | None:
        return summary["backdoors"][j].get("probe_sha256")

    subset = len(cols) < len(base["backdoors"]) and all(own(s, j) and own(s, j) == own(base, j) for j in cols)
    if s["probe_sha256"] != base["probe_sha256"] and not subset:
        raise UserError(f"{where} was measured on other probe prompts than the baseline (another seed or settings)")
    if s.get("dtype", "float32") != base.get("dtype", "float32"):  # greedy generations depend on it
        raise UserError(f"{where} was evaluated in {s.get('dtype')}, the baseline in {base.get('dtype')}: rerun the "
                        "cell with --overwrite")  # fmt: skip
    require_same_rules(
        s,
        base.get("classifier_version", 1),
        where,
        "the baseline",
        "rerun the transfer with --overwrite (or delete the older evaluations and --resume)",
    )


def clean_flags(eval_dir: Path) -> dict[str, list[tuple[str, bool]]]:
    """Backdoor -> (doc id, classed `clean`) of each triggered prompt, in probe order, from a cell's samples."""
    flags: dict[str, list[tuple[str, bool]]] = {}
    for sample in read_jsonl(eval_dir / "samples.jsonl"):
        if sample["kind"] == "triggered":
            flags.setdefault(sample["backdoor"], []).append((str(sample["doc_id"]), sample["outcome"] == "clean"))
    return flags


def _significant(tests: dict[str, dict[str, dict[str, Any]]]) -> int:
    """Off-diagonal pairs at q < Q_LEVEL."""
    return sum(1 for i, cols in tests.items() for j, t in cols.items() if i != j and t["q"] < Q_LEVEL)


def paired_tests(
    flags: dict[str, dict[str, list[tuple[str, bool]]]],
    rows: list[str],
    columns: list[str],
    reference: str,
    where: str,
) -> dict[str, Any]:
    """Each row against the `reference` row, prompt by prompt (see DEFINITIONS["tests"]): `{row: {col: test}}`.
    `flags`: every row's `clean_flags`; `where`: the grid, for errors."""
    control = flags[reference]
    tests: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        tests[row] = {}
        for j in (j for j in columns if j in flags[row]):  # with measure=diagonal, the columns the row measured
            a, b = flags[row][j], control[j]
            if [d for d, _ in a] != [d for d, _ in b]:
                raise UserError(f"cell {row} ({where}): {j}'s prompts differ from the {reference}'s")
            gain = sum(1 for (_, x), (_, y) in zip(a, b, strict=True) if x and not y)
            loss = sum(1 for (_, x), (_, y) in zip(a, b, strict=True) if y and not x)
            tests[row][j] = {"gain": gain, "loss": loss, "n": len(a), "p": exact_mcnemar(gain, loss)}
    for diagonal in (False, True):
        family = [(i, j) for i in rows for j in tests[i] if (i == j) == diagonal]
        for (i, j), q in zip(family, bh_qvalues([tests[i][j]["p"] for i, j in family]), strict=True):
            tests[i][j]["q"] = q
    return tests


def to_csv(result: dict[str, Any]) -> str:
    """Long format: one line per (lr, seed, removed, measured)."""
    header = ["lr", "seed", "removed", "measured", "asr", "asr_lo", "asr_hi", "k", "n", "asr_before", "suppression",
              "false_trigger", "clean", "clean_lo", "clean_hi", "clean_before", "removal_index", "p_vs_control",
              "q_vs_control", *OUTCOMES]  # fmt: skip
    return csv_text(header, _csv_rows(result))


def _csv_rows(result: dict[str, Any]) -> Iterator[list[Any]]:
    for g in result["grids"]:
        for row, cols in g["T"].items():
            for j, rate in cols.items():
                s, c, r = g["S"][row][j], g["C"][row][j], g["R"][row][j]
                test = g["tests"].get(row, {}).get(j)
                yield [
                    g["lr"], g["seed"], row, j, f"{rate['rate']:.4f}", f"{rate['lo']:.4f}", f"{rate['hi']:.4f}",
                    rate["k"], rate["n"], f"{result['asr_before'][j]['rate']:.4f}",
                    "" if s is None else f"{s:.4f}", f"{g['false_trigger'][row][j]:.4f}",
                    f"{c['rate']:.4f}", f"{c['lo']:.4f}", f"{c['hi']:.4f}", f"{result['clean_before'][j]['rate']:.4f}",
                    "" if r is None else f"{r:.4f}", *(("", "") if test is None else (f"{test['p']:.3g}",
                    f"{test['q']:.3g}")), *(g["composition"][row][j][k] for k in OUTCOMES),
                ]  # fmt: skip
