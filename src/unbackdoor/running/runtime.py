"""Process runtime, in one place: rank and who writes, the compute device, the seed, the allocator, library logs.

Every process-wide decision the stages depend on is made here and called explicitly where it acts:

- `is_main_process()`: under `accelerate launch` / `torchrun` every process runs a training stage, and only the
  main one (RANK 0) writes; stages ask once and pass the answer on (`RunDir.writes`, `packed_on_disk(write=...)`).
- `default_device()`: this process's GPU (`LOCAL_RANK`, or a `--workers` cell's own), else the CPU.
- `seed_everything(seed)`: torch's global RNG, seeded once at the top of each stage's `run()`; everything that
  samples data takes an explicit RNG built from the seed.
- `reexec_with_tcmalloc()`: the console script restarts itself once with tcmalloc preloaded (faster CPU training).
- `quiet_libraries()`: no per-load progress bars or info logs from transformers (our own one-line errors only).

Run: `pytest tests/unit/test_rundir.py tests/integration/test_models.py` (who writes; the device).
"""

from __future__ import annotations

import os
import sys
from typing import Any

TCMALLOC = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib64/libtcmalloc_minimal.so.4")


def is_main_process() -> bool:
    """False in the other processes of `accelerate launch` / `torchrun` (RANK > 0): they train, they do not write."""
    return os.environ.get("RANK", "0") == "0"


def default_device() -> Any:
    """Where a stage computes: this process's GPU under a multi-process launch (`LOCAL_RANK`), else the first
    visible GPU (a `--workers` cell sees only its own), else the CPU. Returns a `torch.device`."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def native_bf16(device: Any = None) -> bool:
    """Whether `device` (default: `default_device()`) computes bfloat16 in hardware: a GPU that supports it, or a
    CPU whose oneDNN has bfloat16 kernels (AMX, AVX512-BF16)."""
    import torch

    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a build without oneDNN: emulated at best
            return False
    return True


def cpu_model() -> str:
    """The CPU's model name (Linux `/proc/cpuinfo`, else `platform.processor()`), recorded with every run."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


_WARNED: set[str] = set()


def resolve_precision(asked: str, what: str, half: str = "bf16", full: str = "fp32") -> str:
    """The precision a stage computes in: `asked`, or for `auto` `half` where bfloat16 is native and `full`
    elsewhere. Asking for `half` where it is emulated is honoured, with one warning per `what` (it is ~90x slower
    on an AVX2-only CPU)."""
    if asked == "auto":
        return half if native_bf16() else full
    if asked == half and not native_bf16() and what not in _WARNED:
        _WARNED.add(what)
        print(f"warning: {what}={asked}: this device has no native bfloat16 (a CPU without AMX or AVX512-BF16), "
              f"where it is emulated and many times slower than {full}; {what}=auto picks {half} only where it "
              "is native", file=sys.stderr)  # fmt: skip
    return asked


def seed_everything(seed: int) -> None:
    """Seed torch's global RNG (model initialisation, dropout): once, at the top of a stage's `run()`."""
    import torch

    torch.manual_seed(seed)


def quiet_libraries() -> None:
    """Our own progress bar and one-line errors only: no per-load bars or info logs from transformers."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def allocator() -> str:
    """The memory allocator of this process (`tcmalloc` when preloaded, else `system`), recorded in meta.json."""
    return "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "system"


def reexec_with_tcmalloc(module: str = "unbackdoor") -> None:
    """Re-execute this process once with tcmalloc preloaded, when it is installed (returns when it is not).

    On CPU the default allocator page-faults on the large logits tensors every step; tcmalloc measured +43 %
    training throughput on the tiny model here. `UNBACKDOOR_ALLOCATOR=system` turns this off.
    """
    preload = os.environ.get("LD_PRELOAD", "")
    if os.environ.get("UNBACKDOOR_ALLOCATOR", "tcmalloc") != "tcmalloc" or "tcmalloc" in preload:
        return
    lib = next((p for p in TCMALLOC if os.path.exists(p)), None)
    if lib:
        env = {**os.environ, "LD_PRELOAD": f"{lib} {preload}".strip(), "UNBACKDOOR_ALLOCATOR": "tcmalloc"}
        os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], env)
