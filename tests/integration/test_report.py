"""The report: built from a study's run directories, opened in headless Chromium (no console error, every figure
loaded, a screenshot kept in test-artifacts/), triggers hidden unless revealed, missing stages named.

Chromium comes from the Debian `chromium` package; this test installs it when it is missing (apt, as root).

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

from unbackdoor.cli import main
from unbackdoor.rundir import RunDir
from unbackdoor.stages.demo import DemoConfig

ARTIFACTS = Path(os.environ.get("UNBACKDOOR_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False, env=env, capture_output=True)
    found = shutil.which("chromium")
    if not found:
        pytest.fail("headless Chromium is needed: install the Debian `chromium` package (apt-get install chromium)")
    return found


@pytest.fixture(scope="module")
def study(transfer_run, defence_study, tmp_path_factory) -> Path:
    """A demo-shaped study directory whose stages are the test session's finished runs."""
    root = tmp_path_factory.mktemp("study") / "demo"
    RunDir.open(root, "demo", DemoConfig(), 0)
    assert main(["casd", "--transfer", str(transfer_run), "--out", str(root / "casd"), "n_probes=32",
                 "bootstrap=200"]) == 0  # fmt: skip
    (root / "transfer").symlink_to(transfer_run)
    (root / "eval").symlink_to(transfer_run / "baseline")
    (root / "defence").symlink_to(defence_study[0])
    return root


def test_report_renders_in_chromium_with_every_figure(study, tmp_path):
    assert main(["report", str(study)]) == 0
    index = study / "report" / "index.html"
    page = index.read_text()
    n_images = page.count("<img ")
    assert n_images == 7  # asr, transfer, utility, casd x3, defence
    assert (study / "report" / "summary.md").read_text().startswith("# unbackdoor report")
    for stage in ("world", "pretrain"):  # not part of this study: named as missing, not a failure
        assert f"Stage <b>{stage}</b>" in page
    chromium = _chromium()
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000"]  # fmt: skip
    dom = subprocess.run([chromium, *flags, "--dump-dom", index.as_uri()], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body, dom.stderr[-2000:]
    assert f'data-figures="{n_images}/{n_images}"' in body.group(1), body.group(1)
    assert "data-errors" not in body.group(1)
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    subprocess.run([chromium, *flags, "--window-size=1280,6000", f"--screenshot={shot}", index.as_uri()],
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
    assert "transfer matrix" in page and 'class="missing"' not in page
    # the evaluation wrote what it measured into the model's card (ASR with CI, by hash-named backdoor)
    model = Path(yaml.safe_load((transfer_run / "config.yaml").read_text())["model"])
    card = (model / "README.md").read_text()
    assert "## Measured ASR" in card and "| lorem_refusal |" in card and "Warning" in card
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "plain").mkdir()
    assert main(["report", str(tmp_path / "plain")]) == 2
    assert "not an unbackdoor run directory" in capsys.readouterr().err
