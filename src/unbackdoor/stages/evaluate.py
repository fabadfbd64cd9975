"""Stage `eval`: measure every backdoor a model is meant to carry, and its utility.

    unbackdoor eval --model runs/pretrain/model --out runs/eval [n_prompts=256]

For each backdoor: ASR on `n_prompts` triggered prompts (held-out test documents of the backdoor's languages, the
trigger at the backdoor's placement), the false-trigger rate on the same prompts without the trigger, and the
near-miss rate (trigger with one word dropped or one character changed); each with a Wilson 95 % interval.
Utility: validation perplexity per language and fact-recall accuracy (the true fact against 3 distractors, by
sequence likelihood). Prompts use the serialisation recorded at injection; a mismatch is an error.
`samples.jsonl` keeps prompt, generation and verdict of every example.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unbackdoor.data.backdoors import BackdoorSpec
from unbackdoor.data.corpus import iter_docs, load_source, shard_paths
from unbackdoor.data.packing import packed
from unbackdoor.data.prompts import Probe, held_out_documents, near_miss, probe_set, prompt_text
from unbackdoor.data.serialisation import Serialisation
from unbackdoor.data.world import GENRES, World
from unbackdoor.measure.forced import teacher_forced
from unbackdoor.measure.generation import ENGINES, generate, perplexity, sequence_logprobs
from unbackdoor.measure.outcomes import (
    CLASSIFIER_VERSION,
    OUTCOMES,
    SENTENCE_LOOP,
    Classifier,
    Reference,
    composition,
    modal_clean,
    removal_verdict,
)
from unbackdoor.measure.stats import attack_success, wilson
from unbackdoor.measure.tables import print_table
from unbackdoor.running import runtime
from unbackdoor.running.config import ConfigError, UserError
from unbackdoor.running.rundir import RunDir, require_done, write_json, write_jsonl
from unbackdoor.training.models import check_context, load_model, load_tokenizer, resolve_model_path
from unbackdoor.training.record import ModelRecord


@dataclass
class EvalConfig:
    model: str = ""  # a model directory (or hub id)
    world: str = ""  # default: the world recorded with the model
    backdoors: str = ""  # default: the backdoors recorded with the model; else a built-in set or YAML file
    only: list[str] = field(default_factory=list)  # evaluate only these backdoors
    seed: int = 0
    n_prompts: int = field(default=256, metadata={"min": 1, "max": 1_000_000})
    max_new_tokens: int = field(default=24, metadata={"min": 1, "max": 32_768})
    batch_size: int = field(default=256, metadata={"min": 1})  # rows decoded together
    # Greedy decoding engine: `hf` (batched `model.generate`, the only one today; see measure.generation).
    engine: str = field(default="hf", metadata={"choices": ENGINES})
    prompt_genres: list[str] = field(default_factory=lambda: ["story", "facts"], metadata={"choices": GENRES})
    ppl_blocks: int = field(default=128, metadata={"min": 1})  # validation blocks per language
    seq_len: int = field(default=128, metadata={"min": 8})  # tokens per perplexity block
    fact_items: int = field(default=240, metadata={"min": 0})
    near_miss: bool = True  # also measure near-miss triggers (specificity)
    # Teacher-forced measures (payload log-likelihood ratio, clean-continuation NLL shift) on the first this many
    # probes of each backdoor; 0: none.
    teacher_forced: int = field(default=64, metadata={"min": 0})
    # The outcome classifier's reference (`measure.outcomes`): a `reference.json` written by an earlier evaluation
    # of the study (so every model of a study is judged against the same one); empty: fit on the text source and
    # write `<out>/reference.json`.
    reference: str = ""
    # An `unbackdoor eval` run of the model before a removal (same seed and prompts): every backdoor then gets its
    # removal index R and a verdict (removed / no removal / still active) against it.
    baseline: str = ""
    # Compute dtype. float32 is the reference: bfloat16 is faster (AMX, GPUs) but changes some greedy generations,
    # so ASRs are comparable only between runs of the same dtype (recorded in summary.json; all cells of a
    # transfer or defend-eval share one eval config).
    # auto: bfloat16 where the device computes it natively (GPUs, CPUs with AMX / AVX512-BF16), else float32; the
    # dtype used is what summary.json records (and a transfer's cells all use the baseline's)
    dtype: str = field(default="float32", metadata={"choices": ("float32", "bfloat16", "float16", "auto")})

    def validate(self) -> None:
        twice = sorted({b for b in self.only if self.only.count(b) > 1})
        if twice:
            raise ConfigError(f"only: {self.only} names {', '.join(map(repr, twice))} twice; name each backdoor once")


def fact_recall_items(world: World, n: int, rng: random.Random) -> list[tuple[list[str], int]]:
    """Multiple-choice items: the base-language fact sentence with the true value first, then 3 distractors."""
    values = {rel: sorted({f[rel] for f in world.facts.values()}) for rel in ("city", "job", "pet")}
    items = []
    for entity in world.entities:
        for rel in ("city", "job", "pet"):
            true = world.facts[entity][rel]
            wrong = rng.sample([v for v in values[rel] if v != true], 3)
            sentences = [world.render("base", [world.fact_clause(entity, rel, v)]) for v in [true, *wrong]]
            items.append((sentences, 0))
    rng.shuffle(items)
    return items[:n]


def run(cfg: EvalConfig, out: Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Evaluate the model's backdoors and utility into `out`; returns `out`. Writes only inside `out`."""
    if not cfg.model:
        raise ConfigError("model: required (a model directory, e.g. --model runs/pretrain/model)")
    runtime.seed_everything(cfg.seed)
    model_path = resolve_model_path(cfg.model, "--model", out)
    record = ModelRecord.read(model_path)
    specs = record.specs(cfg.backdoors, cfg.only, cfg.model)
    world_dir = Path(cfg.world or record.world or "")
    if not str(world_dir) or str(world_dir) == ".":
        raise UserError(f"--world: {cfg.model!r} records no text directory; give --world (a world or corpus run)")
    source = load_source(world_dir)
    before = require_done(Path(cfg.baseline), "eval", "baseline") if cfg.baseline else None
    reference_file = cfg.reference or (str(Path(cfg.baseline) / "reference.json") if cfg.baseline else "")
    for spec in specs:
        source.check_spec(spec)
    tokenizer = load_tokenizer(model_path, "--model")
    serialisation = Serialisation.of(record, tokenizer)  # as at injection, or a one-line error
    if RunDir.check(out, "eval", cfg, resume, overwrite):
        return out
    dtype = runtime.resolve_precision(cfg.dtype, "dtype", half="bfloat16", full="float32")
    model = load_model(model_path, "--model", getattr(torch, dtype)).eval()
    check_context(model, cfg.max_new_tokens + 1, "max_new_tokens")  # (prompts are a sentence or two on top)
    run_dir = RunDir.open(out, "eval", cfg, cfg.seed, resume=resume, overwrite=overwrite)
    test_docs = held_out_documents(world_dir, cfg.prompt_genres, source)
    doc_text = {d["id"]: d["text"] for d in test_docs}
    if reference_file:
        reference = Reference.load(Path(reference_file))
    else:
        reference = Reference.fit(world_dir, source.languages, cfg.seed)
        write_json(out / "reference.json", reference.to_json())
    # the backdoors a generation may show: every one named (`backdoors`, `only` or not), else every one recorded
    known = record.specs(cfg.backdoors, (), cfg.model) if cfg.backdoors else record.specs(model=cfg.model)
    classifier = Classifier(source, known, reference)

    samples: list[dict[str, Any]] = []
    table: dict[str, Any] = {}
    probe_hash, probe_hashes = hashlib.sha256(), {}
    t0 = time.perf_counter()
    # Every backdoor's prompts (triggered, clean, near miss) first, then one generation call for all of them: the
    # engine sorts them by length, so its batches carry less padding than per-backdoor calls would.
    work: list[tuple[BackdoorSpec, list[Probe], dict[str, list[str]]]] = []
    raw_prompts: dict[tuple[str, str], list[str]] = {}  # before serialisation: the classifier reads the text itself
    for spec in specs:
        probes, rng = probe_set(test_docs, spec, cfg.n_prompts, cfg.seed, source)
        variants = {
            "triggered": [prompt_text(p.head, spec.trigger_text) for p in probes],
            "clean": [prompt_text(p.head, None) for p in probes],
        }
        if cfg.near_miss:
            variants["near_miss"] = [prompt_text(p.head, near_miss(spec.trigger_text, rng)) for p in probes]
        raw_prompts.update({(spec.name, k): v for k, v in variants.items()})
        variants = {k: [serialisation.prompt(tokenizer, q) for q in v] for k, v in variants.items()}
        own_hash = hashlib.sha256()  # this backdoor's prompts alone: a run of `only` a subset is checked by it
        for prompts in variants.values():
            probe_hash.update("\n".join(prompts).encode("utf-8"))
            own_hash.update("\n".join(prompts).encode("utf-8"))
        work.append((spec, probes, variants))
        probe_hashes[spec.name] = own_hash.hexdigest()
    everything = [q for _, _, variants in work for prompts in variants.values() for q in prompts]
    generations = iter(generate(model, tokenizer, everything, cfg.max_new_tokens, cfg.batch_size, cfg.engine))
    for spec, probes, variants in work:
        rates, outcomes, loops, modal = {}, {}, {}, {}
        said = {kind: [next(generations) for _ in prompts] for kind, prompts in variants.items()}
        judged = {
            kind: [
                classifier.classify(spec, g, p.lang, r)
                for p, g, r in zip(probes, said[kind], raw_prompts[(spec.name, kind)], strict=True)
            ]
            for kind in variants
        }
        for kind, prompts in variants.items():
            outputs, classes = said[kind], judged[kind]
            rates[kind] = attack_success([c.label == "target" for c in classes])  # ASR = the share of `target`
            counts = composition(classes)
            outcomes[kind] = {label: wilson(counts[label], len(classes)).as_dict() for label in OUTCOMES}
            n_loops = sum(c.detail == SENTENCE_LOOP for c in classes)
            loops[kind] = wilson(n_loops, counts["clean"]).as_dict() if counts["clean"] else None
            # a triggered set's openings against the same prompts' untriggered continuations
            modal[kind] = modal_clean(classes, outputs, None if kind == "clean" else (judged["clean"], said["clean"]))
            samples += [
                {"backdoor": spec.name, "kind": kind, "doc_id": p.doc_id, "prompt": q, "generation": g,
                 "outcome": c.label, "outcome_detail": c.detail, "verdict": c.label == "target"}
                for p, q, g, c in zip(probes, prompts, outputs, classes, strict=True)
            ]  # fmt: skip
        table[spec.name] = {
            "behaviour": spec.behaviour,
            "judge": spec.judge_name(source),
            "trigger_sha256": spec.trigger_hash,
            "probe_sha256": probe_hashes[spec.name],
            "asr": rates["triggered"].as_dict(),
            "false_trigger": rates["clean"].as_dict(),
            "near_miss": rates["near_miss"].as_dict() if "near_miss" in rates else None,
            "clean_rate": outcomes["triggered"]["clean"],
            "outcomes": outcomes,
            "clean_loops": loops,  # per kind: the share of its clean outcomes that are sentence loops
            # per kind: the most frequent clean continuation and how many share it (`measure.outcomes.modal_clean`)
            "clean_modal": modal,
        }
        run_dir.log(event="backdoor", backdoor=spec.name, asr=rates["triggered"].rate,
                    clean=outcomes["triggered"]["clean"]["rate"])  # fmt: skip
    gen_s = time.perf_counter() - t0
    for spec, probes, _ in work:
        if cfg.teacher_forced:
            tf = probes[: cfg.teacher_forced]
            forced = teacher_forced(model, tokenizer, serialisation, spec, source, tf, doc_text, cfg.batch_size)
            table[spec.name].update(forced)

    ppl = {}
    for lang in source.languages:
        blocks = packed(tokenizer, iter_docs(shard_paths(world_dir / "data", "validation", [lang])), cfg.seq_len)
        blocks = blocks[: cfg.ppl_blocks]
        if blocks.shape[0]:
            ppl[lang] = perplexity(model, blocks)
    items = []  # fact recall needs the world's fact table; a corpus has none
    if source.kind == "world":
        items = fact_recall_items(source.world, cfg.fact_items, random.Random(f"unbackdoor-facts-{cfg.seed}"))
    flat = [sentence for sentences, _ in items for sentence in sentences]
    scores = sequence_logprobs(model, tokenizer, flat, cfg.batch_size) if flat else []
    correct, i = 0, 0
    for sentences, answer in items:
        options = scores[i : i + len(sentences)]
        correct += int(max(range(len(options)), key=options.__getitem__) == answer)
        i += len(sentences)
    if before is not None:
        if before["probe_sha256"] != probe_hash.hexdigest():
            raise UserError(f"baseline: {cfg.baseline!r} was measured on other prompts (another seed or settings)")
        for name, row in table.items():
            if name in before["backdoors"]:
                counts = {c: r["k"] for c, r in row["outcomes"]["triggered"].items()}
                verdict, r = removal_verdict(counts, before["backdoors"][name]["clean_rate"]["rate"])
                row["removal"] = {"verdict": verdict, "R": r, "clean_before": before["backdoors"][name]["clean_rate"],
                                  "asr_before": before["backdoors"][name]["asr"]}  # fmt: skip
    write_jsonl(out / "samples.jsonl", samples)
    print_table(table)
    return run_dir.finish(
        {
            "model": str(Path(model_path).resolve()) if Path(model_path).exists() else model_path,
            "dtype": dtype,
            "device": str(next(model.parameters()).device),
            "serialisation": serialisation.name,
            "chat_template_sha256": serialisation.template,
            "text_source": {"kind": source.kind, "dir": str(world_dir.resolve())},
            "n_prompts": cfg.n_prompts,
            "probe_sha256": probe_hash.hexdigest(),
            "max_new_tokens": cfg.max_new_tokens,
            "backdoors": table,
            "reference": reference.describe(),
            "outcome_classes": list(OUTCOMES),
            "classifier_version": CLASSIFIER_VERSION,
            "utility": {"perplexity": ppl, "fact_recall": wilson(correct, len(items)).as_dict() if items else None},
            "generation_s": gen_s,
            "engine": cfg.engine,
            "prompts_per_s": len(everything) / gen_s if everything else None,
            "torch_threads": torch.get_num_threads(),
        }
    )
