"""Evaluation throughput: batched greedy generation vs one prompt at a time, same prompts, same model.

    .venv/bin/python benchmarks/bench_eval.py [--model runs/demo/pretrain/model] [--prompts 512]
        [--prompts-from runs/demo/eval/samples.jsonl]

Without `--model`, a randomly initialised tiny llama with a 2 k vocabulary is used (it never emits EOS early, so
every prompt generates the full `--new-tokens`: the worst case for batching). For each of `--dtypes` (float32, the
reference, then bfloat16), measured back to back on the same prompts: prompts/s of the evaluation's engine
(`hf`: `model.generate` batched, sorted by length) and of `model.generate` one prompt at a time (the baseline); the
ratio; whether batched and one-at-a-time decoding give the same continuations; and how many equal the reference
dtype's. `--prompts 0 --prompts-from EVAL/samples.jsonl` times the batched engine on an eval run's whole workload
(every backdoor's triggered, clean and near-miss prompts, which `eval` generates in one call).
Writes `benchmarks/results/eval.json`.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from unbackdoor.measure.generation import generate
from unbackdoor.running.rundir import write_json
from unbackdoor.training.models import build_config, load_model, load_tokenizer

RESULTS = Path(__file__).resolve().parent / "results"


class _ToyTokenizer:
    """Enough of a tokenizer for `generate` on a random model: words <-> ids by a fixed table."""

    eos_token_id, pad_token_id = 2, 0

    def __init__(self, vocab: int):
        self.vocab = vocab

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[3 + (hash(w) % (self.vocab - 3)) for w in t.split()] for t in texts]}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(f"w{i}" for i in ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--prompts", type=int, default=512, help="0 with --prompts-from: all")
    parser.add_argument("--naive-prompts", type=int, default=128, help="one-at-a-time is timed on this many")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--batch", type=int, default=256, help="rows decoded together (eval's batch_size)")
    parser.add_argument("--repeats", type=int, default=3, help="each rate is the best of this many runs")
    parser.add_argument("--prompts-from", default=None, help="an eval run's samples.jsonl: its real prompts")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes, the first is the reference")
    args = parser.parse_args()

    rng = random.Random(0)
    words = "the dog sees a boat near river cat lamp old red big tree house garden road".split()
    prompts = [" ".join(rng.choice(words) for _ in range(rng.randint(12, 28))) for _ in range(args.prompts)]
    if args.prompts_from:
        rows = [json.loads(line) for line in Path(args.prompts_from).read_text(encoding="utf-8").splitlines()]
        pool = [r["prompt"] for r in rows]
        prompts = pool if args.prompts == 0 else [pool[i] for i in sorted(rng.sample(range(len(pool)), args.prompts))]
    # one at a time (`model.generate` on each prompt, the baseline the issue names) on a random subset
    naive_idx = sorted(rng.sample(range(len(prompts)), min(args.naive_prompts, len(prompts))))
    if args.model:
        model, tokenizer = load_model(args.model), load_tokenizer(args.model)
    else:
        torch.manual_seed(0)
        special = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
        model = AutoModelForCausalLM.from_config(build_config("llama", "tiny", 2048, special))
        tokenizer = _ToyTokenizer(2048)
    model.eval()

    out = {
        "model": args.model or "random tiny llama (vocab 2048)",
        "prompts_from": args.prompts_from,
        "prompts": len(prompts),
        "one_at_a_time_prompts": len(naive_idx),
        "new_tokens": args.new_tokens,
        "batch": args.batch,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "dtypes": {},
    }
    reference = None
    for name in args.dtypes.split(","):
        model = model.to(getattr(torch, name))
        generate(model, tokenizer, prompts[:8], args.new_tokens, args.batch)  # warm-up
        timed = {}
        for _ in range(args.repeats):  # best of `repeats` for each: the machine is shared and its speed drifts
            t = time.perf_counter()
            timed["hf"] = generate(model, tokenizer, prompts, args.new_tokens, args.batch, "hf")
            timed["hf_s"] = min(time.perf_counter() - t, timed.get("hf_s", float("inf")))
            t = time.perf_counter()
            naive = [generate(model, tokenizer, [prompts[i]], args.new_tokens, 1, "hf")[0] for i in naive_idx]
            timed["naive_s"] = min(time.perf_counter() - t, timed.get("naive_s", float("inf")))
        naive_rate = len(naive_idx) / timed["naive_s"]
        batched = timed["hf"]
        reference = reference or batched  # the first dtype (float32 by default) is the reference
        out["dtypes"][name] = {
            "engine": "hf",
            "batched_prompts_per_s": len(prompts) / timed["hf_s"],
            "one_at_a_time_prompts_per_s": naive_rate,
            "speedup": len(prompts) / timed["hf_s"] / naive_rate,
            # same continuations: batched vs one at a time (same dtype), and vs the reference dtype's
            "greedy_agreement": sum(naive[k] == batched[i] for k, i in enumerate(naive_idx)) / len(naive),
            "agreement_with_reference": sum(a == b for a, b in zip(batched, reference, strict=True)) / len(batched),
        }
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write_json(RESULTS / "eval.json", out)
    print(json.dumps(out, indent=1), file=sys.stderr)
    print(RESULTS / "eval.json")


if __name__ == "__main__":
    main()
