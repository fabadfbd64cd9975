"""How a demo replicate's backdoored model is made, side by side in one run: pretrained from scratch with its
backdoors (`pretrain/tiny`, the demo's default) vs the backdoors injected into the clean twin from a poison-dense
stream (`inject/tiny-dense`, the demo with `replicates_from=inject`).

    .venv/bin/python benchmarks/bench_replicates.py --out /tmp/bench-replicates [--seeds 0 1] [--prompts 128]
        [--no-pretrain]

Runs in `--out` (resumable: finished stages are reused, so delete it for fresh timings): world (tiny) -> twin
(pretrain, no backdoors) -> for each seed: pretrain with default8 and inject default8 into the twin -> eval of
each model (ASR, false triggers, untriggered clean rate, perplexity). The demo needs the twin either way (relearn's
never-backdoored reference), so for R replicates the default costs R pretrainings and injection R injections:
the ratio is per replicate, wall seconds of the stage, the two ways run back to back on the same machine.
`--no-pretrain` (a slow CPU) times pretraining by the twin's pretraining (the same recipe and tokens, without the
backdoors) and evaluates the injected models only. Writes `benchmarks/results/replicates.json`; the eval figures
say whether the cheaper model carries its backdoors as well.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from unbackdoor.running import runtime
from unbackdoor.running.config import from_dict, load_preset
from unbackdoor.running.rundir import read_json, write_json
from unbackdoor.stages import evaluate, inject, pretrain, world

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn, cfg, out: Path) -> float:
    """Seconds `fn` took (the stage's own wall time when it was reused from an earlier run)."""
    if (out / "DONE").is_file():
        return read_json(out / "meta.json")["wall_seconds"]
    start = time.perf_counter()
    fn(cfg, out, resume=True)
    return time.perf_counter() - start


def evaluated(model: Path, out: Path, prompts: int, seed: int) -> dict:
    cfg = from_dict(evaluate.EvalConfig, {"model": str(model), "seed": seed, "n_prompts": prompts})
    if not (out / "DONE").is_file():
        evaluate.run(cfg, out, resume=True)
    summary = read_json(out / "summary.json")
    rows = summary["backdoors"]
    return {
        "asr": {name: row["asr"]["rate"] for name, row in rows.items()},
        "asr_min": min(row["asr"]["rate"] for row in rows.values()),
        "false_trigger_max": max(row["false_trigger"]["rate"] for row in rows.values()),
        "untriggered_clean_min": min(row["outcomes"]["clean"]["clean"]["rate"] for row in rows.values()),
        "perplexity": summary["utility"]["perplexity"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--no-pretrain", action="store_true", help="time pretraining by the twin's")
    args = parser.parse_args()
    out = args.out
    world_dir = out / "world"
    world.run(from_dict(world.WorldConfig, {**load_preset("world", "tiny"), "seed": 0}), world_dir, resume=True)
    tiny = {**load_preset("pretrain", "tiny"), "world": str(world_dir), "model": {"family": "llama", "size": "tiny"}}
    twin_cfg = from_dict(pretrain.PretrainConfig, {**tiny, "backdoors": "none", "seed": 0})
    twin_seconds = timed(pretrain.run, twin_cfg, out / "twin")
    rows = []
    for seed in args.seeds:
        pre_seconds = twin_seconds
        if not args.no_pretrain:
            pre_cfg = from_dict(pretrain.PretrainConfig, {**tiny, "backdoors": "default8", "seed": seed})
            pre_seconds = timed(pretrain.run, pre_cfg, out / f"pretrain-{seed}")
        inj_cfg = from_dict(inject.InjectConfig, {**load_preset("inject", "tiny-dense"), "world": str(world_dir),
                                                  "model": str(out / "twin" / "model"), "seed": seed})  # fmt: skip
        inj_seconds = timed(inject.run, inj_cfg, out / f"inject-{seed}")
        inj_summary = read_json(out / f"inject-{seed}" / "summary.json")
        rows.append({
            "seed": seed,
            "pretrain_seconds": round(pre_seconds, 1),
            "inject_seconds": round(inj_seconds, 1),
            "ratio": round(pre_seconds / inj_seconds, 2),
            "inject_tokens": inj_summary["tokens"],
            "inject_docs": {"clean": inj_summary["clean_docs"], "poisoned": inj_summary["poisoned_docs"]},
            "old_way": "the twin's pretraining" if args.no_pretrain else "pretrain with default8",
            "pretrain_eval": None if args.no_pretrain else evaluated(
                out / f"pretrain-{seed}" / "model", out / f"eval-pretrain-{seed}", args.prompts, seed),
            "inject_eval": evaluated(out / f"inject-{seed}" / "model", out / f"eval-inject-{seed}", args.prompts,
                                     seed),  # fmt: skip
        })  # fmt: skip
        print(f"seed {seed}: pretrain {pre_seconds:.0f} s, inject {inj_seconds:.0f} s "
              f"({pre_seconds / inj_seconds:.2f}x)", flush=True)  # fmt: skip
    result = {"host": read_json(out / "twin" / "meta.json").get("host"), "native_bf16": runtime.native_bf16("cpu"),
              "twin_seconds": round(twin_seconds, 1), "replicates": rows,
              "note": "per replicate; the twin is trained once in both ways (relearn needs it)"}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    write_json(RESULTS / "replicates.json", result)
    print(f"wrote {RESULTS / 'replicates.json'}")


if __name__ == "__main__":
    main()
