"""Stage `replicates`: pool transfer experiments (and their CASD runs) of independently trained models.

    unbackdoor replicates --out runs/pooled transfers=[runs/r0/transfer,runs/r1/transfer,runs/r2/transfer] \\
        casd=[runs/r0/casd,runs/r1/casd,runs/r2/casd]

Replicates are the unit of inference: each is a backdoored model trained with its own seed, with its own transfer
experiment (removal seeds stay a nested axis inside it). Per grid (lr, removal seed) and pair (i, j):
- the mean of R, S and T across replicates with a Student-t 95 % CI, and R minus the control's R;
- `transfers_share`: the share of replicates in which the pair transfers (its own q < 0.05 against the control);
- `stereotyped_share`: the share of replicates in which the pair's clean continuations are mostly one text whatever
  the prompt (`clean_modal`; the headline's `transfers_q05_stereotyped` counts the pooled pairs at q < 0.05 where
  that holds in at least half of the replicates); absent when a replicate's transfer predates `clean_modal`;
- a pooled paired test: the discordant prompts of every replicate summed (gain, loss), one-sided exact McNemar, and
  Benjamini-Hochberg q-values over the N x (N-1) off-diagonal pairs (`transfers_q05` counts q < 0.05); where
  every replicate has the sham row, the same against the sham (`beyond_sham`, `transfers_q05_sham`).
With CASD runs, every relation's rho per replicate and its mean with a CI across replicates.
With defend-eval runs (`defences`, one per replicate: the canary defence on each replicate's model), `defence`:
per arm (benign, defence, removal_only; per K, method, canary set, lr, seed) the pooled hidden clean rate, R and
judge-based ASR of every replicate with their mean and CI across replicates; the contrasts of every defence and
removal_only arm against the benign arm of its lr and seed, and of every defence arm against the removal_only arm of
its lr, seed, method, canary set and K (the per-replicate difference of the pooled clean rate, its mean with a CI
over every replicate, and in how many replicates it is positive); per replicate whether the comparison was
informative (benign training kept the pooled hidden ASR at the floor) and whether the canaries were learned, and how
many hidden backdoors' clean continuations are mostly one text or opening (`clean_modal`; None where not measured).
`models`: how each replicate's backdoored model was made (the last training stage of its record: `pretrain` or
`inject`, its seed and base); `shared_base`: the one checkpoint every replicate's backdoors were injected into, if
so: then the intervals hold the variance of injection only, not of pretraining.
Writes `replicates.json`. With one replicate the CIs are None: between-model variance is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unbackdoor.measure.outcomes import STEREOTYPED_MIN, stereotyped_cell
from unbackdoor.measure.pooled_defence import pool_defences
from unbackdoor.measure.stats import ONE_REPLICATE, Q_LEVEL, bh_qvalues, exact_mcnemar, format_mean_ci, mean_ci
from unbackdoor.running.cells import CONTROL, REFERENCE_ROWS, SHAM
from unbackdoor.running.config import ConfigError, UserError
from unbackdoor.running.rundir import RunDir, read_json, read_yaml, require_done, write_json
from unbackdoor.training.record import ModelRecord


@dataclass
class ReplicatesConfig:
    transfers: list[str] = field(default_factory=list)  # finished transfer experiments, one per replicate
    casd: list[str] = field(default_factory=list)  # optional: their finished CASD runs (same order)
    defences: list[str] = field(default_factory=list)  # optional: their finished defend-eval runs (same order)
    seed: int = 0  # unused (no randomness); recorded like every stage's

    def validate(self) -> None:
        if not self.transfers:
            raise ConfigError("transfers: give the finished transfer experiments to pool, e.g. transfers=[a,b,c]")
        if len(set(self.transfers)) != len(self.transfers):
            raise ConfigError(f"transfers: {self.transfers} names one experiment twice")
        if self.casd and len(self.casd) != len(self.transfers):
            raise ConfigError(f"casd: {len(self.casd)} runs for {len(self.transfers)} transfers; one per replicate")
        if self.defences and len(self.defences) != len(self.transfers):
            raise ConfigError(f"defences: {len(self.defences)} runs for {len(self.transfers)} transfers; one "
                              "defend-eval per replicate (of the same model as its transfer)")  # fmt: skip


def _load(path: str, stage: str, name: str, what: str) -> dict[str, Any]:
    require_done(Path(path), stage, what)
    return read_json(Path(path) / name)


def _key(grid: dict[str, Any]) -> str:
    return f"lr={grid['lr']:g}/seed={grid['seed']}"


def run(cfg: ReplicatesConfig, out: Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Pool the replicates into `out/replicates.json`; returns `out`."""
    tables = [_load(p, "transfer", "transfer.json", "transfers") for p in cfg.transfers]
    first = tables[0]
    for path, t in zip(cfg.transfers, tables, strict=True):
        if t.get("measure", "all") != "all":
            raise UserError(f"transfers: {path} was run with measure={t['measure']} (not every cell measured); "
                            "replicates pool whole matrices: run transfer with measure=all")  # fmt: skip
        if t["backdoors"] != first["backdoors"] or t["rows"] != first["rows"]:
            raise UserError(f"transfers: {path} measures {t['backdoors']} / removes {t['rows']}, the first "
                            f"{first['backdoors']} / {first['rows']}: replicates share both")  # fmt: skip
        if [_key(g) for g in t["grids"]] != [_key(g) for g in first["grids"]]:
            raise UserError(f"transfers: {path} has grids {[_key(g) for g in t['grids']]}, the first "
                            f"{[_key(g) for g in first['grids']]}")  # fmt: skip
    casds = [_load(p, "casd", "casd.json", "casd") for p in cfg.casd]
    defends = [_load(p, "defend-eval", "defend.json", "defences") for p in cfg.defences]
    for path, transfer_dir, d in zip(cfg.defences, cfg.transfers, defends, strict=False):  # none: no defences
        model, suspect = (read_yaml(Path(x) / "config.yaml")["model"] for x in (transfer_dir, path))
        if Path(model).resolve() != Path(suspect).resolve():
            raise UserError(f"defences: {path} defended {suspect}, but its replicate's transfer ({transfer_dir}) "
                            f"removed from {model}: give the defences in the order of the transfers")  # fmt: skip
        if [c["dir"] for c in d["cells"]] != [c["dir"] for c in defends[0]["cells"]]:
            raise UserError(f"defences: {path} has the arms {[c['dir'] for c in d['cells']]}, the first "
                            f"{[c['dir'] for c in defends[0]['cells']]}: replicates share the arms")  # fmt: skip
        if d["hidden"] != defends[0]["hidden"]:
            raise UserError(f"defences: {path} hides {d['hidden']}, the first {defends[0]['hidden']}: replicates "
                            "share the hidden backdoors")  # fmt: skip
    models = [provenance(p) for p in cfg.transfers]
    bases = {m["base_model"] for m in models}
    shared_base = bases.pop() if len(models) > 1 and len(bases) == 1 and models[0]["planted_by"] == "inject" else None
    if RunDir.check(out, "replicates", cfg, resume, overwrite):
        return out
    run_dir = RunDir.open(out, "replicates", cfg, cfg.seed, resume=resume, overwrite=overwrite)
    grids = [pool_grid([t["grids"][g] for t in tables], first["backdoors"], first["rows"])
             for g in range(len(first["grids"]))]  # fmt: skip
    result = {
        "replicates": len(tables),
        "note": ONE_REPLICATE if len(tables) < 2 else None,
        "transfers": [str(Path(p)) for p in cfg.transfers],
        "backdoors": first["backdoors"],
        "rows": first["rows"],
        "method": first["method"],
        "q_level": Q_LEVEL,
        "grids": grids,
        "casd": pool_casd(casds) if casds else None,
        "defence": pool_defences(defends, cfg.defences) if defends else None,
        "models": models,
        "shared_base": shared_base,
    }
    write_json(out / "replicates.json", result)
    for g in grids:
        h = g["headline"]
        off, ctl, diag = (format_mean_ci(h[k], 3) for k in ("R_off", "R_control", "R_diagonal"))
        print(f"lr={g['lr']:g} seed={g['seed']}, {len(tables)} replicates: {h['transfers_q05']}/{h['pairs']} pairs "
              f"at q < {Q_LEVEL} (pooled), {h['transfers_all']} in every replicate; mean R off-diagonal "
              f"{off}, control {ctl}, diagonal {diag}")  # fmt: skip
    if result["defence"]:
        for key, arm in result["defence"]["arms"].items():
            clean = arm["pooled_clean"]
            asr = format_mean_ci(arm["pooled_asr"], rate=True)
            print(f"defence {key}, {len(tables)} replicates: pooled hidden clean rate "
                  f"{format_mean_ci(clean, rate=True) if clean else 'n/a'}, judge ASR {asr}")  # fmt: skip
    return run_dir.finish({"replicates": len(tables), "grids": [g["headline"] for g in grids]})


