"""Independent cells of an experiment (transfer, defend-eval, relearn), here, fanned out over workers, or as jobs.

Every cell's arguments and command line are written first (`launcher.write_cells`); then `launcher.kind` says
where they run (`running.launcher`). Locally, with `workers > 1` each cell runs in a spawned process; the CPU
threads are split between workers, and when several GPUs are visible each worker is pinned to one of them
(`CUDA_VISIBLE_DEVICES`), so `--workers 4` on a 4-GPU machine runs four cells at once, one per GPU.

Run: `pytest tests/integration/test_remove_transfer.py` (the 2-worker matrix equals the in-process one).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Hashable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from unbackdoor.running.config import ConfigError
from unbackdoor.running.launcher import COMMANDS_DIR, CellsPending, LauncherConfig, job_threads, run_slurm, write_cells

CONTROL = "control"  # the benign-control row of a transfer experiment (same compute, clean text only)
SHAM = "sham"  # the sham-removal row: the removal recipe with fresh triggers never injected (`data.sham`)
REFERENCE_ROWS = (CONTROL, SHAM)  # rows that remove no backdoor: what every removal is compared with


def cell_dir(out: Path, lr: float, seed: int, row: str) -> Path:
    """The run directory of one transfer cell: `<out>/cells/lr=<lr>/seed=<seed>/<row>` (holds `remove/`, `eval/`)."""
    return Path(out) / "cells" / f"lr={lr:g}" / f"seed={seed}" / row


def refuse_per_cell(stage_cfg: Any, prefix: str, per_cell: dict[str, str]) -> None:
    """A sweep's nested stage config must leave the fields it sets per cell at their defaults.

    Args:
        stage_cfg: the nested config (a dataclass), e.g. a transfer's `remove`.
        prefix: its key in the sweep's config (`remove`), for the message.
        per_cell: field -> the sweep key that sets it (`{"seed": "seeds"}`).

    Raises:
        ConfigError: naming the field, its value and the sweep key to use instead.
    """
    defaults = type(stage_cfg)()
    for name, instead in per_cell.items():
        value = getattr(stage_cfg, name)
        if value != getattr(defaults, name):
            raise ConfigError(f"{prefix}.{name}: {value!r} is set per cell by the sweep; use {instead} instead")


def _pin_gpu(queue: Any) -> None:
    """Worker initializer: take one GPU index from the queue before anything initialises CUDA."""
    gpu = queue.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)


def visible_gpus() -> list[str]:
    """The GPUs a worker may be pinned to (`CUDA_VISIBLE_DEVICES`, else every device torch sees)."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g for g in given.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def run_cells(
    fn: Callable[..., Any],
    jobs: dict[Hashable, tuple],
    workers: int,
    on_done: Callable[[Hashable, Any], None],
    label: Callable[[Hashable], str] = str,
    *,
    sweep: str,
    out: Path,
    where: Callable[[Hashable], Path],
    todo: Collection[Hashable],
    launcher: LauncherConfig | None = None,
    phase: str = "cells",
) -> dict[Hashable, Any]:
    """Run `fn(*args, threads)` for every `key: args` of `jobs` in `todo`; `on_done(key, result)` as each finishes.

    Args:
        fn: the sweep's cell function (`launcher.CELL_FUNCTIONS[sweep]`); its last argument is the CPU thread count.
        jobs: every cell of the batch, key -> positional arguments (before `threads`), JSON-serialisable: each is
            written to its `cell.json`, and the batch's commands file lists them all (a finished one is a no-op).
        todo: the keys of the unfinished cells: those are run.
        workers: locally, 1 runs the cells here, in order; N > 1 in N spawned processes.
        on_done: called in this process with each result (logging, bookkeeping).
        label: what is printed when a cell starts.
        sweep, out, where, phase: the sweep's name and directory, each cell's directory, and the name of this
            batch of cells (`<out>/commands/<phase>.txt`).
        launcher: where the cells run (default: here).

    Raises:
        CellsPending: with `launcher.kind=commands`, once the command lines are written.
    """
    launcher = launcher or LauncherConfig()
    files = write_cells(sweep, out, phase, {key: (where(key), args) for key, args in jobs.items()})
    wanted = set(todo)
    jobs = {key: args for key, args in jobs.items() if key in wanted}
    if not jobs:
        return {}
    if launcher.kind == "commands":
        listed = ", ".join(str(files[key].parent) for key in list(jobs)[:3]) + (", ..." if len(jobs) > 3 else "")
        raise CellsPending(
            f"{len(jobs)} of {len(files)} cell(s) of {sweep} to run ({listed}): one command line per cell in "
            f"{str(Path(out) / COMMANDS_DIR / phase)}.txt (a finished cell returns at once); run them (any order, "
            "any machine sharing this folder), then rerun this command with --resume"
        )  # fmt: skip
    if launcher.kind == "slurm":
        return run_slurm(launcher, sweep, out, {key: files[key] for key in jobs}, on_done, label)
    threads = max(1, job_threads() // workers)  # the CPUs this process may run on (affinity: taskset, cpusets)
    results: dict[Hashable, Any] = {}
    if workers == 1:
        for key, args in jobs.items():
            print(f"[cell] {label(key)}", flush=True)
            results[key] = fn(*args, threads)
            on_done(key, results[key])
        return results
    ctx = get_context("spawn")
    gpus = visible_gpus()
    queue = ctx.Queue()
    for i in range(workers):
        queue.put(gpus[i % len(gpus)] if len(gpus) > 1 else None)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_pin_gpu, initargs=(queue,)) as pool:
        futures = {key: pool.submit(fn, *args, threads) for key, args in jobs.items()}
        for key, future in futures.items():
            results[key] = future.result()
            on_done(key, results[key])
    return results
