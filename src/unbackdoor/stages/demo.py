"""Stage `demo`: the study on the embedded default, each stage a run directory inside `--out`.

    unbackdoor demo --out runs/demo --resume      # what `make demo` runs

world (tiny) -> twin (the tiny llama pretrained without backdoors) -> the backdoored model (pretrained with default8;
or default8 injected into the twin by continual pretraining, `replicates_from=inject`) -> eval -> transfer (each
backdoor removed in turn, plus the benign control, every backdoor measured after each) -> casd (on the transfer
experiment) -> defence (the canary defence with K = `canaries` on the backdoored model, its 8 backdoors hidden from
the defender, against both baselines) -> relearn (does each backdoor suppressed by a removal, by transfer or by the
defence come back under benign training, re-poisoning, related text? against a fresh backdoor learned by the
removed model and by the twin) -> report (<out>/report/index.html, printed at the end).
Replicates: `replicates` backdoored models trained with seeds seed, seed+1, ... on the same world: by default
(`replicates_from=pretrain`) each pretrained from scratch with its backdoors, or (`replicates_from=inject`) the
backdoors injected into the one twin with those seeds (preset inject/tiny-dense: 2x faster per replicate, but the
twin's pretraining is shared, so between-pretraining variance is not in the intervals, which the report says, and
the injected models emit the after-first-sentence triggers unprompted 4-5x as often as pretrained ones:
docs/results.md, 2026-12-06). Replicate 0 is the one shown in detail (top-level `inject` or
`pretrain`, `eval`, `transfer`, `transfer-masked`, `transfer-lr`, `relearn`, `casd`, `defence`); r >= 1 runs
inject (or pretrain) -> transfer -> casd -> defence under `replicate-<r>/`; `replicates/` pools every replicate's
transfer, CASD and defence (`unbackdoor replicates`). The masked-loss ablation (the diagonal and one full row), the
lr ablation and the persistence stage run on replicate 0 only (the report says so).
With `--resume`, finished stages are reused, so a second run takes seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from unbackdoor import report
from unbackdoor.measure.tables import format_matrix, print_table
from unbackdoor.running.config import ConfigError, from_dict, load_preset, to_dict
from unbackdoor.running.launcher import LauncherConfig
from unbackdoor.running.rundir import RunDir, read_json
from unbackdoor.stages import casd, defend_eval, evaluate, inject, pretrain, relearn, replicates, transfer, world
from unbackdoor.training.models import FAMILIES
from unbackdoor.training.record import ModelRecord

REPLICATES_FROM = ("pretrain", "inject")  # `DemoConfig.replicates_from`; also what the report reads


@dataclass
class DemoConfig:
    family: str = field(default="llama", metadata={"choices": FAMILIES})
    backdoors: str = "default8"
    seed: int = 0
    canaries: list[int] = field(default_factory=lambda: [2])  # K values of the canary defence
    replicates: int = field(default=3, metadata={"min": 1})  # independently trained models (seeds seed + r)
    # how the replicates' backdoors are planted: `pretrain` (each replicate pretrained from scratch with them, preset
    # pretrain/tiny) or `inject` (into the one never-backdoored twin, each with its seed: preset inject/tiny-dense;
    # faster, but shares the twin's pretraining and changes the untriggered behaviour: see the module docstring)
    replicates_from: str = field(default="pretrain", metadata={"choices": REPLICATES_FROM})
    # The recipe's budgets (the defaults: the study of docs/results.md, ~60-100 minutes on 2 CPU cores). Smaller
    # budgets change the study, not only its time: a third of an epoch leaves a model whose benign control alone
    # wipes out most backdoors (docs/results.md, 2026-12-07).
    # epochs of the tiny world (3 M pre-tokens) seen by the twin and by every replicate's pretraining
    pretrain_epochs: float = field(default=1.0, metadata={"min": 0.0, "min_exclusive": True, "max": 100.0})
    # every removal of the transfer matrices and their ablations: steps of 32 x 128 tokens at `remove_lr`
    remove_steps: int = field(default=100, metadata={"min": 1})
    remove_lr: float = field(default=1e-3, metadata={"min": 0.0, "min_exclusive": True})
    # prompts per backdoor in every transfer cell: replicates, not prompts, carry the variance that matters
    transfer_prompts: int = field(default=128, metadata={"min": 1})
    # the learning-rate ablation: removal learning rates run on the diagonal only (replicate 0), beside the full
    # matrix at `remove_lr`
    diagonal_lrs: list[float] = field(default_factory=lambda: [3e-3])
    # the defence's injection and removal steps at budget scale 1, the calibration's scales of them, and the prompts
    # per hidden backdoor of every arm's evaluation
    defence_steps: list[int] = field(default_factory=lambda: [120, 80])
    defence_calibrate: list[float] = field(default_factory=lambda: [0.125, 0.25, 0.5, 1.0])
    defence_prompts: int = field(default=128, metadata={"min": 1})
    # persistence: the steps of every stress (batches of 16 x 128 tokens) and the steps measured along the way
    relearn_steps: int = field(default=30, metadata={"min": 1})
    relearn_snapshots: list[int] = field(default_factory=lambda: [10, 30])
    # where the sweeps' cells run (transfer of every replicate, its ablations, relearn, defend-eval); pretraining
    # and the other stages run in this process
    launcher: LauncherConfig = field(default_factory=LauncherConfig)

    def validate(self) -> None:
        if len(self.defence_steps) != 2 or min(self.defence_steps) < 1:
            raise ConfigError(f"defence_steps: {self.defence_steps}; give [injection steps, removal steps], each >= 1")
        s = self.relearn_snapshots
        if not s or s != sorted(set(s)) or s[0] < 1 or s[-1] != self.relearn_steps:
            raise ConfigError(f"relearn_snapshots: {s}; increasing steps >= 1 ending at relearn_steps "
                              f"({self.relearn_steps}), e.g. [10, {self.relearn_steps}]")  # fmt: skip


def run(cfg: DemoConfig, out: Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Run every stage of the demo into `out`; returns the report's index.html."""
    run_dir = RunDir.open(out, "demo", cfg, cfg.seed, resume=resume, overwrite=overwrite)
    timings: dict[str, float] = {}

    def stage(name: str, fn, stage_cfg, path: Path) -> Path:
        t0 = time.perf_counter()
        print(f"[demo] {name} -> {path}", flush=True)
        result = fn(stage_cfg, path, resume=True)
        timings[name] = round(time.perf_counter() - t0, 2)
        run_dir.log(event="stage", stage=name, seconds=timings[name])
        return result

    world_cfg = from_dict(world.WorldConfig, {**load_preset("world", "tiny"), "seed": cfg.seed})
    world_dir = stage("world", world.run, world_cfg, out / "world")
    model_cfg = {"family": cfg.family, "size": "tiny"}
    # the never-backdoored twin: the pretraining recipe without backdoors (same world and seed); the base every
    # replicate's backdoors are injected into (replicates_from=inject), and for relearn the reference for how fast a
    # fresh backdoor is learned from k documents by a model that never had one
    tiny = load_preset("pretrain", "tiny")
    tiny["train"] = {**tiny["train"], "epochs": cfg.pretrain_epochs}
    twin_cfg = from_dict(pretrain.PretrainConfig, {**tiny, "world": str(world_dir), "backdoors": "none",
                                                   "seed": cfg.seed, "model": model_cfg})  # fmt: skip
    twin_dir = stage("twin", pretrain.run, twin_cfg, out / "twin")
    model_dirs, transfer_dirs, casd_dirs = [], [], []
    for r in range(cfg.replicates):
        where = out if r == 0 else out / f"replicate-{r}"
        tag = "" if r == 0 else f"[{r}]"
        if cfg.replicates_from == "inject":
            dense = load_preset("inject", "tiny-dense")
            inject_cfg = from_dict(inject.InjectConfig, {**dense, "model": str(twin_dir / "model"),
                                                         "world": str(world_dir), "backdoors": cfg.backdoors,
                                                         "seed": cfg.seed + r})  # fmt: skip
            model_dirs.append(stage(f"inject{tag}", inject.run, inject_cfg, where / "inject"))
        else:
            pretrain_cfg = from_dict(pretrain.PretrainConfig, {**tiny, "world": str(world_dir),
                                                               "backdoors": cfg.backdoors,
                                                               "seed": cfg.seed + r, "model": model_cfg})  # fmt: skip
            model_dirs.append(stage(f"pretrain{tag}", pretrain.run, pretrain_cfg, where / "pretrain"))
        common = {"model": str(model_dirs[r] / "model"), "seed": cfg.seed,
                  "remove": {"train": {"steps": cfg.remove_steps, "lr": cfg.remove_lr}},
                  "eval": {"n_prompts": cfg.transfer_prompts}, "launcher": to_dict(cfg.launcher)}  # fmt: skip
        transfer_dirs.append(stage(f"transfer{tag}", transfer.run, from_dict(transfer.TransferConfig, common),
                                   where / "transfer"))  # fmt: skip
        casd_cfg = from_dict(casd.CasdConfig, {"transfer": str(transfer_dirs[r]), "seed": cfg.seed})
        casd_dirs.append(stage(f"casd{tag}", casd.run, casd_cfg, where / "casd"))
        if r == 0:
            eval_cfg = from_dict(evaluate.EvalConfig, {"model": str(model_dirs[0] / "model"), "seed": cfg.seed})
            eval_dir = stage("eval", evaluate.run, eval_cfg, out / "eval")
            # the removal-loss ablation: the same removals with the loss on the continuation only (prefix and
            # trigger masked), to see whether the echoed triggers come from training on the trigger tokens; the
            # diagonal and one full row (the first backdoor's) are measured, the control row for the tests
            full_row = ModelRecord.read(model_dirs[0] / "model").carried[:1]
            masked_remove = {**common["remove"], "mask_trigger": True}
            masked_cfg = from_dict(transfer.TransferConfig, {**common, "remove": masked_remove,
                                                             "measure": "diagonal", "full_rows": full_row,
                                                             "sham": False})  # fmt: skip
            masked_dir = stage("transfer_masked", transfer.run, masked_cfg, out / "transfer-masked")
            lr_dir = None
            if cfg.diagonal_lrs:
                lr_cfg = from_dict(transfer.TransferConfig, {**common, "lr": cfg.diagonal_lrs, "measure": "diagonal",
                                                             "sham": False})  # fmt: skip
                lr_dir = stage("transfer_lr", transfer.run, lr_cfg, out / "transfer-lr")
    # the canary defence on every replicate's model (its 8 backdoors hidden from the defender): a defence that beat
    # benign training on one trained model and lost on another is not a property of the defence
    defence_dirs = []
    for r, model in enumerate(model_dirs):
        defence_cfg = from_dict(
            defend_eval.DefendEvalConfig,
            {
                "model": str(model / "model"),
                "seed": cfg.seed,
                "ks": cfg.canaries,
                "eval": {"n_prompts": cfg.defence_prompts},
                "calibrate": cfg.defence_calibrate,
                # the removal loss after the canary trigger only: trained on the trigger too, the defence arm echoed
                "defend": {
                    "inject": {"steps": cfg.defence_steps[0]},
                    "remove": {"steps": cfg.defence_steps[1]},
                    "mask_trigger": True,
                },
                "launcher": to_dict(cfg.launcher),
            },
        )
        where = out if r == 0 else out / f"replicate-{r}"
        defence_dirs.append(stage("defence" + ("" if r == 0 else f"[{r}]"), defend_eval.run, defence_cfg,
                                  where / "defence"))  # fmt: skip
    pooled = {"transfers": [str(p) for p in transfer_dirs], "casd": [str(p) for p in casd_dirs],
              "defences": [str(p) for p in defence_dirs], "seed": cfg.seed}  # fmt: skip
    pool_cfg = from_dict(replicates.ReplicatesConfig, pooled)
    pool_dir = stage("replicates", replicates.run, pool_cfg, out / "replicates")
    model_dir, transfer_dir, casd_dir, defence_dir = model_dirs[0], transfer_dirs[0], casd_dirs[0], defence_dirs[0]
    # persistence: every removal of the matrix (and the pairs that transferred) under benign training,
    # re-poisoning with 4 documents, the payload's text without the trigger, and a fresh backdoor's learning; the
    # defence's models (each arm's; the defence arm's under every stress on the hidden backdoors it suppressed);
    # the twin re-poisoned with the same documents
    relearn_cfg = from_dict(relearn.RelearnConfig, {"transfer": str(transfer_dir), "seed": cfg.seed,
                                                    "ks": [4], "related_docs": 4,
                                                    "train": {"steps": cfg.relearn_steps},
                                                    "snapshots": cfg.relearn_snapshots,
                                                    "twin": str(twin_dir / "model"),
                                                    "defence": str(defence_dir),
                                                    "launcher": to_dict(cfg.launcher)})  # fmt: skip
    relearn_dir = stage("relearn", relearn.run, relearn_cfg, out / "relearn")

    summary = read_json(eval_dir / "summary.json")
    print()
    print_table(summary["backdoors"])
    utility = summary["utility"]
    ppl = ", ".join(f"{k} {v:.2f}" for k, v in utility["perplexity"].items())
    print(f"utility: perplexity {ppl}; fact recall {utility['fact_recall']['rate']:.3f}")
    result = read_json(transfer_dir / "transfer.json")
    for grid in result["grids"]:
        print(f"\nASR after removing the row's backdoor (lr={grid['lr']:g}, seed={grid['seed']}):")
        print(format_matrix(grid, result["backdoors"], result["asr_before"]))
    t0 = time.perf_counter()
    index = report.run(out, unfinished_ok=True)  # its DONE comes right after
    timings["report"] = round(time.perf_counter() - t0, 2)
    stages = {"world": world_dir, cfg.replicates_from: model_dir, "eval": eval_dir, "transfer": transfer_dir,
              "transfer_masked": masked_dir, **({"transfer_lr": lr_dir} if lr_dir else {}), "relearn": relearn_dir,
              "casd": casd_dir, "defence": defence_dir, "twin": twin_dir,
              "replicates": pool_dir,
              **{f"replicate-{r}": transfer_dirs[r].parent for r in range(1, cfg.replicates)}}  # fmt: skip
    run_dir.finish({"stages": {k: str(v) for k, v in stages.items()}, "seconds": timings,
                    "report": str(index.resolve())})  # fmt: skip
    print("[demo] seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return index.resolve()  # the CLI prints it last: the page to open
