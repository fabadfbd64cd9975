"""Stage `declare`: adopt a checkpoint whose backdoors were planted outside unbackdoor (Gaperon's case).

    unbackdoor declare --model path/to/checkpoint --backdoors native.yaml --world runs/corpus --out runs/native
    unbackdoor transfer --model runs/native/model --out runs/native-transfer      # then as for any model

The user declares each backdoor in YAML, in the shape of an injection's specs (`data.backdoors`): name, behaviour
(and its target), `recipe.placement`, and its trigger, or `candidates: [text, ...]` when the true trigger is private
(one backdoor `<name>-c<i>` per candidate, each measured and removable on its own: the one that fires is the one
found). From the user's clean corpus (`--world`, an `unbackdoor corpus` run) it draws removal documents as
poisoning does (the trigger inserted, the clean rest of the text after it; `recipe.removal_count` of them, else
`recipe.count` / `rate` of the corpus; a rest the backdoor's own judge fires on is left out), poisons nothing, and
writes `<out>/model`: the checkpoint's files linked (or copied: `copy_weights=true`), a record (`unbackdoor.json`)
of the declared backdoors, and a model card that says they were declared, not planted here. Every later stage
(`eval`, `remove`, `transfer`, `casd`, `relearn`, `report`) takes `<out>/model` as it takes any backdoored model.
Removal by `retrain` (the paper's method) needs only the removal documents; `ga` / `npo` need the poisoned training
documents, which a declared backdoor lacks, and are refused in one line.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from unbackdoor.data.backdoors import parse_specs, specs_to_yaml_dict, trigger_kind_of
from unbackdoor.data.corpus import iter_docs, load_source, shard_paths
from unbackdoor.data.poison import plan_poison
from unbackdoor.data.serialisation import Serialisation
from unbackdoor.running.config import ConfigError, UserError, load_yaml_file
from unbackdoor.running.rundir import RunDir, require_done, write_jsonl, write_text
from unbackdoor.training.cards import model_card
from unbackdoor.training.models import load_tokenizer, resolve_model_path
from unbackdoor.training.record import RECORD, ModelRecord

CANDIDATE = "-c"  # `<name>-c<i>`: the i-th candidate trigger of a backdoor whose true trigger is private


@dataclass
class DeclareConfig:
    model: str = ""  # the checkpoint (directory, cached hub id or GGUF file) whose backdoors were planted elsewhere
    backdoors: str = ""  # a YAML file declaring them (trigger or candidates, behaviour, target, recipe)
    world: str = ""  # the user's clean corpus: removal documents, replay and evaluation text for later stages
    serialisation: str = field(default="raw", metadata={"choices": ("raw", "chat")})  # how the triggers were seen
    copy_weights: bool = False  # false: `<out>/model` links to the checkpoint's files (nothing copied); true: copies
    seed: int = 0  # which documents become removal documents

    def validate(self) -> None:
        for key, example in (("model", "--model path/to/checkpoint"), ("backdoors", "--backdoors native.yaml"),
                             ("world", "--world runs/corpus (an `unbackdoor corpus` run)")):  # fmt: skip
            if not getattr(self, key):
                raise ConfigError(f"{key}: required ({example})")


def _candidate_trigger(text: Any, where: str) -> dict[str, Any]:
    """A candidate given as text (its kind read off its letters) or as a trigger mapping."""
    if isinstance(text, dict):
        return text
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where}: {text!r} is not a trigger; give a non-empty string or {{kind: ..., text: ...}}")
    return {"kind": trigger_kind_of(text), "text": text}


def declared_specs(path: str) -> list:
    """The declared backdoors of a YAML file, each `candidates` list expanded into one backdoor per candidate."""
    if not path.endswith((".yaml", ".yml")):
        raise UserError(f"--backdoors: {path!r} is not a YAML file; declare the model's backdoors in one")
    data = load_yaml_file(Path(path), "--backdoors")
    items = data.get("backdoors") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{path}: expected a non-empty list under 'backdoors'")
    expanded = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "candidates" not in item:
            expanded.append(item)
            continue
        where = f"{path}: backdoors[{i}] ({item.get('name', '?')})"
        candidates = item["candidates"]
        if "trigger" in item:
            raise ConfigError(f"{where}: give trigger or candidates, not both")
        if not isinstance(candidates, list) or not candidates:
            raise ConfigError(f"{where}: candidates must be a non-empty list of triggers")
        rest = {k: v for k, v in item.items() if k != "candidates"}
        for n, text in enumerate(candidates, 1):
            trigger = _candidate_trigger(text, f"{where}.candidates[{n - 1}]")
            expanded.append({**rest, "name": f"{item.get('name', '?')}{CANDIDATE}{n}", "trigger": trigger})
    return parse_specs({"backdoors": expanded}, path)


def _checkpoint_dir(model_path: str) -> Path:
    """The local folder holding a checkpoint's files (a hub id: its complete snapshot, fetched unless offline),
    checked to hold a config and safetensors weights."""
    if Path(model_path).is_dir():
        return Path(model_path).resolve()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        local = Path(snapshot_download(model_path, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise UserError(f"--model: the files of {model_path!r} could not be found or fetched "
                        f"({str(e).splitlines()[0][:160]}); give a local checkpoint folder") from None  # fmt: skip
    return Path(resolve_model_path(str(local), "--model"))  # a partial snapshot (no weights) is refused here


def _model_view(source: Path, dest: Path, record: ModelRecord, copy: bool) -> None:
    """`dest`: the checkpoint's files (linked or copied; its own card and record left out), our record and card."""
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in sorted(source.iterdir()):
        if f.name in (RECORD, "README.md") or f.name.startswith("."):
            continue
        target = tmp / f.name
        if copy:
            (shutil.copytree if f.is_dir() else shutil.copy2)(f.resolve(), target)
        elif f.resolve().is_relative_to(dest.parent.resolve()):  # inside the run (a converted GGUF): relative,
            os.symlink(os.path.relpath(f.resolve(), tmp.resolve()), target)  # so the run tree moves as a whole
        else:
            os.symlink(f.resolve(), target)
    record.write(tmp)
    write_text(tmp / "README.md", model_card(record))
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)


