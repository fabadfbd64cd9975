"""Transfer cells on a small CPU: one process with every thread (the default) vs `workers` processes of one thread
each, side by side in one run, on the demo's model and transfer settings.

    .venv/bin/python benchmarks/bench_workers.py --out /tmp/bench-workers [--model DIR] [--rows 2] [--workers 2]

Runs in `--out` (resumable; delete it for fresh timings): world (tiny) and the demo's backdoored model (pretrain/tiny
with default8, unless `--model` names one) -> the same transfer (the first `--rows` backdoors, the control and the
sham; 128 prompts per backdoor, as in the demo) twice: `workers=1` (cells one after another, each with all the
CPU's threads) and `workers=N` (N cells at once, the threads split between them). The ratio is wall seconds of
the two transfers, run back to back. The tiny model (d_model 128) uses two threads poorly: small matrices and
element-wise work. Whether the split changes the numbers is checked, not assumed: every cell's generations and
the transfer matrix are compared between the two runs (a different thread count can change the order of float
reductions). Writes `benchmarks/results/workers.json`.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from unbackdoor.running import runtime
from unbackdoor.running.config import from_dict, load_preset
from unbackdoor.running.rundir import read_json, read_jsonl, write_json
from unbackdoor.stages import pretrain, transfer, world
from unbackdoor.training.record import ModelRecord

RESULTS = Path(__file__).resolve().parent / "results"


def timed_transfer(model: Path, rows: list[str], workers: int, prompts: int, out: Path) -> float:
    """Wall seconds of the transfer (its recorded wall time when it was reused from an earlier run)."""
    if (out / "DONE").is_file():
        return read_json(out / "meta.json")["wall_seconds"]
    cfg = from_dict(transfer.TransferConfig, {"model": str(model), "backdoors": rows, "workers": workers,
                                              "eval": {"n_prompts": prompts}})  # fmt: skip
    start = time.perf_counter()
    transfer.run(cfg, out, resume=True)
    return time.perf_counter() - start


def generations(out: Path) -> dict[str, list[str]]:
    """Every cell's generations, by cell path."""
    found = {}
    for samples in sorted(out.glob("cells/*/*/*/eval/samples.jsonl")):
        found[str(samples.parent.parent.relative_to(out))] = [s["generation"] for s in read_jsonl(samples)]
    return found


def differences(a, b) -> tuple[int, float]:
    """Leaves of two JSON trees that differ other than as floats (counts, verdicts, keys), and the largest
    absolute difference between float leaves."""
    if isinstance(a, dict) and isinstance(b, dict):
        parts = [differences(a[k], b[k]) for k in a.keys() & b.keys()]
        return len(a.keys() ^ b.keys()) + sum(p[0] for p in parts), max((p[1] for p in parts), default=0.0)
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        parts = [differences(x, y) for x, y in zip(a, b, strict=True)]
        return sum(p[0] for p in parts), max((p[1] for p in parts), default=0.0)
    if isinstance(a, float) and isinstance(b, float):
        return 0, abs(a - b)
    return int(a != b), 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", type=Path, help="a backdoored model directory (default: pretrain the demo's)")
    parser.add_argument("--rows", type=int, default=2, help="backdoors removed (plus the control and the sham)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=128)
    args = parser.parse_args()

    model = args.model
    if model is None:
        world_dir = world.run(from_dict(world.WorldConfig, load_preset("world", "tiny")), args.out / "world",
                              resume=True)  # fmt: skip
        tiny = {**load_preset("pretrain", "tiny"), "world": str(world_dir)}
        model = pretrain.run(from_dict(pretrain.PretrainConfig, tiny), args.out / "pretrain", resume=True) / "model"
    rows = ModelRecord.read(model).carried[: args.rows]
    walls, found, matrices = {}, {}, {}
    for workers in (1, args.workers):
        where = args.out / f"workers-{workers}"
        walls[workers] = timed_transfer(model, rows, workers, args.prompts, where)
        found[workers] = generations(where)
        matrices[workers] = read_json(where / "transfer.json")["grids"][0]
        print(f"workers={workers}: {walls[workers]:.1f} s", flush=True)
    one, many = found[1], found[args.workers]
    differing = {cell: sum(a != b for a, b in zip(one[cell], many[cell], strict=True)) for cell in one}
    result = {
        "model": str(model),
        "rows": rows,
        "cells": len(one),
        "prompts": args.prompts,
        "cpus": os.cpu_count(),
        "cpu_model": runtime.cpu_model(),
        "allocator": "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "system",
        "wall_s": {f"workers={w}": round(s, 1) for w, s in walls.items()},
        "speedup": round(walls[1] / walls[args.workers], 3),
        "generations_compared": sum(len(v) for v in one.values()),
        "generations_differing": differing,
        # counts, q-value verdicts and rates that are ratios of counts are exact; teacher-forced means and
        # perplexities move in the 7th digit (float reductions in another order)
        "matrix_leaves_differing": differences(matrices[1], matrices[args.workers])[0],
        "matrix_max_float_difference": differences(matrices[1], matrices[args.workers])[1],
    }
    write_json(RESULTS / "workers.json", result)
    print(result)


if __name__ == "__main__":
    main()
