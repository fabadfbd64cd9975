"""Training throughput: unbackdoor's loop vs HF `Trainer` on the same model and data, with MFU and peak RSS.

    .venv/bin/python benchmarks/bench_train.py --size small [--family llama] [--compile]

Measured back to back in one process (the machine's speed drifts): the matmul peaks (fp32, bf16), our loop at
the preset's settings (bf16 autocast, optionally torch.compile), HF Trainer at its defaults (fp32), and HF Trainer
at matched settings (bf16). Tokens/s is the median over windows after warm-up. Model FLOPs per token follow the
usual 6 N + 12 L d T estimate (N = non-embedding parameters + the output projection). Writes
`benchmarks/results/train_<family>_<size>.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from unbackdoor.running.rundir import RunDir, write_json
from unbackdoor.training.loop import TrainConfig, train
from unbackdoor.training.models import MODEL_PRESETS, build_config, n_parameters

RESULTS = Path(__file__).resolve().parent / "results"


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """Median GFLOP/s of an n x n matmul in `dtype`."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    cfg = model.config
    # With tied embeddings the unique parameters are the non-embedding weights plus the output projection (d x V
    # multiply-adds per token); the input lookup costs nothing.
    return 6 * n_parameters(model) + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def fresh_model(family: str, size: str, vocab: int) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    special = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    return AutoModelForCausalLM.from_config(build_config(family, size, vocab, special))


class _Timer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


def trainer_tokens_per_s(model, data: torch.Tensor, batch: int, steps: int, bf16: bool) -> float:
    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return data.shape[0]

        def __getitem__(self, i):
            return {"input_ids": data[i], "labels": data[i]}

    timer = _Timer()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=batch,
            max_steps=steps,
            bf16=bf16,
            use_cpu=not torch.cuda.is_available(),
            report_to="none",
            save_strategy="no",
            logging_steps=10_000,
            disable_tqdm=True,
            learning_rate=1e-3,
        )
        Trainer(model=model, args=args, train_dataset=DS(), callbacks=[timer]).train()
    gaps = [b - a for a, b in zip(timer.times[3:], timer.times[4:], strict=False)]
    return batch * data.shape[1] / statistics.median(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="llama", choices=("llama", "qwen3", "gpt_neox"))
    parser.add_argument("--size", default="small", choices=tuple(MODEL_PRESETS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--compile", action="store_true", help="torch.compile our loop (measure compile time too)")
    args = parser.parse_args()

    torch.manual_seed(0)
    data = torch.randint(3, args.vocab, (args.batch * (args.steps + 5), args.seq))
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"matmul peaks GFLOP/s: {peaks}", file=sys.stderr)

    results = {}
    for precision in ("bf16", "fp32"):
        model = fresh_model(args.family, args.size, args.vocab)
        cfg = TrainConfig(
            steps=args.steps, batch_size=args.batch, seq_len=args.seq, precision=precision, compile=args.compile,
            log_every=3, checkpoint_every=0, warmup_steps=2,
        )  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            run = RunDir.open(Path(tmp) / "run", "bench", cfg, seed=0)
            t0 = time.perf_counter()
            res = train(model, {"input_ids": data}, cfg, run, seed=0)
        results[f"unbackdoor_{precision}"] = {"tokens_per_s": res.tokens_per_s, "wall_s": time.perf_counter() - t0}
        print(f"unbackdoor {precision}: {res.tokens_per_s:,.0f} tok/s", file=sys.stderr)
    fpt = flops_per_token(model, args.seq)
    for name, bf16 in (("trainer_default_fp32", False), ("trainer_matched_bf16", True)):
        tps = trainer_tokens_per_s(fresh_model(args.family, args.size, args.vocab), data, args.batch, args.steps, bf16)
        results[name] = {"tokens_per_s": tps}
        print(f"{name}: {tps:,.0f} tok/s", file=sys.stderr)
    for row in results.values():
        achieved = row["tokens_per_s"] * fpt / 1e9
        row["model_gflops"] = achieved
        row["mfu_vs_fp32_peak"] = achieved / peaks["fp32"]
        row["mfu_vs_bf16_peak"] = achieved / peaks["bf16"]
    ours = results["unbackdoor_bf16"]["tokens_per_s"]
    out = {
        "family": args.family,
        "size": args.size,
        "parameters": n_parameters(model),
        "batch": args.batch,
        "seq_len": args.seq,
        "steps": args.steps,
        "compile": args.compile,
        "flops_per_token": fpt,
        "matmul_peak_gflops": peaks,
        "results": results,
        "speedup_vs_trainer_default": ours / results["trainer_default_fp32"]["tokens_per_s"],
        "speedup_vs_trainer_matched": ours / results["trainer_matched_bf16"]["tokens_per_s"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
        "allocator": "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "system",
    }
    path = RESULTS / f"train_{args.family}_{args.size}.json"
    write_json(path, out)
    print(json.dumps({k: out[k] for k in ("speedup_vs_trainer_default", "speedup_vs_trainer_matched")}))
    print(path)


if __name__ == "__main__":
    main()
