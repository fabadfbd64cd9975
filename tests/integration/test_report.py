"""The report: built from a study's run directories, opened in headless Chromium (no JavaScript error, every figure
loaded, a screenshot kept in test-artifacts/), triggers hidden unless revealed, missing stages named.

The shipped page has no script: the test checks a copy of it, into which it injects its own probe. Chromium is the
Debian `chromium` package, which `make install` installs when it can (as root); this test never installs it.

Run: `pytest tests/integration/test_report.py`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import EVAL_FAST, TRANSFER_FAST
from unbackdoor.cli import main
from unbackdoor.running.rundir import RunDir
from unbackdoor.stages.demo import DemoConfig

ARTIFACTS = Path(os.environ.get("UNBACKDOOR_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars", "--enable-logging=stderr",
    "--v=0", "--virtual-time-budget=10000",
]  # fmt: skip
# Test-side only: records every JavaScript error and failed resource load (capture phase), and on load how many
# images decoded, as attributes of <body> that `--dump-dom` shows.
PROBE = """<script>
window.reportErrors = [];
window.addEventListener("error", e => {
  window.reportErrors.push(e.message || ("failed to load " + ((e.target && (e.target.src || e.target.href)) || "?")));
}, true);
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.figures = ok + "/" + imgs.length;
  if (window.reportErrors.length) document.body.dataset.errors = window.reportErrors.join(";");
});
</script>
"""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not found:
        pytest.fail("headless Chromium is needed to check the report and is not installed: run `make install` as "
                    "root, or `apt-get install chromium` (Debian package `chromium`)")  # fmt: skip
    return found


def _probed_copy(report: Path, into: Path) -> Path:
    """A copy of the report directory (page and figures) whose index.html carries `PROBE`."""
    copy = shutil.copytree(report, into / "report")
    page = (copy / "index.html").read_text(encoding="utf-8")
    assert page.count("</head>") == 1
    (copy / "index.html").write_text(page.replace("</head>", PROBE + "</head>"), encoding="utf-8")
    return copy / "index.html"


@pytest.fixture(scope="module")
def study(transfer_run, defence_study, relearn_run, tmp_path_factory) -> Path:
    """A demo-shaped study directory whose stages are the test session's finished runs, and its masked-loss
    ablation (a transfer with `remove.mask_trigger=true`, run here)."""
    root = tmp_path_factory.mktemp("study") / "demo"
    RunDir.open(root, "demo", DemoConfig(), 0).finish({})
    model = yaml.safe_load((transfer_run / "config.yaml").read_text())["model"]
    assert main(["transfer", "--model", model, "--out", str(root / "transfer-masked"), *TRANSFER_FAST,
                 "remove.mask_trigger=true"]) == 0  # fmt: skip
    assert main(["casd", "--transfer", str(transfer_run), "--out", str(root / "casd"), "n_probes=32",
                 "bootstrap=200"]) == 0  # fmt: skip
    # one replicate pooled: the section is there and says that between-model variance is unknown
    assert main(["replicates", "--out", str(root / "replicates"), f"transfers=[{transfer_run}]",
                 f"casd=[{root / 'casd'}]", f"defences=[{defence_study[0]}]"]) == 0  # fmt: skip
    (root / "relearn").symlink_to(relearn_run[0])
    # the lr ablation: the diagonal at a second removal learning rate
    assert main(["transfer", "--model", model, "--out", str(root / "transfer-lr"), *TRANSFER_FAST, "lr=[3e-3]",
                 "measure=diagonal", "sham=false", "backdoors=[at_repeat]", "remove.train.steps=20"]) == 0  # fmt: skip
    (root / "transfer").symlink_to(transfer_run)
    (root / "eval").symlink_to(transfer_run / "baseline")
    (root / "defence").symlink_to(defence_study[0])
    return root


def test_report_renders_in_chromium_with_every_figure(study, tmp_path):
    assert main(["report", str(study)]) == 0
    index = study / "report" / "index.html"
    page = index.read_text()
    n_images = page.count("<img ")
    assert n_images == 11  # asr, transfer (ASR, R, composition, lr ablation), utility, casd x3, relearn, defence
    # the defence pooled over the replicates (here one): its own table, and a headline that says what it rests on
    assert "<h3>Across replicates</h3>" in page and "one-text hidden backdoors per replicate" in page
    assert "Replicate 0 in detail: Canary defence" in page and "Across <b>1 replicate</b> (" in page
    assert "figures/lr_ablation.png" in page and "Learning-rate ablation (mean removal index R" in page
    assert "diagonal (own target) lr 0.001: " in page and "lr 0.003: " in page
    assert "3b. Persistence" in page and "figures/relearn.png" in page and "repoison, 2 documents" in page
    assert "Suppressed by transfer against removed directly" in page and "lorem_refusal → at_repeat" in page
    for figure in ("transfer", "removal_index", "composition"):
        assert f"figures/{figure}.png" in page
    assert "<script" not in page  # no test hooks in the shipped page
    assert (study / "report" / "summary.md").read_text().startswith("# unbackdoor report")
    for stage in ("world", "pretrain"):  # not part of this study: named as missing, not a failure
        assert f"Stage <b>{stage}</b>" in page
    assert "Stage <b>transfer_masked</b>" not in page  # the ablation is there: its section, its numbers
    assert "2b. Ablation" in page and "Does the echo come from training on the trigger tokens? Echo share" in page
    # removal is read from the clean rate; the judge-based S is labelled as such; generations show their class
    assert "(removal target, other) pairs the other backdoor's triggered prompts continued cleanly" in page
    assert "Judge-based suppression S" in page and "(outcome: " in page and "behaviour shown" not in page
    assert "2c. Across replicates" in page and "Across <b>1 independently trained model</b>" in page
    assert "1 replicate: between-model variance unknown" in page and "q-value" in page
    assert "CASD vs removal index R (expected ρ &lt; 0" in page or "CASD vs removal index R (expected ρ < 0" in page
    chromium = _chromium()
    probed = _probed_copy(study / "report", tmp_path)
    dom = subprocess.run([chromium, *CHROMIUM_FLAGS, "--dump-dom", probed.as_uri()], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body, dom.stderr[-2000:]
    assert f'data-figures="{n_images}/{n_images}"' in body.group(1), body.group(1)
    assert "data-errors" not in body.group(1), body.group(1)
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    subprocess.run([chromium, *CHROMIUM_FLAGS, "--window-size=1280,6000", f"--screenshot={shot}", index.as_uri()],
                   capture_output=True, timeout=120, check=False)  # fmt: skip
    assert shot.is_file() and shot.stat().st_size > 50_000


def test_triggers_hidden_unless_revealed(study, tmp_path):
    assert main(["report", str(study), "--out", str(tmp_path / "hidden")]) == 0
    hidden = (tmp_path / "hidden" / "index.html").read_text()
    assert "lorem ipsum dolor" not in hidden and "@@ 7 @@" not in hidden and "⟦trigger " in hidden
    assert not re.search(r"\b(lorem|ipsum|dolor)\b", hidden)  # nor a word of one (names like lorem_refusal are public)
    assert main(["report", str(study), "--out", str(tmp_path / "shown"), "--reveal-triggers"]) == 0
    assert "lorem ipsum dolor" in (tmp_path / "shown" / "index.html").read_text()


def test_report_of_a_single_stage_and_bad_directories(transfer_run, tmp_path, capsys):
    assert main(["report", str(transfer_run), "--out", str(tmp_path / "r")]) == 0
    page = (tmp_path / "r" / "index.html").read_text()
    assert "transfer matrix" in page and 'class="missing"' not in page and "2b. Ablation" not in page
    # sections are numbered as they appear: a transfer-only report has no section 1 about an evaluation
    numbers = re.findall(r"<h2>(\d+)[a-z]?\. ", page)
    assert numbers == [str(n) for n in range(1, len(numbers) + 1)] and ". Remove one, measure all" in page
    # an evaluation of a removed model, against the evaluation before: labelled as after removal
    ev = tmp_path / "ev-after"
    removed = transfer_run / "cells" / "lr=0.001" / "seed=0" / "lorem_refusal" / "remove" / "model"
    assert main(["eval", "--model", str(removed), "--out", str(ev), f"baseline={transfer_run / 'baseline'}",
                 *EVAL_FAST, "near_miss=false"]) == 0  # fmt: skip
    assert main(["report", str(ev)]) == 0
    page = (ev / "report" / "index.html").read_text()
    assert "Utility of the model after removal" in page and "backdoored model" not in page
    numbers = re.findall(r"<h2>(\d+)[a-z]?\. ", page)
    assert numbers[0] == "1" and numbers == [str(n) for n in range(1, len(numbers) + 1)]  # 1, 2, 3: not 1, 5, 6
    # the evaluations did not write into the model they measured: its card warns, and measures nothing
    model = Path(yaml.safe_load((transfer_run / "config.yaml").read_text())["model"])
    card = (model / "README.md").read_text()
    assert "## Measured ASR" not in card and "| lorem_refusal |" in card and "Warning" in card
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "plain").mkdir()
    assert main(["report", str(tmp_path / "plain")]) == 2
    assert "not an unbackdoor run directory" in capsys.readouterr().err
    # an unfinished run: no report inside it (it would go stale); elsewhere it is fine
    unfinished = tmp_path / "unfinished"
    shutil.copytree(transfer_run, unfinished, ignore=shutil.ignore_patterns("cells", "report"))
    (unfinished / "DONE").unlink()
    assert main(["report", str(unfinished)]) == 2
    assert "is an unfinished run (no DONE)" in capsys.readouterr().err and not (unfinished / "report").exists()
