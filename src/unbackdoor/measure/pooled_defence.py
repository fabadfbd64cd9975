"""The canary defence pooled over replicates: one `defend-eval` per replicate, arm by arm (`replicates.json`'s
`defence`; the fields are described in `stages/replicates.py` and docs/run-directory.md).

Run: `unbackdoor replicates --out runs/pooled transfers=[...] defences=[...]` (tested in
tests/unit/test_pool_defences.py and tests/integration/test_replicates.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unbackdoor.measure.stats import mean_ci


def _per_replicate(values: list[float | None]) -> dict[str, Any]:
    return {"per_replicate": values, **mean_ci(values)}


def _one_text(cell: dict[str, Any]) -> int | None:
    """How many hidden backdoors' clean continuations are mostly one text or opening; None where not measured."""
    modal = cell.get("clean_modal")
    return None if modal is None else sum(bool(m and m["stereotyped"]) for m in modal.values())


def pool_defences(defends: list[dict[str, Any]], paths: list[str]) -> dict[str, Any]:
    """Every arm of the replicates' canary-defence studies pooled (see the module docstring)."""
    arms: dict[str, dict[str, Any]] = {}
    for n, first in enumerate(defends[0]["cells"]):
        cells = [d["cells"][n] for d in defends]
        clean = all(c.get("pooled_clean") for c in cells)
        arms[first["dir"]] = {
            **{k: first[k] for k in ("arm", "k", "method", "lr", "seed")},
            "canary_behaviours": [c.get("canary_behaviours") for c in cells],
            "pooled_asr": _per_replicate([c["pooled_asr"]["rate"] for c in cells]),
            "pooled_clean": _per_replicate([c["pooled_clean"]["rate"] for c in cells]) if clean else None,
            "R": _per_replicate([c.get("R") for c in cells]),
            "stereotyped": [_one_text(c) for c in cells],
        }
    contrasts = []
    for key, a in arms.items():
        if a["arm"] == "benign" or a["pooled_clean"] is None:
            continue
        refs = [
            ("benign", k)
            for k, b in arms.items()
            if b["arm"] == "benign" and (b["lr"], b["seed"]) == (a["lr"], a["seed"])
        ]
        if a["arm"] != "removal_only":  # the canary removal without the canaries: same lr, seed, method, set, K
            setting = key.rsplit("/", 1)[0]  # the cell's directory without its arm: lr, seed, method, canary set, K
            refs += [("removal_only", k) for k, b in arms.items()
                     if b["arm"] == "removal_only" and k.rsplit("/", 1)[0] == setting]  # fmt: skip
        for name, ref in refs:
            if arms[ref]["pooled_clean"] is None:
                continue
            diffs = [x - y for x, y in zip(a["pooled_clean"]["per_replicate"],
                                           arms[ref]["pooled_clean"]["per_replicate"], strict=True)]  # fmt: skip
            contrasts.append({"arm": key, "against": ref, "against_arm": name, "clean_diff": _per_replicate(diffs),
                              "positive_in": sum(d > 0 for d in diffs)})  # fmt: skip
    return {
        "replicates": len(defends),
        "defences": [str(Path(p)) for p in paths],
        "hidden": defends[0]["hidden"],
        "arms": arms,
        "contrasts": contrasts,
        # per replicate: benign training kept the pooled hidden ASR at the floor, and the canaries were learned
        "informative": [bool(d["comparison"].get("informative")) for d in defends],
        "canaries_learned": [d["comparison"].get("canaries_learned") for d in defends],
        "budget_scale": [d["budget"].get("scale") for d in defends],
        "pooled_clean_before": _per_replicate([(d.get("pooled_clean_before") or {}).get("rate") for d in defends]),
    }
