"""`auto` precision: bfloat16 only where the device computes it natively; asking for emulated bf16 warns once.

Run: `pytest tests/unit/test_precision.py`.
"""

from __future__ import annotations

import pytest

from unbackdoor.running import runtime


@pytest.mark.parametrize("native", [True, False])
def test_auto_picks_bf16_only_where_native(monkeypatch, native):
    monkeypatch.setattr(runtime, "native_bf16", lambda device=None: native)
    assert runtime.resolve_precision("auto", "train.precision") == ("bf16" if native else "fp32")
    assert runtime.resolve_precision("auto", "dtype", "bfloat16", "float32") == ("bfloat16" if native else "float32")
    assert runtime.resolve_precision("fp32", "train.precision") == "fp32"


def test_emulated_bf16_is_honoured_with_one_warning(monkeypatch, capsys):
    monkeypatch.setattr(runtime, "native_bf16", lambda device=None: False)
    monkeypatch.setattr(runtime, "_WARNED", set())
    assert runtime.resolve_precision("bf16", "train.precision") == "bf16"
    assert runtime.resolve_precision("bf16", "train.precision") == "bf16"
    err = capsys.readouterr().err
    assert err.count("warning: train.precision=bf16: this device has no native bfloat16") == 1
    assert "train.precision=auto" in err


def test_native_bf16_answers_for_this_cpu():
    import torch

    assert runtime.native_bf16("cpu") == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
