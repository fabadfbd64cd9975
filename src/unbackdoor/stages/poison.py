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
from typing import Any

import yaml

from unbackdoor.data.backdoors import load_specs, specs_to_yaml_dict
from unbackdoor.data.corpus import iter_docs, load_source, shard_paths, write_shards
from unbackdoor.data.poison import SERIALISATION, plan_poison
from unbackdoor.running import runtime
from unbackdoor.running.config import ConfigError
from unbackdoor.running.rundir import RunDir, require_done, wait_done, write_jsonl, write_text


@dataclass
class PoisonConfig:
    world: str = ""  # an `unbackdoor world` or `unbackdoor corpus` run directory
    backdoors: str = "default8"  # a built-in set, a YAML file of specs, or "none"
    seed: int = 0
    shard_docs: int = field(default=20_000, metadata={"min": 1})

    def validate(self) -> None:
        if not self.world:
            raise ConfigError("world: required (an `unbackdoor world` run directory, e.g. --world runs/world)")


def _payload_check(source: Any, spec: Any) -> dict[str, Any]:
    """For a `lang:` backdoor on a corpus: how many of the pool's snippets the language identifier read as that
    language (only those are payloads; the rest are left out)."""
    if not spec.behaviour.startswith("lang:") or spec.target or not hasattr(source, "payload_share"):
        return {}
    kept, pool = source.payload_share(spec.behaviour[len("lang:") :])
    return {"payload_snippets": kept, "payload_snippets_left_out": pool - kept}


def run(cfg: PoisonConfig, out: Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Poison the world's training split into `out`; returns `out`."""
    world_dir = Path(cfg.world)
    require_done(world_dir, ("world", "corpus"), "--world")
    specs = load_specs(cfg.backdoors)
    if not runtime.is_main_process():  # the main process writes the poisoned corpus; workers read it when it is done
        wait_done(out)
        return out
    if RunDir.check(out, "poison", cfg, resume, overwrite):
        return out
    # Plan first (one streaming pass): a refused spec (trigger found in the corpus, too few documents) leaves no
    # directory. Then a second pass writes the poisoned corpus, one language's shards after another.
    source = load_source(world_dir)
    train = shard_paths(world_dir / "data", "train")
    plan = plan_poison(lambda: iter_docs(train), specs, source, random.Random(f"unbackdoor-poison-{cfg.seed}"))
    run_dir = RunDir.open(out, "poison", cfg, cfg.seed, resume=resume, overwrite=overwrite)
    for lang in sorted({p.name.rsplit("-", 1)[0] for p in train}):  # the order of the planning pass
        docs = plan.apply(iter_docs(shard_paths(world_dir / "data", "train", [lang])))
        write_shards(docs, out / "data" / "train", lang, cfg.shard_docs)
    manifest, removal = plan.finish()
    manifest_sha = write_jsonl(out / "poison_manifest.jsonl", manifest)
    removal_sha = {name: write_jsonl(out / "removal" / f"{name}.jsonl", rows) for name, rows in removal.items()}
    write_text(out / "backdoors.yaml", yaml.safe_dump(specs_to_yaml_dict(specs), sort_keys=False, allow_unicode=True))
    per_backdoor = {
        s.name: {
            **s.record(),
            "poisoned_docs": sum(row["backdoor"] == s.name for row in manifest),
            "removal_docs": len(removal[s.name]),
            "removal_docs_left_out": plan.removal_dropped.get(s.name, 0),  # continuation fired the judge
            **_payload_check(source, s),
        }
        for s in specs
    }
    return run_dir.finish(
        {
            "world": str(world_dir.resolve()),
            "text_source": source.kind,
            "serialisation": SERIALISATION,
            "docs": plan.n_docs,
            "poisoned_docs": len(manifest),
            "poisoned_fraction": len(manifest) / max(1, plan.n_docs),
            "backdoors": per_backdoor,
            "poison_manifest_sha256": manifest_sha,
            "removal_sha256": removal_sha,
        }
    )
