"""Stage `world`: generate the embedded multilingual corpus and train its tokenizer.

    unbackdoor world --preset tiny --out runs/world [seed=1] [tokens=5000000]

Writes `world.json` (lexicons, grammars, fact table), `data/{train,validation,test}/<lang>-<shard>.jsonl` and
`tokenizer/` (byte-level BPE for `AutoTokenizer`). Same seed, same bytes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from unbackdoor.data.corpus import SPLITS, hash_files, iter_docs, shard_paths, write_shards
from unbackdoor.data.packing import tokenize_docs
from unbackdoor.data.tokenizer import save_tokenizer, train_tokenizer
from unbackdoor.data.world import GENRES, LANGUAGES, World, generate_documents, pre_token_count
from unbackdoor.running.config import ConfigError
from unbackdoor.running.rundir import RunDir, write_json


@dataclass
class WorldConfig:
    seed: int = 0
    tokens: int = field(
        default=3_000_000, metadata={"min": 10_000, "max": 2_000_000_000}
    )  # pre-tokens (words + punctuation), all splits
    languages: dict[str, float] = field(
        default_factory=lambda: {"base": 0.55, "lang_a": 0.15, "lang_b": 0.15, "lang_c": 0.15}
    )
    genres: dict[str, float] = field(default_factory=lambda: {"story": 0.45, "sentiment": 0.3, "facts": 0.25})
    splits: dict[str, float] = field(default_factory=lambda: {"train": 0.9, "validation": 0.05, "test": 0.05})
    entities: int = field(default=120, metadata={"min": 4, "max": 100_000})
    cities: int = field(default=24, metadata={"min": 4, "max": 10_000})
    vocab_size: int = field(default=2048, metadata={"min": 300, "max": 262_144})
    shard_docs: int = field(default=20_000, metadata={"min": 1})
    # the documents' seed (-1: `seed`): another value writes other documents of the same world (same lexicons,
    # grammar and facts), e.g. a defender's clean corpus disjoint from the attacker's training data
    documents_seed: int = field(default=-1, metadata={"min": -1})

    def validate(self) -> None:
        for key, valid, weights in (
            ("languages", LANGUAGES, self.languages),
            ("genres", GENRES, self.genres),
            ("splits", SPLITS, self.splits),
        ):
            for name, w in weights.items():
                if name not in valid:
                    raise ConfigError(f"{key}.{name}: unknown; valid: {', '.join(valid)}")
                if w < 0:
                    raise ConfigError(f"{key}.{name}: {w} must be >= 0")
            if sum(weights.values()) <= 0:
                raise ConfigError(f"{key}: weights must not all be zero")
        if "base" not in self.languages or self.languages["base"] <= 0:
            raise ConfigError("languages.base: the base language must have a positive share (triggers live there)")
        if set(self.splits) != set(SPLITS) or min(self.splits.values()) <= 0:
            raise ConfigError(f"splits: give a positive share for each of {', '.join(SPLITS)}")


def run(cfg: WorldConfig, out: Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Generate the world into `out`; returns `out`."""
    run_dir = RunDir.open(out, "world", cfg, cfg.seed, resume=resume, overwrite=overwrite)
    if run_dir.done:
        return out
    world = World.build(cfg.seed, cfg.entities, cfg.cities)
    docs_seed = cfg.seed if cfg.documents_seed < 0 else cfg.documents_seed
    write_json(out / "world.json", world.lexicon_table())

    # Each (split, language) stream has its own RNG derived from the seed, so changing one share leaves the
    # other streams' documents unchanged.
    lang_total, split_total = sum(cfg.languages.values()), sum(cfg.splits.values())
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for split in SPLITS:
        counts[split] = {}
        for lang, share in sorted(cfg.languages.items()):
            n_tokens = round(cfg.tokens * share / lang_total * cfg.splits[split] / split_total)
            rng = random.Random(f"unbackdoor-corpus-{docs_seed}-{split}-{lang}")
            docs = generate_documents(world, lang, n_tokens, rng, cfg.genres, f"{split}-{lang}")
            tally = {"docs": 0, "pre_tokens": 0}

            def counted(docs=docs, tally=tally):
                for d in docs:
                    tally["docs"] += 1
                    tally["pre_tokens"] += pre_token_count(d["text"])
                    yield d

            write_shards(counted(), out / "data" / split, lang, cfg.shard_docs)
            counts[split][lang] = tally
            run_dir.log(event="shard", split=split, lang=lang, **tally)

    tokenizer = train_tokenizer((d["text"] for d in iter_docs(shard_paths(out / "data", "train"))), cfg.vocab_size)
    save_tokenizer(tokenizer, out / "tokenizer")
    bpe_tokens = {
        split: sum(map(len, tokenize_docs(tokenizer, iter_docs(shard_paths(out / "data", split))))) for split in SPLITS
    }
    files = hash_files(sorted((out / "data").rglob("*.jsonl")), out)
    return run_dir.finish(
        {
            "seed": cfg.seed,
            "counts": counts,
            "bpe_tokens": bpe_tokens,
            "vocab_size": len(tokenizer),
            "files": files,
            "world_sha256": hash_files([out / "world.json"], out)["world.json"],
        }
    )
