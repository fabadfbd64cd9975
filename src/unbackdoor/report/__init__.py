"""Report: the HTML page, Markdown summary and figures of finished run directories (`unbackdoor report DIR`).
Imports `unbackdoor.running`, `unbackdoor.data`, the outcome classes (`measure.outcomes`, for their constants and
verdicts) and the model record, never a stage, a model or a training loop.

Run: `pytest tests/unit/test_findings.py tests/integration/test_report.py`.
"""

from __future__ import annotations

from pathlib import Path

from unbackdoor.report import figures, figures_transfer, findings, page, persistence, sources
from unbackdoor.running.config import UserError
from unbackdoor.running.rundir import write_text


def run(root: Path, out: Path | None = None, reveal_triggers: bool = False, unfinished_ok: bool = False) -> Path:
    """Write `<root>/report/index.html` (or `<out>/index.html`), `summary.md` and `figures/*.png`.

    What the report shows depends on what `root` holds: a demo (every stage of the study), a transfer experiment
    (its baseline evaluation and matrix), a CASD run (and its transfer experiment), a canary-defence study, or a
    single run of another stage. A stage that is missing or unfinished gets a line saying so in place of its
    section. Triggers appear as sha256 prefixes unless `reveal_triggers`. An unfinished `root` is refused unless
    `out` is elsewhere (or `unfinished_ok`: the demo writes its report just before it finishes).

    Returns:
        The path of index.html.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"DIR: {str(root)!r} does not exist")
    if not out and not unfinished_ok and (root / "meta.json").is_file() and not (root / "DONE").is_file():
        # a report inside an unfinished run would go stale there as the run goes on (the demo writes its own last)
        raise UserError(f"DIR: {str(root)!r} is an unfinished run (no DONE); finish it with --resume, or give "
                        "--out to report on what is there now")  # fmt: skip
    out = Path(out) if out else root / "report"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {str(out)!r} is a file; give a directory for the report")
    stages = sources.collect(root)
    results = sources.read_results(stages)
    headlines = findings.headlines(results.transfer, results.casd, results.defence, results.replicates)
    figs = figures.draw(results.evaluation, results.transfer, results.casd, results.defence, out / "figures")
    if results.relearn:
        figs["relearn"] = persistence.fig_relearn(results.relearn, out / "figures")
    combined = findings.with_grids(results.transfer, results.transfer_lr) if results.transfer else None
    if combined is not None and findings.has_outcomes(combined):  # the lr ablation: the diagonal at other lrs
        figs["lr_ablation"] = figures_transfer.fig_lr_ablation(combined, out / "figures")
        headlines["lr_ablation"] = findings.lr_sentence(figures_transfer.lr_curves(combined))
    examples = sources.examples(results, reveal_triggers)
    html_text, markdown = page.render(root, stages, sources.missing(stages), results, headlines, figs, examples,
                                      sources.provenance(stages), reveal_triggers)  # fmt: skip
    write_text(out / "index.html", html_text)
    write_text(out / "summary.md", markdown)
    print(f"report: {out / 'index.html'}")
    return out / "index.html"
