"""What the report reads: which stage lives where under a run directory, their JSON, example generations (with
triggers masked through the model's record), and provenance. The report's only file reads.

Run: `pytest tests/integration/test_report.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unbackdoor.data.backdoors import load_specs
from unbackdoor.report import evaluation
from unbackdoor.running.cells import cell_dir
from unbackdoor.running.config import UserError
from unbackdoor.running.rundir import read_json, read_jsonl, read_yaml
from unbackdoor.training.record import ModelRecord

STUDY = (
    "world",
    "pretrain",
    "eval",
    "transfer",
    "transfer_masked",
    "transfer_lr",
    "casd",
    "replicates",
    "relearn",
    "defence",
)  # a demo's stages
DIRS = {"transfer_masked": "transfer-masked", "transfer_lr": "transfer-lr"}  # directories not named like the stage


@dataclass(frozen=True)
class Results:
    """The JSON of each finished stage of a study (None where the stage is missing or unfinished)."""

    evaluation: dict[str, Any] | None  # the evaluation's summary.json
    evaluation_dir: Path | None
    transfer: dict[str, Any] | None  # transfer.json
    transfer_dir: Path | None
    transfer_masked: dict[str, Any] | None  # transfer.json of the demo's masked-loss ablation
    mask_trigger: bool | None  # `remove.mask_trigger` of that ablation's config (None: not read)
    casd: dict[str, Any] | None  # casd.json
    replicates: dict[str, Any] | None  # replicates.json (the pooled replicates of a demo, or a `replicates` run)
    defence: dict[str, Any] | None  # defend.json
    summaries: dict[str, dict[str, Any]]  # summary.json of a finished run of any other stage, by stage
    relearn: dict[str, Any] | None = None  # relearn.json (persistence after the removals)
    transfer_lr: dict[str, Any] | None = None  # the demo's diagonal at other removal learning rates (transfer.json)


def load(path: Path, name: str) -> Any:
    """The JSON file `name` of the run directory `path`."""
    return read_json(path / name)


def finished(path: Path | None) -> bool:
    """Whether `path` is a finished run directory (its `DONE` marker is there)."""
    return path is not None and (path / "DONE").is_file()


def _stage(path: Path) -> str | None:
    meta = path / "meta.json"
    return read_json(meta).get("stage") if meta.is_file() else None


def collect(root: Path) -> dict[str, Path | None]:
    """Which stage lives where, for the kind of directory `root` is (None: expected but missing)."""
    stage = _stage(root)
    if stage is None:
        raise UserError(f"DIR: {str(root)!r} is not an unbackdoor run directory (no meta.json)")
    if stage == "demo":
        # the backdoored model of replicate 0 (`pretrain`): injected into the twin by default (`inject/`)
        planted = read_yaml(root / "config.yaml").get("replicates_from", "pretrain")
        return {name: root / DIRS.get(name, planted if name == "pretrain" else name) for name in STUDY}
    if stage == "transfer":
        return {"eval": root / "baseline", "transfer": root}
    if stage == "casd":
        transfer = Path(read_yaml(root / "config.yaml")["transfer"])
        return {"eval": transfer / "baseline", "transfer": transfer, "casd": root}
    if stage == "defend-eval":
        return {"defence": root}
    if stage == "relearn":
        transfer = Path(read_yaml(root / "config.yaml")["transfer"])
        return {"eval": transfer / "baseline", "transfer": transfer, "relearn": root}
    if stage == "eval":
        return {"eval": root}
    return {stage: root}


def read_results(stages: dict[str, Path | None]) -> Results:
    """The JSON of the finished evaluation, transfer, CASD and defence stages among `stages`."""

    def where(stage: str) -> Path | None:
        return stages.get(stage) if finished(stages.get(stage)) else None

    def read(stage: str, name: str) -> dict[str, Any] | None:
        path = where(stage)
        return load(path, name) if path is not None else None

    others = [name for name in stages if name not in STUDY]  # a single run of another stage: its key figures
    masked = where("transfer_masked")
    flag = None
    if masked is not None:
        flag = (read_yaml(masked / "config.yaml").get("remove") or {}).get("mask_trigger")
    return Results(
        evaluation=read("eval", "summary.json"),
        evaluation_dir=where("eval"),
        transfer=read("transfer", "transfer.json"),
        transfer_dir=where("transfer"),
        transfer_masked=read("transfer_masked", "transfer.json"),
        mask_trigger=flag,
        casd=read("casd", "casd.json"),
        replicates=read("replicates", "replicates.json"),
        defence=read("defence", "defend.json"),
        relearn=read("relearn", "relearn.json"),
        transfer_lr=read("transfer_lr", "transfer.json"),
        summaries={name: summary for name in others if (summary := read(name, "summary.json")) is not None},
    )


def missing(stages: dict[str, Path | None]) -> dict[str, str]:
    """Stage -> why it is missing (`not run`, or `unfinished (no DONE)`), for every stage not finished."""
    return {name: "not run" if path is None or not path.exists() else "unfinished (no DONE)"
            for name, path in stages.items() if not finished(path)}  # fmt: skip


def trigger_masks(model_dir: str | Path, reveal: bool) -> dict[str, str]:
    """Trigger text -> its label, from the spec files named in the model's record (`evaluation.trigger_masks`)."""
    specs = []
    for source in ModelRecord.read(model_dir).backdoors_files:
        try:
            specs += load_specs(str(source))
        except Exception:  # noqa: BLE001 - a moved spec file only loses masking of its prompts (they are withheld)
            continue
    return evaluation.trigger_masks(specs, reveal)


def examples(results: Results, reveal: bool) -> list[dict[str, Any]] | None:
    """One example per backdoor: the triggered prompt, its generation, the clean one, and after its removal.

    Returns None without a finished evaluation.
    """
    ev_dir, tr = results.evaluation_dir, results.transfer
    if ev_dir is None or results.evaluation is None:
        return None
    cfg = read_yaml(ev_dir / "config.yaml")
    masks = trigger_masks(cfg["model"], reveal)
    samples = read_jsonl(ev_dir / "samples.jsonl")
    out = []
    for name in results.evaluation["backdoors"]:
        after = None
        if results.transfer_dir is not None and tr is not None and name in tr["rows"]:
            g = tr["grids"][0]
            cell = cell_dir(results.transfer_dir, g["lr"], g["seed"], name) / "eval" / "samples.jsonl"
            after = read_jsonl(cell) if cell.is_file() else None
        ex = evaluation.example(samples, name, masks, after)
        if ex is not None:
            out.append(ex)
    return out


def provenance(stages: dict[str, Path | None]) -> list[dict[str, Any]]:
    """Seed, git state, versions, wall time, host and config of every finished stage."""
    rows = []
    for name, path in stages.items():
        if path is None or not finished(path):
            continue
        meta = load(path, "meta.json")
        rows.append({"stage": name, "path": str(path), "seed": meta.get("seed"), "git": meta.get("git", {}),
                     "versions": meta.get("versions", {}), "wall_seconds": meta.get("wall_seconds"),
                     "host": meta.get("host", {}),
                     "config": (path / "config.yaml").read_text(encoding="utf-8")})  # fmt: skip
    return rows
