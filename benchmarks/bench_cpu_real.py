"""Training levers for a real ~135 M checkpoint on a CPU, side by side in one process: full weights in float32 vs
bf16 autocast, LoRA (r 16, every linear layer) in bf16, and bf16 with the embedding frozen.

    .venv/bin/python benchmarks/bench_cpu_real.py --model DIR [--batch 8] [--seq-len 128] [--steps 6]

DIR is a plain checkpoint folder, e.g. the `gguf-model/` that `unbackdoor eval --model <SmolLM2 .gguf>` writes.
Each variant loads the model afresh and runs `steps` AdamW steps on random tokens; tokens/s is the median over the
steps after the first two. The ratio of each lever is against the float32 full-weight loop of the same run (this
machine is noisy: compare ratios, not absolute figures). Writes `benchmarks/results/cpu_real.json`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from unbackdoor.running.rundir import write_json

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = [("full", "fp32"), ("full", "bf16"), ("lora", "bf16"), ("frozen_embedding", "bf16")]


def tokens_per_s(model_dir: Path, mode: str, precision: str, batch: int, seq_len: int, steps: int) -> float:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    elif mode == "frozen_embedding":
        model.get_input_embeddings().weight.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    x = torch.randint(0, model.config.vocab_size, (batch, seq_len))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - start)
    return batch * seq_len / statistics.median(times[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    rows = []
    for mode, precision in VARIANTS:
        tps = tokens_per_s(args.model, mode, precision, args.batch, args.seq_len, args.steps)
        rows.append({"mode": mode, "precision": precision, "tokens_per_s": round(tps, 1)})
        print(f"{mode:>16} {precision}: {tps:.0f} tokens/s", flush=True)
    for row in rows:
        row["ratio_vs_fp32_full"] = round(row["tokens_per_s"] / rows[0]["tokens_per_s"], 2)
    RESULTS.mkdir(exist_ok=True)
    out = {"model": str(args.model), "batch": args.batch, "seq_len": args.seq_len, "threads": torch.get_num_threads(),
           "variants": rows}  # fmt: skip
    write_json(RESULTS / "cpu_real.json", out)
    print(RESULTS / "cpu_real.json")


if __name__ == "__main__":
    main()
