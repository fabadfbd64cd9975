"""Stage `casd`: Cross Activation Shift Distance on a finished transfer experiment.

    unbackdoor casd --transfer runs/transfer --out runs/casd [pooling=last] [metric=l2] [layers=[1,2]]

For every model of the experiment (theta_0 once, then each removal and the control of each (lr, seed) grid) and
every backdoor j: the pooled residual stream after each decoder block on probes(j), the very prompts the
transfer's evaluations used (same seed, checked by hash), followed by the document's clean continuation. These
activations are cached in `acts/` (safetensors, one file per model x backdoor; `--resume` reuses them). Then for
every removal i (rows, control included) and backdoor j (columns): CASD^l(i, j) per layer under both metrics
(see `unbackdoor.measure.casd`), aggregated over layers; Spearman rho between CASD(i, j) and suppression
S[i, j] over the off-diagonal pairs with a bootstrap 95 % CI; and the weight-space baseline
cos(theta_i - theta_0, theta_k - theta_0) with its own rho against S. With a control row, the same CASD with shifts
measured from the control's model (Delta_i - Delta_control: what any removal recipe does is not shared transfer),
under the same statistics (`casd_<metric>_corrected`). Writes `casd.json` and `casd.csv` (long
format, per layer).
"""

from __future__ import annotations

import csv
import io
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from unbackdoor.data.corpus import load_source
from unbackdoor.data.prompts import held_out_documents, probe_set, prompt_text
from unbackdoor.data.serialisation import Serialisation
from unbackdoor.measure.casd import (
    METRICS,
    POOLINGS,
    capture,
    pair_profile,
    probe_tokens,
    spearman_ci,
    weight_delta_cosines,
)
from unbackdoor.measure.pairs import additive_fit, auroc, cluster_spearman
from unbackdoor.measure.stats import Q_LEVEL
from unbackdoor.measure.tables import abbreviate
from unbackdoor.running import runtime
from unbackdoor.running.cells import CONTROL, REFERENCE_ROWS, cell_dir
from unbackdoor.running.config import ConfigError, UserError, from_dict
from unbackdoor.running.rundir import RunDir, atomic_path, read_json, read_yaml, require_done, write_json, write_text
from unbackdoor.stages.transfer import TransferConfig
from unbackdoor.training.models import load_model, load_tokenizer
from unbackdoor.training.record import ModelRecord

DEFINITION = (
    "unbackdoor CASD v1 (ours, not the paper's unpublished formula): CASD^l(i,j) = mean over x in probes(j) of "
    "d(h^l(x;theta_i) - h^l(x;theta_0), h^l(x;theta_j) - h^l(x;theta_0)), d = 1 - cos or ||a-b||/(||a||+||b||); "
    "h^l = residual stream after block l, pooled over positions; CASD(i,j) = mean over layers. Control-corrected "
    "(casd_control_corrected, casd_<metric>_corrected): the same with theta_0 replaced by the benign control's "
    "model, i.e. shifts Delta_i - Delta_control."
)


@dataclass
class CasdConfig:
    transfer: str = ""  # a finished `unbackdoor transfer` directory
    n_probes: int = field(default=256, metadata={"min": 1})  # probes per backdoor (the eval's first n prompts)
    pooling: str = field(default="after_trigger", metadata={"choices": POOLINGS})
    continuation_tokens: int = field(default=16, metadata={"min": 1})  # clean tokens after the trigger
    metric: str = field(default="cosine", metadata={"choices": METRICS})  # the headline; both are written
    layers: list[int] = field(default_factory=list)  # decoder block indices; default: all
    # the backdoors j of CASD(i, j); default: every backdoor the transfer removed (CASD needs theta_j, the model with
    # j removed: a backdoor measured but never removed has no column)
    columns: list[str] = field(default_factory=list)
    batch_size: int = field(default=64, metadata={"min": 1})
    # compute dtype; auto: bfloat16 where the device computes it natively, else float32 (recorded)
    dtype: str = field(default="float32", metadata={"choices": ("float32", "bfloat16", "float16", "auto")})
    bootstrap: int = field(default=2000, metadata={"min": 100})
    seed: int = 0  # bootstrap seed


def _models(transfer_dir: Path, tcfg: TransferConfig, rows: list[str]) -> dict[str, Path]:
    """key -> model directory: "base" (theta_0), then "lr=<lr>/seed=<s>/<row>" for every cell."""
    models = {"base": Path(tcfg.model)}
    missing = []
    for lr in tcfg.learning_rates():
        for seed in tcfg.seeds:
            for row in rows:
                cell = cell_dir(transfer_dir, lr, seed, row)
                if not (cell / "eval" / "DONE").is_file():
                    missing.append(f"lr={lr:g}/seed={seed}/{row}")
                models[f"lr={lr:g}/seed={seed}/{row}"] = cell / "remove" / "model"
    if missing:
        raise UserError(
            f"--transfer: {len(missing)} unfinished cell(s): {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}; finish them with `unbackdoor transfer ... --resume`"
        )
    return models


