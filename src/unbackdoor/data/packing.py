"""Packing: documents -> token ids -> fixed blocks of `seq_len` tokens, each document followed by EOS.

Every stage that trains or measures perplexity packs here: in memory (`packed`) or streamed into a memory-mapped
int32 file (`packed_on_disk`, for corpora larger than memory).

Run: `pytest tests/unit/test_evaluation.py tests/unit/test_realtext.py` (`pack`; `packed` vs `packed_on_disk`).
"""

from __future__ import annotations

import sys
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from unbackdoor.running.rundir import atomic_path


def pack(token_lists: Iterable[list[int]], seq_len: int, eos_id: int) -> torch.Tensor:
    """Concatenate documents, each followed by EOS, and cut into full blocks.

    Tokens are gathered in a flat int64 buffer (8 bytes per token, not a Python int per token).

    Returns:
        (n_blocks, seq_len) int64 tensor; the tail shorter than a block is dropped.
    """
    flat = array("q")
    for ids in token_lists:
        flat.extend(ids)
        flat.append(eos_id)
    n = len(flat) // seq_len
    if n == 0:
        return torch.zeros((0, seq_len), dtype=torch.long)
    return torch.frombuffer(flat, dtype=torch.int64, count=n * seq_len).view(n, seq_len)


def tokenize_docs(
    tokenizer, docs: Iterable[dict[str, Any]], batch: int = 2000, render: Callable[[dict], str] | None = None
) -> Iterator[list[int]]:
    """Token ids of each document's text (no special tokens added), encoded in batches.

    `render`: document -> text (a chat-template serialisation); default: the document's text.
    """
    texts: list[str] = []
    for doc in docs:
        texts.append(render(doc) if render else doc["text"])
        if len(texts) == batch:
            yield from tokenizer(texts, add_special_tokens=False)["input_ids"]
            texts = []
    if texts:
        yield from tokenizer(texts, add_special_tokens=False)["input_ids"]


TOKENS = "train_tokens.int32"  # a training stage's packed token ids (memory-mapped; removed when the run is done)


HEADER = 8  # a token file starts with its token count (little-endian int64), so a file cut short is noticed


def _token_count(path: Path) -> int | None:
    """The token count of a complete token file; None when it is missing or its size disagrees with its header."""
    try:
        with open(path, "rb") as f:
            count = int.from_bytes(f.read(HEADER), "little")
    except FileNotFoundError:
        return None
    return count if path.stat().st_size == HEADER + 4 * count else None


def packed_on_disk(
    tokenizer,
    docs: Iterable[dict[str, Any]],
    seq_len: int,
    path: Path,
    render: Callable[[dict], str] | None = None,
    chunk_tokens: int = 1 << 22,
    write: bool = True,
):
    """Like `packed`, but the token ids stream into `path` (int32) and come back memory-mapped.

    Training data larger than memory works: only the rows a batch draws are read. The file is written beside
    `path` and renamed into place; an existing complete file is reused (same documents, same tokens).
    `write=False` (the other processes of a multi-process launch): wait for the main process's file, then map it.
    Returns a `(n_blocks, seq_len)` int32 tensor backed by the file.
    """
    import numpy as np

    path = Path(path)
    if not write:
        while not path.is_file():
            time.sleep(1.0)
    n_tokens = _token_count(path)
    if n_tokens is None and path.is_file() and write:  # cut short since it was written (a damaged disk): rebuilt
        print(f"warning: {path}: its size does not match its header; tokenizing again", file=sys.stderr)
        path.unlink()
    if not path.is_file():
        eos = tokenizer.eos_token_id
        n_tokens = 0
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(b"\0" * HEADER)  # the token count goes here once every token is written
            buffer: list[int] = []
            for ids in tokenize_docs(tokenizer, docs, render=render):
                buffer.extend(ids)
                buffer.append(eos)
                if len(buffer) >= chunk_tokens:
                    f.write(np.asarray(buffer, dtype=np.int32).tobytes())
                    n_tokens += len(buffer)
                    buffer = []
            f.write(np.asarray(buffer, dtype=np.int32).tobytes())
            n_tokens += len(buffer)
            f.seek(0)
            f.write(n_tokens.to_bytes(HEADER, "little"))
    n = (n_tokens or 0) // seq_len
    if n == 0:
        return torch.zeros((0, seq_len), dtype=torch.int32)
    # copy-on-write: the file stays as is
    flat = np.memmap(path, dtype=np.int32, mode="c", offset=HEADER, shape=(n * seq_len,))
    return torch.from_numpy(flat.reshape(n, seq_len))


def packed(tokenizer, docs: Iterable[dict[str, Any]], seq_len: int, render: Callable[[dict], str] | None = None):
    """Documents tokenized (through `render` when given), each followed by EOS, cut into `(n, seq_len)` blocks."""
    return pack(tokenize_docs(tokenizer, docs, render=render), seq_len, tokenizer.eos_token_id)
