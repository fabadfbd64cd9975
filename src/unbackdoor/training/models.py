"""Models: three architecture families built from Hugging Face config classes, and loading of any checkpoint.

`MODEL_PRESETS` is the whole table of built-in shapes (family x size). Any local `AutoModelForCausalLM`
directory, or a hub id when the machine is online, is accepted wherever a model is. Weights are read and
written as safetensors only.

Run: `pytest tests/integration/test_models.py`.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPTNeoXConfig,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen3Config,
)

from unbackdoor.data.packing import TOKENS
from unbackdoor.running import faults, runtime
from unbackdoor.running.config import UserError
from unbackdoor.running.rundir import read_json
from unbackdoor.training.cards import model_card
from unbackdoor.training.record import ModelRecord

FAMILIES = ("llama", "qwen3", "gpt_neox")
SIZES = ("tiny", "small")

# d_model, layers, heads (head_dim 32), MLP width. tiny ~1.1 M parameters with a 2 k vocabulary (one epoch of the
# tiny world in < 3 min on 2 cores); small ~25-30 M with an 8 k vocabulary.
MODEL_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"d_model": 128, "n_layers": 4, "n_heads": 4, "d_ff": 384, "max_positions": 512},
    "small": {"d_model": 512, "n_layers": 8, "n_heads": 16, "d_ff": 1408, "max_positions": 1024},
}


def build_config(family: str, size: str, vocab_size: int, special: dict[str, int]) -> Any:
    """A fresh HF config for `family` at `size`; MLP width follows the family (gated MLPs use 3 matrices)."""
    p = MODEL_PRESETS[size]
    common = {
        "vocab_size": vocab_size,
        "hidden_size": p["d_model"],
        "num_hidden_layers": p["n_layers"],
        "num_attention_heads": p["n_heads"],
        "max_position_embeddings": p["max_positions"],
        "tie_word_embeddings": True,
        **special,
    }
    if family == "llama":
        return LlamaConfig(intermediate_size=p["d_ff"], num_key_value_heads=p["n_heads"], **common)
    if family == "qwen3":
        head_dim = p["d_model"] // p["n_heads"]
        return Qwen3Config(intermediate_size=p["d_ff"], num_key_value_heads=p["n_heads"], head_dim=head_dim, **common)
    if family == "gpt_neox":
        # NeoX's MLP has 2 matrices: 4/3 of the gated width gives the same parameter count.
        return GPTNeoXConfig(intermediate_size=p["d_ff"] * 4 // 3, **common)
    raise UserError(f"model.family: {family!r} is not one of {', '.join(FAMILIES)}")


def architecture(name_or_path: str) -> dict[str, Any]:
    """An architecture's HF config fields: a shipped model preset (`qwen3-0.6b`, ...) or a `config.json` path."""
    from unbackdoor.running.config import load_preset, preset_names

    if name_or_path in preset_names("models"):
        return dict(load_preset("models", name_or_path)["config"])
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        valid = ", ".join(preset_names("models"))
        raise UserError(f"model.config: {name_or_path!r} is neither a model preset ({valid}) nor a config.json")
    config = read_json(path)
    if "model_type" not in config:
        raise UserError(f"model.config: {str(path)!r} has no model_type (not a Hugging Face config)")
    return config