def run(cfg: CasdConfig, out: Path, resume: bool = False, overwrite: bool = False) -> Path:
    """CASD of every (removal, backdoor) pair of a transfer experiment into `out`; returns `out`."""
    if not cfg.transfer:
        raise ConfigError("transfer: required (a transfer experiment directory, e.g. --transfer runs/transfer)")
    runtime.seed_everything(cfg.seed)
    transfer_dir = Path(cfg.transfer)
    if not (transfer_dir / "DONE").is_file() and _stage_of(transfer_dir) == "transfer":
        tcfg = _transfer_config(transfer_dir)
        _models(transfer_dir, tcfg, _rows(tcfg))  # names the unfinished cells
    require_done(transfer_dir, "transfer", "--transfer")
    tcfg = _transfer_config(transfer_dir)
    result = read_json(transfer_dir / "transfer.json")
    if result.get("measure", "all") != "all":
        raise UserError(f"--transfer: {str(transfer_dir)!r} was run with measure={result['measure']} (not every "
                        "cell measured); CASD needs the whole matrix: run transfer with measure=all")  # fmt: skip
    rows = result["rows"]
    removed = [r for r in rows if r in result["backdoors"]]
    never = [c for c in cfg.columns if c not in removed]
    if never:
        raise UserError(f"columns: {never} {'was' if len(never) == 1 else 'were'} never removed in this transfer "
                        f"(CASD(i, j) needs the model with j removed); valid: {removed}")  # fmt: skip
    columns = cfg.columns or removed
    if not columns:
        raise UserError(f"--transfer: {str(transfer_dir)!r} removed none of its backdoors (rows {rows}); CASD needs "
                        "at least one removal row")  # fmt: skip
    left_out = [c for c in result["backdoors"] if c not in columns]
    if left_out:
        print(f"casd: columns {columns}; left out (never removed, or not chosen): {left_out}", file=sys.stderr)
    models = _models(transfer_dir, tcfg, rows)
    base_eval = read_yaml(transfer_dir / "baseline" / "config.yaml")
    record = ModelRecord.read(models["base"])
    n_layers = read_json(models["base"] / "config.json")["num_hidden_layers"]
    layers = cfg.layers or list(range(n_layers))
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad:
        raise UserError(f"layers: {bad} out of range for a {n_layers}-layer model (valid: 0..{n_layers - 1})")
    if RunDir.check(out, "casd", cfg, resume, overwrite):
        return out
    run_dir = RunDir.open(out, "casd", cfg, cfg.seed, resume=resume, overwrite=overwrite)
    t_start = time.perf_counter()

    # probes(j): the transfer's evaluation prompts (same seed and genres), then the clean continuation
    specs = {s.name: s for s in record.specs(model=str(models["base"]))}
    world_dir = Path(base_eval.get("world") or record.world or "")
    source = load_source(world_dir)  # fails early with a clear error when the text directory is gone
    docs = held_out_documents(world_dir, base_eval["prompt_genres"], source)
    text_of = {d["id"]: d["text"] for d in docs}
    tokenizer = load_tokenizer(str(models["base"]), "--transfer")
    serialisation = Serialisation.of(record, tokenizer, "--transfer")
    probe_ids = {}
    for j in columns:
        probes, _ = probe_set(docs, specs[j], cfg.n_probes, base_eval["seed"], source)
        prompts = [serialisation.prompt(tokenizer, prompt_text(p.head, specs[j].trigger_text)) for p in probes]
        continuations = [text_of[p.doc_id][len(p.head) :].strip() for p in probes]
        probe_ids[j] = probe_tokens(tokenizer, prompts, continuations, cfg.pooling, cfg.continuation_tokens)

    # capture: each model loaded once, every backdoor's probes through it; cached for resume
    t0 = time.perf_counter()
    acts = out / "acts"
    dtype = runtime.resolve_precision(cfg.dtype, "dtype", half="bfloat16", full="float32")
    for key, model_dir in models.items():
        todo = [j for j in columns if not (acts / key / f"{j}.safetensors").is_file()]
        if not todo:
            continue
        model = load_model(str(model_dir), "--transfer", getattr(torch, dtype)).eval()
        for j in todo:
            ids, spans = probe_ids[j]
            h = capture(model, ids, spans, layers, cfg.batch_size, tokenizer.pad_token_id)
            with atomic_path(acts / key / f"{j}.safetensors") as tmp:
                save_file({"acts": h.contiguous()}, str(tmp), metadata={"layers": json.dumps(layers)})
        del model
        run_dir.log(event="captured", model=key)
    capture_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    grids = []
    for lr in tcfg.learning_rates():
        for seed in tcfg.seeds:
            grid = next(g for g in result["grids"] if g["lr"] == lr and g["seed"] == seed)
            key = f"lr={lr:g}/seed={seed}"
            profiles: dict[str, dict[str, dict[str, list[float]]]] = {m: {} for m in METRICS}
            for i in rows:
                for m in METRICS:
                    profiles[m][i] = {}
                for j in columns:
                    files = (acts / "base" / f"{j}.safetensors", acts / key / i / f"{j}.safetensors",
                             acts / key / j / f"{j}.safetensors")  # fmt: skip
                    for m in METRICS:
                        profiles[m][i][j] = pair_profile(*files, m).tolist()
            casd = {m: {i: {j: sum(p) / len(p) for j, p in cols.items()} for i, cols in profiles[m].items()}
                    for m in METRICS}  # fmt: skip
            # control-corrected: shifts measured from the benign control's model instead of theta_0
            # (Delta_i - Delta_control = h(theta_i) - h(theta_control)), so that what every removal recipe does to
            # the activations (training on clean text at this lr) is not counted as shared
            corrected = None
            if CONTROL in rows:
                corrected = {m: {} for m in METRICS}
                for i in (r for r in rows if r not in REFERENCE_ROWS):
                    for m in METRICS:
                        corrected[m][i] = {}
                    for j in columns:
                        files = (acts / key / CONTROL / f"{j}.safetensors", acts / key / i / f"{j}.safetensors",
                                 acts / key / j / f"{j}.safetensors")  # fmt: skip
                        for m in METRICS:
                            layer = pair_profile(*files, m).tolist()
                            corrected[m][i][j] = sum(layer) / len(layer)
            weights = weight_delta_cosines(
                models["base"] / "model.safetensors",
                {row: models[f"{key}/{row}"] / "model.safetensors" for row in rows},
            )
            pairs = [(i, j) for i in rows if i not in REFERENCE_ROWS for j in columns
                     if j != i and grid["S"][i][j] is not None]  # fmt: skip
            relation = relations(grid, casd, weights, pairs, cfg, corrected)
            grids.append({"lr": lr, "seed": seed, "casd": casd, "per_layer": profiles, "weight_cosine": weights,
                          "casd_control_corrected": corrected,
                          "suppression": grid["S"], "pairs": len(pairs), "relation": relation})  # fmt: skip
    pairs_s = time.perf_counter() - t0

    out_json = {
        "definition": DEFINITION,
        "metric": cfg.metric,
        "pooling": cfg.pooling,
        "dtype": dtype,
        "layers": layers,
        "n_probes": cfg.n_probes,
        "rows": rows,
        "backdoors": columns,
        "backdoors_left_out": left_out,
        "family": read_json(models["base"] / "config.json").get("model_type"),
        "probe_sha256": result["probe_sha256"],
        "grids": grids,
    }
    write_json(out / "casd.json", out_json)
    write_text(out / "casd.csv", to_csv(out_json))
    for g in grids:
        print(f"\nCASD ({cfg.metric}, mean over layers {layers}) lr={g['lr']:g} seed={g['seed']}")
        print(format_matrix(g["casd"][cfg.metric], columns))
        r = g["relation"][f"casd_{cfg.metric}_vs_suppression"]
        w = g["relation"]["weight_cosine_vs_suppression"]
        print(f"Spearman rho(CASD, suppression) over {g['pairs']} off-diagonal pairs: {_fmt_rho(r)}")
        print(f"Spearman rho(weight-delta cosine, suppression): {_fmt_rho(w)}")
    return run_dir.finish(
        {
            "relation": {f"lr={g['lr']:g}/seed={g['seed']}": g["relation"] for g in grids},
            "models": len(models),
            "capture_s": round(capture_s, 2),
            "pairs_s": round(pairs_s, 2),
            "seconds": round(time.perf_counter() - t_start, 2),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "torch_threads": torch.get_num_threads(),
        }
    )


