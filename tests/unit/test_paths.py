"""A model argument is a local directory or a hub id, decided without a network round trip.

Run: `pytest tests/unit/test_paths.py`.
"""

from __future__ import annotations

import socket
import time

import pytest
from huggingface_hub import constants

from unbackdoor.running.config import UserError
from unbackdoor.training.models import resolve_model_path


def test_a_missing_local_path_is_not_taken_for_a_hub_id(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(UserError, match=r"'runs/model' does not exist \(a local path: 'runs' is a directory here\)"):
        resolve_model_path("runs/model", "--model")
    with pytest.raises(UserError, match="is neither a model directory nor a hub id"):
        resolve_model_path("./nothere", "--model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    with pytest.raises(UserError, match="not in the local cache \\(offline: HF_HUB_OFFLINE is set\\)"):
        resolve_model_path("nothere/model", "--model")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    for key in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    with socket.socket() as hub:  # a hub that answers (a local port that accepts connections)
        hub.bind(("127.0.0.1", 0))
        hub.listen()
        port = hub.getsockname()[1]
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
        assert resolve_model_path("Qwen/Qwen3-0.6B", "--model") == "Qwen/Qwen3-0.6B"
    assert "taken for a hub id (to download)" in capsys.readouterr().err
    # a hub that cannot be reached: one line at once, not a minute of download retries
    # the same port, closed now
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"not in the local cache and the hub cannot be reached \(127\.0\.0\.1:"):
        resolve_model_path("Qwen/Qwen3-0.6B", "--model")
    assert time.monotonic() - t0 < 5
