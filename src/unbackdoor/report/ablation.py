"""The masked-loss ablation of the demo (`transfer_masked`: the removal loss on the continuation after the trigger
only, `remove.mask_trigger`) against its transfer: does the echo come from training on the trigger tokens? Pure,
like `findings`: the two transfer.json come in as dicts, numbers and a sentence go out, and no claim beyond them.

Run: `pytest tests/unit/test_findings.py`.
"""

from __future__ import annotations

from typing import Any

from unbackdoor.report import findings as fd
from unbackdoor.report.findings import Rows, mean, percent, signed
from unbackdoor.running.cells import CONTROL


def echo_shares(tr: dict[str, Any]) -> dict[str, float | None]:
    """Mean share of `echo` among triggered generations (first grid): on the diagonal, off it, in the control row
    and before removal; each a mean over cells of echo / n."""
    g = tr["grids"][0]

    def share(counts: dict[str, int]) -> float | None:
        n = sum(counts.values())
        return counts.get("echo", 0) / n if n else None

    comp = g["composition"]
    return {
        "diagonal": mean(share(comp[i][i]) for i in fd.diagonal(tr)),
        "off_diagonal": mean(share(comp[i][j]) for i, j in fd.pairs(tr)),
        "control": mean(share(comp[CONTROL][j]) for j in tr["backdoors"]),
        "before": mean(share(tr["composition_before"][j]) for j in tr["backdoors"]),
    }


def same_cells(tr: dict[str, Any], like: dict[str, Any]) -> dict[str, Any]:
    """`tr` with every grid's cells restricted to those measured in `like`'s first grid (a copy; `tr` as is when
    `like` measured every cell)."""
    if like.get("measure", "all") == "all":
        return tr
    keep = {row: set(cols) for row, cols in like["grids"][0]["T"].items()}
    per_row = ("T", "S", "C", "R", "composition", "teacher_forced", "false_trigger")
    grids = [{**g, **{k: {r: {j: v for j, v in g[k][r].items() if j in keep.get(r, ())} for r in g[k]}
                      for k in per_row if k in g}} for g in tr["grids"]]  # fmt: skip
    return {**tr, "grids": grids, "measure": like["measure"]}


def masked_finding(plain: dict[str, Any], masked: dict[str, Any], mask_trigger: bool | None) -> dict[str, Any]:
    """The transfer (loss on every token) against its ablation (`mask_trigger`: the loss after the trigger only).

    Args:
        plain, masked: the two transfer.json.
        mask_trigger: `remove.mask_trigger` of the ablation's config (it is no ablation unless True).
    """
    f: dict[str, Any] = {
        "mask_trigger": bool(mask_trigger),
        "same_probes": plain["probe_sha256"] == masked["probe_sha256"],
        "outcomes": fd.has_outcomes(plain) and fd.has_outcomes(masked),
    }
    if f["outcomes"]:
        plain = same_cells(plain, masked)  # a masked run of measure=diagonal: compare on its cells only
        f["off_pairs"] = len(fd.pairs(masked))
        f["plain"], f["masked"] = echo_shares(plain), echo_shares(masked)
        f["plain_transfer"], f["masked_transfer"] = fd.transfer_finding(plain), fd.transfer_finding(masked)
    return f


def _change(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return "not comparable (undefined)"
    points = 100 * (after - before)
    return "the same" if abs(points) < 0.5 else f"{abs(points):.0f} points {'lower' if points < 0 else 'higher'}"


def masked_sentence(f: dict[str, Any]) -> str:
    """Does the echo come from training on the trigger tokens? The numbers of `masked_finding`, nothing beyond."""
    if not f["mask_trigger"]:
        return "The transfer-masked run does not set remove.mask_trigger: it is no ablation, and is not compared."
    if not f["same_probes"]:
        return "The transfer-masked run was measured on other probe prompts than the transfer: not compared."
    if not f["outcomes"]:
        return "One of the two transfer.json has no outcome classes (written before them): not compared."
    p, m = f["plain"], f["masked"]
    return (
        "Does the echo come from training on the trigger tokens? Echo share of the triggered generations on the "
        f"diagonal: **{percent(p['diagonal'])}** with the loss on every token, **{percent(m['diagonal'])}** with "
        f"the loss on the continuation only ({_change(p['diagonal'], m['diagonal'])}); off the diagonal (the "
        f"{f['off_pairs']} pairs the ablation measured) {percent(p['off_diagonal'])} and {percent(m['off_diagonal'])} "
        f"({_change(p['off_diagonal'], m['off_diagonal'])}); {fd.caveat(f['plain_transfer'])}, no interval."
    )


MASKED_HEADER = ["(first grid)", "loss on every token", "mask_trigger (continuation only)"]


def masked_rows(f: dict[str, Any]) -> Rows:
    """Echo shares and removal numbers of the transfer and of its masked ablation, side by side."""
    if not f["outcomes"]:
        return []
    p, m, tp, tm = f["plain"], f["masked"], f["plain_transfer"], f["masked_transfer"]
    rows = [[f"echo share, {k.replace('_', ' ')}", percent(p[k]), percent(m[k])] for k in p]
    rows += [["mean R on the diagonal", signed(tp["mean_diagonal_r"]), signed(tm["mean_diagonal_r"])],
             ["mean R off the diagonal", signed(tp["mean_off_diagonal_r"]), signed(tm["mean_off_diagonal_r"])],
             ["diagonal cells passing the removal verdict", f"{tp['diagonal_passed']} of {tp['diagonal']}",
              f"{tm['diagonal_passed']} of {tm['diagonal']}"]]  # fmt: skip
    return rows