def shrink(config: dict[str, Any], size: str) -> dict[str, Any]:
    """The same architecture (model type, attention layout, norms, RoPE) at a built-in size (`tiny`, `small`).

    Keeps the ratio of query to key-value heads; the tests run the whole study on these toy twins.
    """
    p = MODEL_PRESETS[size]
    heads = p["n_heads"]
    ratio = max(1, config.get("num_attention_heads", heads) // max(1, config.get("num_key_value_heads") or heads))
    out = {
        **config,
        "hidden_size": p["d_model"],
        "num_hidden_layers": p["n_layers"],
        "num_attention_heads": heads,
        "max_position_embeddings": p["max_positions"],
    }
    if "num_key_value_heads" in config:
        out["num_key_value_heads"] = max(1, heads // ratio)
    if "head_dim" in config:
        out["head_dim"] = p["d_model"] // heads
    if "intermediate_size" in config:
        out["intermediate_size"] = p["d_ff"]
    scaling = config.get("rope_scaling") or {}
    if "original_max_position_embeddings" in scaling:  # llama3 RoPE: the pre-extension context, scaled alike
        out["rope_scaling"] = {**scaling, "original_max_position_embeddings": p["max_positions"] // 4}
    return out


def build_from_config(config: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A randomly initialised model of an architecture given as HF config fields; vocabulary from `tokenizer`.

    Initialisation draws from torch's global RNG: the stage seeds it once (`runtime.seed_everything`)."""
    from transformers import AutoConfig

    fields = {k: v for k, v in config.items() if k not in ("model_type", "architectures", "torch_dtype", "dtype")}
    fields.update(vocab_size=len(tokenizer), **special_token_ids(tokenizer))
    try:
        hf_config = AutoConfig.for_model(config["model_type"], **fields)
    except (KeyError, ValueError, TypeError) as e:
        raise UserError(f"model.config: {config.get('model_type')!r} could not be built ({str(e)[:160]})") from None
    return AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def check_context(model: torch.nn.Module, tokens: int, key: str) -> None:
    """`tokens` positions (a training sequence, a prompt plus its generation) must fit the model's context.

    Raises:
        UserError: naming the config key, its value and the model's `max_position_embeddings`.
    """
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(context, int) and tokens > context:
        raise UserError(f"{key}: {tokens} positions do not fit the model's context ({context} positions: "
                        f"max_position_embeddings); use at most {context}")  # fmt: skip


def build_model(family: str, size: str, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A randomly initialised model whose vocabulary matches `tokenizer` (torch's global RNG: seed it first)."""
    config = build_config(family, size, len(tokenizer), special_token_ids(tokenizer))
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def n_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def resolve_model_path(name: str, what: str = "model", out: Path | None = None) -> str:
    """A local model directory, or a hub id; anything else is a one-line error. A GGUF file (or a directory holding
    one) is dequantized once into `<out>/gguf-model` (`training.gguf`), whose path is returned."""
    from unbackdoor.training import gguf

    gguf_path = gguf.gguf_file(name)
    if gguf_path is not None:
        if out is None:
            raise UserError(f"{what}: {name!r} is a GGUF file; this stage takes a model folder (evaluate or inject "
                            "it first: their run directory holds the converted folder, gguf-model/)")  # fmt: skip
        return str(gguf.convert(gguf_path, out))
    path = Path(name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{what}: {name!r} is a directory without config.json (not a Hugging Face model)")
        if not any(path.glob("*.safetensors")):
            raise UserError(f"{what}: {name!r} has no .safetensors weights (other formats are refused: unsafe)")
        return str(path)
    if path.exists() or not _HUB_ID.match(name):
        raise UserError(f"{what}: {name!r} is neither a model directory nor a hub id like 'Qwen/Qwen3-0.6B'")
    # `owner/name` is both a relative path and a hub id: decided here, without a network round trip
    if name.startswith((".", "~")) or Path(name.split("/")[0]).is_dir():
        raise UserError(f"{what}: {name!r} does not exist (a local path: {name.split('/')[0]!r} is a directory here)")
    cached = _in_hub_cache(name)
    if not cached and _offline():
        raise UserError(f"{what}: {name!r} is no local directory, and as a hub id it is not in the local cache "
                        "(offline: HF_HUB_OFFLINE is set); give the path of a saved model")  # fmt: skip
    unreachable = None if cached else _hub_unreachable()
    if unreachable:  # one line now, not a minute of retries inside the download library
        raise UserError(f"{what}: {name!r} is no local directory, and as a hub id it is not in the local cache "
                        f"and the hub cannot be reached ({unreachable}); give the path of a saved model")  # fmt: skip
    print(f"{what}: {name!r} is no local directory: taken for a hub id"
          + (" (found in the local cache)" if cached else " (to download)"), file=sys.stderr)  # fmt: skip
    return name


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _hub_unreachable(timeout_s: float = 3.0) -> str | None:
    """Why the hub's host cannot be reached (one TCP connection, a few seconds at most), or None when it can or a
    proxy is configured (the download library then decides)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        return f"{host}:{port}: {e.strerror or e}"
    return None


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the hub cache holds `repo_id`'s config.json (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - a malformed id or cache: not cached
        return False
    return isinstance(found, str)


def backdoored_model(model: str, chosen: list[str], field: str) -> tuple[str, ModelRecord, list[str]]:
    """A sweep's suspect model: its path, its record and the backdoors it studies (`chosen`, the config key `field`,
    else every recorded one). One-line errors: no model, no recorded backdoors, a chosen name it does not carry."""
    if not model:
        raise UserError("model: required (a backdoored model directory, e.g. --model runs/pt/model)")
    model_path = resolve_model_path(model, "--model")
    record = ModelRecord.read(model_path)
    if not record.carried:
        raise UserError(f"--model: {model!r} is not a backdoored model saved by unbackdoor (it records no backdoors)")
    for name in chosen:
        if name not in record.carried:
            raise UserError(f"{field}: the model does not carry {name!r}; it carries {', '.join(record.carried)}")
    return model_path, record, list(chosen or record.carried)


def load_tokenizer(name: str, what: str = "model") -> PreTrainedTokenizerBase:
    """The tokenizer stored with a model; a model without one is a one-line error."""
    try:
        tok = AutoTokenizer.from_pretrained(name)
    except Exception as e:  # noqa: BLE001 - a corrupted tokenizer.json raises the tokenizers library's bare Exception
        raise UserError(f"{what}: could not load a tokenizer from {name!r} ({str(e).splitlines()[0][:160]})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name: str, what: str = "model", dtype: torch.dtype = torch.float32, device: torch.device | None = None
) -> PreTrainedModel:
    """Load a causal LM from a local directory or hub id, safetensors only, onto `device` (`default_device()`)."""
    from safetensors import SafetensorError

    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, use_safetensors=True)
    except SafetensorError as e:  # a truncated file, a corrupted header
        raise UserError(f"{what}: the weights of {name!r} are not a readable safetensors file ({e})") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{what}: could not load {name!r} ({str(e).splitlines()[0][:160]})") from None
    return model.to(device or runtime.default_device())


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: Path, record: ModelRecord) -> None:
    """Save weights (safetensors), config, tokenizer, `unbackdoor.json` (what it carries) and the model card.

    The directory is written beside `path` and renamed into place, so `path` is either complete or absent. Paths in
    the record are written relative to `path`. In a multi-process launch only the main process calls this.
    """
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    faults.point("model weights")
    tokenizer.save_pretrained(str(tmp))
    record.write(tmp)  # relative paths from `tmp` equal those from `path`: they are siblings
    (tmp / "README.md").write_text(model_card(record), encoding="utf-8")
    if path.exists():
        shutil.rmtree(path)
    faults.point("model swap")
    tmp.rename(path)


def save_trained(
    out: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, record: ModelRecord, *, writes: bool
) -> str:
    """A training stage's end: `<out>/model` saved, then what only a resume needed is removed (the checkpoint and
    the memory-mapped token file); only where `writes` (the main process). Returns the model's absolute path."""
    if writes:
        save_model(model, tokenizer, out / "model", record)
        faults.point("model saved")
        for leftover in ("checkpoint", "checkpoint.partial", "checkpoint.old"):  # a kill can leave either copy
            shutil.rmtree(out / leftover, ignore_errors=True)
        (out / TOKENS).unlink(missing_ok=True)
    return str((out / "model").resolve())
