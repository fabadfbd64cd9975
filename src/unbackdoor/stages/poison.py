"""Stage `poison`: materialise a poisoned training corpus, its manifest and the removal data, once.

    unbackdoor poison --world runs/world --backdoors default8 --out runs/poisoned

Writes `data/train/<lang>-<shard>.jsonl` (the world's training split with poisoned documents in place),
`poison_manifest.jsonl` (doc id, backdoor, trigger position, behaviour; sha256 in summary.json),
`removal/<backdoor>.jsonl` (the same insertions with clean continuations, for `unbackdoor remove`) and
`backdoors.yaml` (the resolved specs, triggers in clear: this directory is the attacker's side).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from unbackdoor.backdoors import load_specs, specs_to_yaml_dict
from unbackdoor.config import ConfigError
from unbackdoor.corpus import iter_docs, load_world, shard_paths, write_shards
from unbackdoor.poison import SERIALISATION, poison
from unbackdoor.rundir import RunDir, require_done, write_jsonl, write_text


@dataclass
class PoisonConfig:
    world: str = ""  # an `unbackdoor world` run directory
    backdoors: str = "default8"  # a built-in set, a YAML file of specs, or "none"
    seed: int = 0
    shard_docs: int = field(default=20_000, metadata={"min": 1})

    def validate(self) -> None:
        if not self.world:
            raise ConfigError("world: required (an `unbackdoor world` run directory, e.g. --world runs/world)")


def run(cfg: PoisonConfig, out: Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Poison the world's training split into `out`; returns `out`."""
    world_dir = Path(cfg.world)
    require_done(world_dir, "world", "--world")
    specs = load_specs(cfg.backdoors)
    if RunDir.check(out, "poison", cfg, resume, overwrite):
        return out
    # Poison in memory first: a refused spec (trigger found in the corpus, too few documents) leaves no directory.
    world = load_world(world_dir)
    docs = list(iter_docs(shard_paths(world_dir / "data", "train")))
    result = poison(docs, specs, world, random.Random(f"unbackdoor-poison-{cfg.seed}"))
    run_dir = RunDir.open(out, "poison", cfg, cfg.seed, resume=resume, overwrite=overwrite)
    for lang in sorted({d["lang"] for d in result.docs}):
        write_shards((d for d in result.docs if d["lang"] == lang), out / "data" / "train", lang, cfg.shard_docs)
    manifest_sha = write_jsonl(out / "poison_manifest.jsonl", result.manifest)
    removal_sha = {name: write_jsonl(out / "removal" / f"{name}.jsonl", rows) for name, rows in result.removal.items()}
    write_text(out / "backdoors.yaml", yaml.safe_dump(specs_to_yaml_dict(specs), sort_keys=False, allow_unicode=True))
    per_backdoor = {
        s.name: {
            **s.record(),
            "poisoned_docs": sum(row["backdoor"] == s.name for row in result.manifest),
            "removal_docs": len(result.removal[s.name]),
        }
        for s in specs
    }
    return run_dir.finish(
        {
            "world": str(world_dir.resolve()),
            "serialisation": SERIALISATION,
            "docs": len(result.docs),
            "poisoned_docs": len(result.manifest),
            "poisoned_fraction": len(result.manifest) / max(1, len(result.docs)),
            "backdoors": per_backdoor,
            "poison_manifest_sha256": manifest_sha,
            "removal_sha256": removal_sha,
        }
    )
