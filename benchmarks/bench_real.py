"""Throughput at real size: training and evaluation of a ~0.5 B-parameter model (a real-size architecture preset).

    .venv/bin/python benchmarks/bench_real.py [--arch qwen3-0.6b] [--steps 8] [--batch 2] [--seq-len 256]

The model is the preset's architecture at full size, randomly initialised (nothing is downloaded), with its own
vocabulary. Training runs unbackdoor's loop (`unbackdoor.training.loop.train`, bf16 autocast, AdamW) on random
tokens on the best device (CUDA when present, else CPU); tokens/s is the median over log windows after the first.
MFU is model FLOPs (6 N + 12 L d T per token) over the bf16 matmul peak measured in the same process on that device.
Evaluation is `unbackdoor.measure.generation.generate` batched (engine `hf`, i.e. `model.generate`) vs
`model.generate` one prompt at a time. Peak memory:
`torch.cuda.max_memory_allocated` on GPU, peak RSS on CPU. Writes `benchmarks/results/real_<arch>_<device>.json`.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from unbackdoor.measure.generation import generate
from unbackdoor.running.rundir import RunDir, write_json
from unbackdoor.training.loop import TrainConfig, train
from unbackdoor.training.models import architecture, n_parameters

RESULTS = Path(__file__).resolve().parent / "results"


def matmul_peak(device: str, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """Median TFLOP/s of an n x n matmul in `dtype` on `device`."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    times = []
    for i in range(repeats + 3):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e12


class _Tokenizer:
    """What `generate` needs of a tokenizer, over raw ids (prompts are space-separated integers)."""

    def __init__(self, vocab: int):
        self.vocab, self.eos_token_id, self.pad_token_id = vocab, vocab - 1, vocab - 2

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[int(t) for t in text.split()] for text in texts]}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="qwen3-0.6b")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = architecture(args.arch)
    config = AutoConfig.for_model(
        **{k: v for k, v in arch.items() if k != "model_type"}, model_type=arch["model_type"]
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    params = n_parameters(model)
    vocab = config.vocab_size
    flops_per_token = 6 * params + 12 * config.num_hidden_layers * config.hidden_size * args.seq_len
    peak_bf16 = matmul_peak(device, torch.bfloat16, 8192 if device == "cuda" else 2048)
    peak_fp32 = matmul_peak(device, torch.float32, 8192 if device == "cuda" else 2048)

    n_rows = args.steps * args.batch
    data = torch.randint(0, vocab - 2, (n_rows, args.seq_len))
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch, seq_len=args.seq_len, lr=1e-5, warmup_steps=1,
                      precision="bf16", checkpoint_every=0, log_every=1)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir.open(Path(tmp) / "run", "bench", cfg, seed=0)
        result = train(model, {"input_ids": data}, cfg, run, seed=0)
    tok_s = result.tokens_per_s
    train_peak_gib = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None

    model.eval()
    tok = _Tokenizer(vocab)
    prompts = [" ".join(str(t) for t in torch.randint(0, vocab - 2, (24,)).tolist()) for _ in range(args.prompts)]
    t = time.perf_counter()  # eval's engine: model.generate batched
    generate(model, tok, prompts, args.new_tokens, batch_size=args.prompts)
    batched = args.prompts / (time.perf_counter() - t)
    n_single = max(2, args.prompts // 8)
    t = time.perf_counter()
    for p in prompts[:n_single]:  # the baseline: model.generate, one prompt at a time
        generate(model, tok, [p], args.new_tokens, batch_size=1, engine="hf")
    single = n_single / (time.perf_counter() - t)

    out = {
        "arch": args.arch,
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "parameters": params,
        "train": {
            "batch": args.batch, "seq_len": args.seq_len, "steps": args.steps, "precision": "bf16 autocast",
            "tokens_per_s": round(tok_s, 1),
            "model_tflops": round(tok_s * flops_per_token / 1e12, 3),
            "mfu_vs_bf16_peak": round(tok_s * flops_per_token / 1e12 / peak_bf16, 4),
            "wall_s": round(result.wall_s, 1),
            "peak_gpu_gib": round(train_peak_gib, 2) if train_peak_gib else None,
        },
        "peaks_tflops": {"bf16": round(peak_bf16, 2), "fp32": round(peak_fp32, 2)},
        "eval": {
            "prompts": args.prompts, "new_tokens": args.new_tokens, "dtype": "float32",
            "batched_prompts_per_s": round(batched, 2), "single_prompts_per_s": round(single, 2),
            "speedup": round(batched / single, 2),
        },
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "command": " ".join(sys.argv),
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"real_{args.arch}_{device}.json"
    write_json(path, out)
    print(path)
    print(out)


if __name__ == "__main__":
    main()