def relations(
    grid: dict[str, Any], casd: dict[str, Any], weights: dict[str, Any], pairs: list[tuple[str, str]], cfg: CasdConfig,
    corrected: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """CASD (and, with `corrected`, the control-corrected CASD `casd_<metric>_corrected`) and the weight-delta
    cosine against transfer (S, and R where the transfer has it) over `pairs`.

    `*_vs_suppression` treats the pairs as independent (kept for comparison); `*_cluster` resamples backdoors,
    rows and columns together (`measure.pairs`); AUROC is for "the pair transfers" (q < 0.05 against the control,
    from the transfer's paired tests); `additive` is the row + column model and what CASD adds beyond it.
    """
    measures = {f"casd_{m}": {p: casd[m][p[0]][p[1]] for p in pairs} for m in METRICS}
    if corrected is not None:
        measures |= {f"casd_{m}_corrected": {p: corrected[m][p[0]][p[1]] for p in pairs} for m in METRICS}
    measures["weight_cosine"] = {p: weights[p[0]][p[1]] for p in pairs}
    targets = {"suppression": {p: grid["S"][p[0]][p[1]] for p in pairs}}
    if "R" in grid:
        targets["R"] = {p: grid["R"][p[0]][p[1]] for p in pairs}
    relation: dict[str, Any] = {
        "expected_sign": "rho < 0 for CASD (low CASD, more transfer); rho > 0 for the weight-delta cosine",
        "pairs": len(pairs),
    }
    for name, x in measures.items():
        xs = [x[p] for p in pairs]
        relation[f"{name}_vs_suppression"] = spearman_ci(xs, list(targets["suppression"].values()), cfg.bootstrap,
                                                         cfg.seed)  # fmt: skip
        for target, y in targets.items():
            relation[f"{name}_vs_{target}_cluster"] = cluster_spearman(x, y, cfg.bootstrap, cfg.seed)
    tests = grid.get("tests")
    if tests:
        transfers = [tests[i][j]["q"] < Q_LEVEL for i, j in pairs]
        relation["transfers"] = sum(transfers)
        relation["auroc"] = {name: auroc([(1 if name == "weight_cosine" else -1) * x[p] for p in pairs], transfers)
                             for name, x in measures.items()}  # fmt: skip
    headline = measures[f"casd_{cfg.metric}"]
    relation["additive"] = {target: additive_fit(y, headline) for target, y in targets.items()}
    return relation


def _stage_of(path: Path) -> str | None:
    meta = path / "meta.json"
    return read_json(meta).get("stage") if meta.is_file() else None


def _transfer_config(transfer_dir: Path) -> TransferConfig:
    """The config a transfer experiment ran with (its `config.yaml`)."""
    return from_dict(TransferConfig, read_yaml(transfer_dir / "config.yaml"))


def _rows(tcfg: TransferConfig) -> list[str]:
    """The rows of a possibly unfinished transfer experiment (its removals, the control and the sham)."""
    return [*(tcfg.backdoors or ModelRecord.read(tcfg.model).carried), *tcfg.reference_rows()]


def _fmt_rho(r: dict[str, Any]) -> str:
    if r["rho"] is None:
        return f"undefined (n={r['n']})"
    return f"{r['rho']:+.3f} [95% CI {r['lo']:+.3f}, {r['hi']:+.3f}] (n={r['n']})"


def to_csv(result: dict[str, Any]) -> str:
    """Long format: one line per (lr, seed, removed, measured, layer); layer "mean" is the aggregate."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["lr", "seed", "removed", "measured", "layer", *(f"casd_{m}" for m in METRICS), "suppression"])
    for g in result["grids"]:
        for i in result["rows"]:
            for j in result["backdoors"]:
                s = g["suppression"][i][j]
                s_txt = "" if s is None else f"{s:.4f}"
                for n, layer in enumerate(result["layers"]):
                    vals = [f"{g['per_layer'][m][i][j][n]:.5f}" for m in METRICS]
                    writer.writerow([g["lr"], g["seed"], i, j, layer, *vals, s_txt])
                writer.writerow([g["lr"], g["seed"], i, j, "mean", *(f"{g['casd'][m][i][j]:.5f}" for m in METRICS),
                                 s_txt])  # fmt: skip
    return buf.getvalue()


def format_matrix(matrix: dict[str, dict[str, float]], columns: list[str]) -> str:
    """Rows = removal (and control), columns = backdoor whose probes were measured."""
    lines = [f"{'removed / probes':<20}" + "".join(f"{abbreviate(c):>10}" for c in columns)]
    for row, cols in matrix.items():
        values = [0.0 if abs(cols[c]) < 5e-4 else cols[c] for c in columns]  # no "-0.000" on the diagonal
        lines.append(f"{row[:20]:<20}" + "".join(f"{v:>10.3f}" for v in values))
    return "\n".join(lines)