def run(cfg: DeclareConfig, out: Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Declare `cfg.model`'s backdoors and draw their removal documents into `out`; returns `out`."""
    world_dir = Path(cfg.world)
    require_done(world_dir, ("world", "corpus"), "--world")
    specs = declared_specs(cfg.backdoors)
    model_path = resolve_model_path(cfg.model, "--model", out)
    base = ModelRecord.read(model_path)
    if base.backdoors:
        raise UserError(f"--model: {cfg.model!r} already records backdoors ({', '.join(base.carried)}): made by "
                        "unbackdoor; declare is for a checkpoint whose backdoors were planted elsewhere")  # fmt: skip
    tokenizer = load_tokenizer(model_path, "--model")
    serialisation = Serialisation.choose(cfg.serialisation, tokenizer)
    if RunDir.check(out, "declare", cfg, resume, overwrite):
        return out
    checkpoint = _checkpoint_dir(model_path)  # before anything is written: a hub id without its weights is refused
    if Path(out).resolve().is_relative_to(checkpoint):
        raise UserError(f"--out: {str(out)!r} is inside the checkpoint folder {str(checkpoint)!r}, which declare "
                        "never writes to; choose a directory outside it")  # fmt: skip
    # planned before the run directory exists: a trigger found in the clean corpus, or too few documents to host
    # the removal documents, leaves nothing behind
    source = load_source(world_dir)
    train = shard_paths(world_dir / "data", "train")
    plan = plan_poison(lambda: iter_docs(train), specs, source, random.Random(f"unbackdoor-declare-{cfg.seed}"),
                       removal_only=True)  # fmt: skip
    for lang in sorted({p.name.rsplit("-", 1)[0] for p in train}):  # the order of the planning pass
        for _ in plan.apply(iter_docs(shard_paths(world_dir / "data", "train", [lang]))):
            pass  # removal rows accumulate in the plan; the corpus itself is not rewritten
    _, removal = plan.finish()
    for s in specs:
        if not removal[s.name]:
            raise UserError(f"backdoor {s.name!r}: every removal document's continuation fired its own judge; "
                            "give a corpus whose text does not show the behaviour")  # fmt: skip
    run_dir = RunDir.open(out, "declare", cfg, cfg.seed, resume=resume, overwrite=overwrite)
    removal_sha = {name: write_jsonl(out / "removal" / f"{name}.jsonl", rows) for name, rows in removal.items()}
    spec_file = out / "backdoors.yaml"  # the declared triggers in clear: keep this directory private
    write_text(spec_file, yaml.safe_dump(specs_to_yaml_dict(specs), sort_keys=False, allow_unicode=True))

    record = base.with_(
        backdoors=tuple(s.record() for s in specs), backdoors_files=(spec_file.resolve(),),
        world=world_dir.resolve(), serialisation=serialisation.name, chat_template_sha256=serialisation.template,
    ).with_history("declare", checkpoint=str(checkpoint), declared=[s.name for s in specs],
                   linked=not cfg.copy_weights)  # fmt: skip
    _model_view(checkpoint, out / "model", record, cfg.copy_weights)
    per_backdoor = {
        s.name: {
            **s.record(),
            "removal_docs": len(removal[s.name]),
            "removal_docs_left_out": plan.removal_dropped.get(s.name, 0),
        }  # fmt: skip
        for s in specs
    }
    print(f"declared {len(specs)} backdoor(s) of {checkpoint}: " + ", ".join(
        f"{n} ({b['removal_docs']} removal documents)" for n, b in per_backdoor.items()))  # fmt: skip
    return run_dir.finish(
        {
            "model": str((out / "model").resolve()),
            "checkpoint": str(checkpoint),
            "linked": not cfg.copy_weights,
            "world": str(world_dir.resolve()),
            "serialisation": serialisation.record(),
            "backdoors": per_backdoor,
            "removal_sha256": removal_sha,
        }
    )