def provenance(transfer_dir: str) -> dict[str, Any]:
    """How the backdoored model of a transfer experiment was made: its path, and the last training stage of its
    record (`pretrain` or `inject`, with that stage's seed-free details and the checkpoint it continued)."""
    model = read_yaml(Path(transfer_dir) / "config.yaml")["model"]
    planted = [h for h in ModelRecord.read(Path(model)).history if h.get("stage") in ("pretrain", "inject")]
    last = planted[-1] if planted else {}
    return {"model": str(model), "planted_by": last.get("stage"), "base_model": last.get("base_model")}


def pool_grid(grids: list[dict[str, Any]], columns: list[str], rows: list[str]) -> dict[str, Any]:
    """One (lr, seed) grid pooled over replicates (see the module docstring)."""
    removals = [r for r in rows if r not in REFERENCE_ROWS]
    sham = all("tests_sham" in g for g in grids)  # every replicate has the sham row: test beyond it too
    modal = all(g.get("clean_modal") for g in grids)  # every replicate measured one-text continuations
    pairs: dict[str, dict[str, Any]] = {}
    for i in rows:
        pairs[i] = {}
        for j in columns:
            cell: dict[str, Any] = {
                "R": mean_ci([g["R"][i][j] for g in grids]),
                "S": mean_ci([g["S"][i][j] for g in grids]),
                "T": mean_ci([g["T"][i][j]["rate"] for g in grids]),
                "C": mean_ci([g["C"][i][j]["rate"] for g in grids]),
            }
            if i in removals:
                cell["R_minus_control"] = mean_ci(
                    [None if g["R"][i][j] is None or g["R"][CONTROL][j] is None else g["R"][i][j] - g["R"][CONTROL][j]
                     for g in grids]
                )  # fmt: skip
                tests = [g["tests"][i][j] for g in grids]
                gain, loss = sum(t["gain"] for t in tests), sum(t["loss"] for t in tests)
                cell.update(gain=gain, loss=loss, p=exact_mcnemar(gain, loss),
                            transfers_share=sum(t["q"] < Q_LEVEL for t in tests) / len(tests))  # fmt: skip
                if modal:  # in how many replicates its clean continuations are mostly one text, of those where
                    # there were enough clean ones to tell (a replicate with 2 clean continuations shows nothing)
                    judged = [m for g in grids if (m := g["clean_modal"].get(i, {}).get(j))
                              and m["n"] >= STEREOTYPED_MIN]  # fmt: skip
                    cell["stereotyped_judged"] = len(judged)
                    cell["stereotyped_share"] = (sum(m["stereotyped"] for m in judged) / len(judged)
                                                 if judged else None)  # fmt: skip
                if sham:
                    tests = [g["tests_sham"][i][j] for g in grids]
                    gain, loss = sum(t["gain"] for t in tests), sum(t["loss"] for t in tests)
                    cell["beyond_sham"] = {"gain": gain, "loss": loss, "p": exact_mcnemar(gain, loss),
                                           "share": sum(t["q"] < Q_LEVEL for t in tests) / len(tests)}  # fmt: skip
            pairs[i][j] = cell
    for diagonal in (False, True):
        family = [(i, j) for i in removals for j in columns if (i == j) == diagonal]
        for (i, j), q in zip(family, bh_qvalues([pairs[i][j]["p"] for i, j in family]), strict=True):
            pairs[i][j]["q"] = q
        if sham:
            for (i, j), q in zip(family, bh_qvalues([pairs[i][j]["beyond_sham"]["p"] for i, j in family]),
                                 strict=True):  # fmt: skip
                pairs[i][j]["beyond_sham"]["q"] = q
    off = [(i, j) for i in removals for j in columns if i != j]

    def per_replicate_mean(cells: list[tuple[str, str]]) -> dict[str, Any]:
        means = []
        for g in grids:
            vals = [g["R"][i][j] for i, j in cells if g["R"][i][j] is not None]
            means.append(sum(vals) / len(vals) if vals else None)
        return mean_ci(means)

    headline = {
        "pairs": len(off),
        "transfers_q05": sum(pairs[i][j]["q"] < Q_LEVEL for i, j in off),
        "transfers_all": sum(pairs[i][j]["transfers_share"] == 1.0 for i, j in off),
        "transfers_per_replicate": [g["transfers_q05"] for g in grids],
        "R_off": per_replicate_mean(off),
        "R_control": per_replicate_mean([(CONTROL, j) for j in columns]),
        "R_diagonal": per_replicate_mean([(i, i) for i in removals]),
    }
    if modal:  # pairs at q < 0.05 whose clean continuations are one text in at least half of the replicates judged
        headline["transfers_q05_stereotyped"] = sum(
            pairs[i][j]["q"] < Q_LEVEL and (pairs[i][j]["stereotyped_share"] or 0.0) >= 0.5 for i, j in off
        )
        # and in each replicate, of its own pairs at q < 0.05: how many are stereotyped there
        headline["transfers_stereotyped_per_replicate"] = [
            sum(g["tests"][i][j]["q"] < Q_LEVEL and stereotyped_cell(g["clean_modal"], i, j) for i, j in off)
            for g in grids
        ]
    if sham:
        headline["transfers_q05_sham"] = sum(pairs[i][j]["beyond_sham"]["q"] < Q_LEVEL for i, j in off)
        headline["R_sham"] = per_replicate_mean([(SHAM, j) for j in columns])
    return {"lr": grids[0]["lr"], "seed": grids[0]["seed"], "pairs": pairs, "headline": headline}


def pool_casd(casds: list[dict[str, Any]]) -> dict[str, Any]:
    """Every relation's rho per replicate and its mean with a CI across replicates, per grid."""
    out: dict[str, Any] = {}
    for g, grid in enumerate(casds[0]["grids"]):
        key = _key(grid)
        relations = [c["grids"][g]["relation"] for c in casds]
        pooled: dict[str, Any] = {"expected_sign": grid["relation"].get("expected_sign")}
        for name, value in grid["relation"].items():
            if isinstance(value, dict) and "rho" in value:
                rhos = [r[name]["rho"] for r in relations if name in r]
                pooled[name] = {"per_replicate": rhos, **mean_ci(rhos)}
        if all("auroc" in r for r in relations):
            pooled["auroc"] = {m: mean_ci([r["auroc"][m] for r in relations]) for m in grid["relation"]["auroc"]
                               if all(m in r["auroc"] for r in relations)}  # fmt: skip
        out[key] = pooled
    return out
