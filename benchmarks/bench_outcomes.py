"""The outcome classifier's reference: fitting it (every evaluation without a `reference` does), the character
trigram surprisal memoised by trigram against the direct sum over characters, side by side in one run.

    .venv/bin/python benchmarks/bench_outcomes.py --world runs/demo/world [--repeats 3]

Both ways score the same calibration windows of every language of the world with the same fitted models; the
scores must be identical floats (the memo changes nothing but the time). Reports the median of `--repeats` runs of
each way, interleaved, the ratio, and the time of a whole `Reference.fit`. Writes `benchmarks/results/outcomes.json`.
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import statistics
import time
from pathlib import Path

from unbackdoor.data.corpus import load_source, shard_paths
from unbackdoor.data.realtext import CharModel
from unbackdoor.measure.outcomes import REFERENCE_DOCS, Reference, _first, _windows
from unbackdoor.running.rundir import write_json

RESULTS = Path(__file__).resolve().parent / "results"


def direct(model: CharModel, text: str) -> float:
    """The surprisal as computed before the memo: the log of every character's probability, summed."""
    padded = "\x02\x02" + text.lower()
    n = len(padded) - 2
    return -sum(math.log2(model.prob(padded[i - 2 : i], padded[i])) for i in range(2, len(padded))) / n if n else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, required=True, help="a finished `unbackdoor world` (or corpus) run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    languages = list(load_source(args.world).languages)
    work = []
    for lang in languages:
        train = _first(shard_paths(args.world / "data", "train", [lang]), REFERENCE_DOCS)
        held_out = _first(shard_paths(args.world / "data", "validation", [lang]), REFERENCE_DOCS)
        if train and held_out:
            work.append((CharModel(train), list(_windows(held_out, random.Random(f"bench-{lang}")))))
    times: dict[str, list[float]] = {"direct": [], "memoised": []}
    scores: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for way in ("direct", "memoised"):
            t0 = time.perf_counter()
            scores[way] = []
            for model, windows in work:
                if way == "direct":
                    scores[way] += [direct(model, w) for w in windows]
                else:
                    model._log2p.clear()  # cold memo: each repeat pays for filling it
                    scores[way] += [model.surprisal(w) for w in windows]
            times[way].append(time.perf_counter() - t0)
        identical = scores["memoised"] == scores["direct"]
        if not identical:
            raise SystemExit("the memo changed a score: the two ways must give the same floats")
    fit_s = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        Reference.fit(args.world, languages)
        fit_s.append(time.perf_counter() - t0)
    direct_s, memo_s = statistics.median(times["direct"]), statistics.median(times["memoised"])
    result = {
        "world": str(args.world.resolve()),
        "languages": languages,
        "windows": sum(len(w) for _, w in work),
        "characters": sum(len(x) for _, w in work for x in w),
        "direct_s": round(direct_s, 3),
        "memoised_s": round(memo_s, 3),
        "speedup": round(direct_s / memo_s, 2),
        "scores_identical": identical,
        "reference_fit_s": round(statistics.median(fit_s), 3),  # with the memo
        "repeats": args.repeats,
        "machine": platform.processor() or platform.machine(),
    }
    RESULTS.mkdir(exist_ok=True)
    write_json(RESULTS / "outcomes.json", result)
    print(result)


if __name__ == "__main__":
    main()
