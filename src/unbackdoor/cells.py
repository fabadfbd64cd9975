"""Independent cells of an experiment (transfer, defend-eval), in this process or fanned out over workers.

With `workers > 1` each cell runs in a spawned process; the CPU threads are split between workers, and when
several GPUs are visible each worker is pinned to one of them (`CUDA_VISIBLE_DEVICES`), so `--workers 4` on a
4-GPU machine runs four cells at once, one per GPU.

Run: `pytest tests/integration/test_remove_transfer.py` (the 2-worker matrix equals the in-process one).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any


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
) -> dict[Hashable, Any]:
    """Run `fn(*args, threads)` for every `key: args` of `jobs`; `on_done(key, result)` as each one finishes.

    Args:
        fn: a module-level function (picklable); its last argument is the CPU thread count it may use.
        jobs: key -> positional arguments (before `threads`).
        workers: 1 runs the cells here, in order; N > 1 in N spawned processes.
        on_done: called in this process with each result (logging, bookkeeping).
        label: what is printed when a cell starts (in-process runs).
    """
    threads = max(1, (os.cpu_count() or 1) // workers)
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
