"""Command `card`: write an evaluation's measured ASRs into a model's card, as an explicit act.

    unbackdoor card runs/pt/model --eval runs/eval

`eval` never writes into the model it measures (two evaluations of one model would race, and measuring would
modify its input). When a card with measured ASRs is wanted, this command rewrites the model's `README.md` from
its record plus the evaluation's `summary.json`; the evaluation must be of this very model.
"""

from __future__ import annotations

from pathlib import Path

from unbackdoor.running.config import UserError
from unbackdoor.running.rundir import refresh_size, require_done, write_text
from unbackdoor.training.cards import model_card
from unbackdoor.training.record import RECORD, ModelRecord


def run(model_dir: Path, eval_dir: Path) -> Path:
    """Rewrite `model_dir/README.md` with the ASRs measured by `eval_dir`; returns the card's path."""
    model_dir, eval_dir = Path(model_dir), Path(eval_dir)
    if not (model_dir / RECORD).is_file():
        raise UserError(f"MODEL: {str(model_dir)!r} has no {RECORD} (not a model saved by unbackdoor)")
    summary = require_done(eval_dir, "eval", "--eval")
    if Path(summary["model"]).resolve() != model_dir.resolve():
        raise UserError(f"--eval: {str(eval_dir)!r} measured {summary['model']!r}, not {str(model_dir)!r}")
    measured = {
        name: {**{k: row["asr"][k] for k in ("rate", "lo", "hi", "n")}, "source": f"eval {eval_dir.resolve()}"}
        for name, row in summary["backdoors"].items()
    }
    card = model_dir / "README.md"
    write_text(card, model_card(ModelRecord.read(model_dir), measured=measured))
    refresh_size(card)  # the runs that hold the model keep checking every file, this card included
    return card
