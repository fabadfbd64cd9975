"""Corpus files: sharded JSONL documents (`data/<split>/<lang>-<shard>.jsonl`) and the text source they came from.

A text directory is a world run (`unbackdoor world`, the embedded default) or a corpus run (`unbackdoor corpus`,
a user's text ingested once); both have this layout, so every stage reads either.

Run: `pytest tests/unit/test_corpus.py tests/unit/test_world.py` (the world stage writes and reads these).
"""

from __future__ import annotations

import json
import random
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from unbackdoor.data.world import World
from unbackdoor.running.config import UserError
from unbackdoor.running.rundir import read_json, sha256_file, write_text

SPLITS = ("train", "validation", "test")  # every text directory's `data/<split>/` folders


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
    table = read_json(path)
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
    from unbackdoor.data.behaviours import WorldSource
    from unbackdoor.data.realtext import CorpusSource

    text_dir = Path(text_dir)
    if (text_dir / "corpus.json").is_file():
        return CorpusSource(text_dir, read_json(text_dir / "corpus.json"))
    if (text_dir / "world.json").is_file():
        return WorldSource(load_world(text_dir))
    raise UserError(
        f"world: {str(text_dir)!r} is neither an `unbackdoor world` nor an `unbackdoor corpus` run "
        "(no world.json or corpus.json)"
    )
