"""CASD cost on a finished transfer experiment: wall time and peak memory of `unbackdoor casd`, cold and cached.

    .venv/bin/python benchmarks/bench_casd.py --transfer runs/demo/transfer [--probes 256]

Runs the stage in a child process (so its peak RSS is the stage's own, not this script's) into a fresh temporary
directory: the cold run captures every model's activations (theta_0 once, then each removal and the control),
then a second run on a copy without summary reuses the cached activations and times the pairwise part alone.
Targets for the tiny default8 experiment (9 removals x 8 backdoors x all layers, 256 probes): <= 90 s, <= 2 GiB.
Writes `benchmarks/results/casd.json`.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from unbackdoor.running.rundir import write_json

RESULTS = Path(__file__).resolve().parent / "results"


def run_stage(transfer: Path, out: Path, probes: int, resume: bool) -> dict[str, float]:
    code = (
        "import resource, sys; from unbackdoor.cli import main; "
        f"rc = main(['casd', '--transfer', {str(transfer)!r}, '--out', {str(out)!r}, 'n_probes={probes}'"
        f"{', ' + repr('--resume') if resume else ''}]); "
        "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)"
    )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    peak_kb = int(next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("PEAK_KB")))
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(peak_kb / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transfer", type=Path, required=True)
    parser.add_argument("--probes", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "casd"
        cold = run_stage(args.transfer, out, args.probes, resume=False)
        summary = json.loads((out / "summary.json").read_text())
        (out / "DONE").unlink()
        cached = run_stage(args.transfer, out, args.probes, resume=True)
    result = {
        "transfer": str(args.transfer.resolve()),
        "probes_per_backdoor": args.probes,
        "models": summary["models"],
        "cold": {**cold, "capture_s": summary["capture_s"], "pairs_s": summary["pairs_s"]},
        "cached_activations": cached,
        "targets": {"wall_s": 90, "peak_rss_mib": 2048},
        "meets_targets": cold["wall_s"] <= 90 and cold["peak_rss_mib"] <= 2048,
        "relation": summary["relation"],
        "host": {"platform": platform.platform(), "python": sys.version.split()[0]},
        "self_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "casd.json", result)
    print(json.dumps({k: result[k] for k in ("cold", "cached_activations", "meets_targets")}, indent=2))


if __name__ == "__main__":
    main()
