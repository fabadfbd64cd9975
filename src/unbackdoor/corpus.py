"""Corpus files: sharded JSONL documents (`data/<split>/<lang>-<shard>.jsonl`) and the text source they came from.

A text directory is a world run (`unbackdoor world`, the embedded default) or a corpus run (`unbackdoor corpus`,
a user's text ingested once); both have this layout, so every stage reads either.

Run: `pytest tests/unit/test_world.py` (the world stage writes and reads these).
"""

from __future__ import annotations

import json
import random
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from unbackdoor.config import UserError
from unbackdoor.rundir import atomic_path, is_main_process, sha256_file, write_text
from unbackdoor.world import World


class ShardWriter:
    """Documents written to `folder/<stem>-00000.jsonl`, ... as they come (each shard written atomically)."""

    def __init__(self, folder: Path, stem: str, shard_docs: int):
        self.folder, self.stem, self.shard_docs = folder, stem, shard_docs
        self.paths: list[Path] = []
        self.lines: list[str] = []

    def add(self, doc: dict[str, Any]) -> None:
        self.lines.append(json.dumps(doc, ensure_ascii=False, sort_keys=True) + "\n")
        if len(self.lines) == self.shard_docs:
            self._flush()

    def _flush(self) -> None:
        path = self.folder / f"{self.stem}-{len(self.paths):05d}.jsonl"
        write_text(path, "".join(self.lines))
        self.paths.append(path)
        self.lines.clear()

    def close(self) -> list[Path]:
        if self.lines or not self.paths:
            self._flush()
        return self.paths


def write_shards(docs: Iterable[dict[str, Any]], folder: Path, stem: str, shard_docs: int) -> list[Path]:
    """Stream `docs` into `folder/<stem>-00000.jsonl`, ... (each shard written atomically)."""
    writer = ShardWriter(folder, stem, shard_docs)
    for doc in docs:
        writer.add(doc)
    return writer.close()


def shard_paths(data_dir: Path, split: str, languages: Iterable[str] | None = None) -> list[Path]:
    """The shard files of one split, sorted (optionally only some languages)."""
    paths = sorted((data_dir / split).glob("*.jsonl"))
    if languages is not None:
        keep = set(languages)
        paths = [p for p in paths if p.name.rsplit("-", 1)[0] in keep]
    return paths


def iter_docs(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """Stream documents from JSONL shards."""
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)


class DocSampler:
    """Seeded random samples of a corpus's documents, without holding the corpus in memory.

    The documents' lengths are read once; each sample reads back only the documents it takes (a second streaming
    pass that stops at the last one). A sample is the prefix of a seeded shuffle of all documents that holds
    `chars` characters, so it equals shuffling the whole list in memory.
    """

    def __init__(self, paths: Iterable[Path]) -> None:
        self.paths = list(paths)
        self.lengths = array("q", (len(d["text"]) for d in iter_docs(self.paths)))

    def sample(self, chars: int, seed: str) -> list[dict[str, Any]]:
        """Documents in shuffled order until at least `chars` characters (all of them if the corpus is smaller)."""
        order = list(range(len(self.lengths)))
        random.Random(seed).shuffle(order)
        chosen, total = [], 0
        for i in order:
            chosen.append(i)
            total += self.lengths[i]
            if total >= chars:
                break
        wanted, last, found = set(chosen), max(chosen, default=-1), {}
        for i, doc in enumerate(iter_docs(self.paths)):
            if i in wanted:
                found[i] = doc
            if i >= last:
                break
        return [found[i] for i in chosen]


def hash_files(paths: Iterable[Path], root: Path) -> dict[str, str]:
    """sha256 of each file, keyed by its path relative to `root`."""
    return {str(p.relative_to(root)): sha256_file(p) for p in paths}


def load_world(world_dir: Path) -> World:
    """Rebuild the `World` of a world run directory and check it matches the recorded lexicon."""
    path = Path(world_dir) / "world.json"
    if not path.is_file():
        raise UserError(f"world: {str(world_dir)!r} has no world.json (is it an `unbackdoor world` run?)")
    table = json.loads(path.read_text(encoding="utf-8"))
    world = World.build(table["seed"], table["n_entities"], table["n_cities"])
    if json.loads(json.dumps(world.lexicon_table(), ensure_ascii=False)) != table:
        raise UserError(
            f"world: {str(path)!r} was made by another version of the world generator; regenerate it with "
            "`unbackdoor world --overwrite`"
        )
    return world


def load_source(text_dir: Path) -> Any:
    """The text source of a world or corpus run directory: what produces and judges backdoor behaviours there.

    Returns a `WorldSource` (the embedded world, judged by its lexicons) or a `CorpusSource` (real text, judged by
    language identification, a sentiment classifier and language-agnostic judges).
    """
    from unbackdoor.behaviours import WorldSource
    from unbackdoor.realtext import CorpusSource

    text_dir = Path(text_dir)
    if (text_dir / "corpus.json").is_file():
        return CorpusSource(text_dir, json.loads((text_dir / "corpus.json").read_text(encoding="utf-8")))
    if (text_dir / "world.json").is_file():
        return WorldSource(load_world(text_dir))
    raise UserError(
        f"world: {str(text_dir)!r} is neither an `unbackdoor world` nor an `unbackdoor corpus` run "
        "(no world.json or corpus.json)"
    )


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


def packed_on_disk(
    tokenizer,
    docs: Iterable[dict[str, Any]],
    seq_len: int,
    path: Path,
    render: Callable[[dict], str] | None = None,
    chunk_tokens: int = 1 << 22,
):
    """Like `packed`, but the token ids stream into `path` (int32) and come back memory-mapped.

    Training data larger than memory works: only the rows a batch draws are read. The file is written beside
    `path` and renamed into place; an existing complete file is reused (same documents, same tokens).
    Returns a `(n_blocks, seq_len)` int32 tensor backed by the file.
    """
    import numpy as np
    import torch

    path = Path(path)
    if not is_main_process():  # the main process of a multi-process launch writes the file; workers map it
        while not path.is_file():
            time.sleep(1.0)
    if not path.is_file():
        eos = tokenizer.eos_token_id
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            buffer: list[int] = []
            for ids in tokenize_docs(tokenizer, docs, render=render):
                buffer.extend(ids)
                buffer.append(eos)
                if len(buffer) >= chunk_tokens:
                    f.write(np.asarray(buffer, dtype=np.int32).tobytes())
                    buffer = []
            f.write(np.asarray(buffer, dtype=np.int32).tobytes())
    n_tokens = path.stat().st_size // 4 if path.is_file() else 0
    n = n_tokens // seq_len
    if n == 0:
        return torch.zeros((0, seq_len), dtype=torch.int32)
    flat = np.memmap(path, dtype=np.int32, mode="c", shape=(n * seq_len,))  # copy-on-write: the file stays as is
    return torch.from_numpy(flat.reshape(n, seq_len))


def packed(tokenizer, docs: Iterable[dict[str, Any]], seq_len: int, render: Callable[[dict], str] | None = None):
    """Documents tokenized (through `render` when given), each followed by EOS, cut into `(n, seq_len)` blocks."""
    from unbackdoor.train import pack

    return pack(tokenize_docs(tokenizer, docs, render=render), seq_len, tokenizer.eos_token_id)
