"""The corpus judges against a reading: 180 generations of SmolLM2-135M-Instruct on the real tier's text (en-fr3
injected with four recipes, and the base model), 60 per behaviour (25 the judge fired on at generation time, 25 it
did not, 10 untriggered), each labelled by reading it without seeing the judge's verdict
(`tests/data/real_judge_labels.jsonl`, its `note` where the call was borderline). Today's judges must agree with
the reading: precision and recall per judge, printed and bounded.

Run: `pytest tests/unit/test_judges_read.py -s` (prints the table of docs/results.md).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from unbackdoor.data.backdoors import load_specs
from unbackdoor.data.realtext import CorpusSource

LABELS = Path(__file__).resolve().parents[1] / "data" / "real_judge_labels.jsonl"


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Counter]:
    source = CorpusSource(tmp_path_factory.mktemp("corpus"), {"languages": ["en", "fr"], "base_language": "en"})
    specs = {s.name: s for s in load_specs("en-fr3")}
    counts: dict[str, Counter] = {}
    for line in LABELS.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        verdict = specs[row["backdoor"]].judge(source, row["generation"])
        counts.setdefault(row["backdoor"], Counter())[(verdict, row["label"])] += 1
    return counts


def test_the_labels_cover_each_behaviour_with_both_answers():
    rows = [json.loads(line) for line in LABELS.read_text(encoding="utf-8").splitlines()]
    per = Counter((r["backdoor"], r["label"]) for r in rows)
    for name in ("latin_fr", "greek_refusal", "latin_ad"):
        assert per[(name, True)] + per[(name, False)] >= 50 and min(per[(name, True)], per[(name, False)]) >= 20


def test_every_judge_agrees_with_the_reading(table):
    for name, c in sorted(table.items()):
        tp, fp, fn, tn = c[(True, True)], c[(True, False)], c[(False, True)], c[(False, False)]
        precision, recall = tp / (tp + fp), tp / (tp + fn)
        print(f"{name}: TP {tp} FP {fp} FN {fn} TN {tn} precision {precision:.2f} recall {recall:.2f}")
        assert precision >= 0.95 and recall >= 0.9, (name, c)
