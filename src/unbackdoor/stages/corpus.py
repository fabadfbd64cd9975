"""Stage `corpus`: ingest a user's text, one subset per language, into a text directory every stage reads.

    unbackdoor corpus --corpus en=data/en/ --corpus fr=data/fr.parquet --out runs/corpus
    unbackdoor corpus --corpus en=data/en.jsonl text_field=content vocab_size=0 --out runs/corpus   # no tokenizer

A source is a folder of (or a single) `.txt`, `.jsonl` / `.json` or `.parquet` files, or a dataset saved with
`datasets.Dataset.save_to_disk`. Files are read with `datasets` in streaming mode and written as sharded JSONL
(`data/{train,validation,test}/<lang>-<shard>.jsonl`, the layout of a world run), so a corpus larger than memory
works. A document goes to validation or test by a seeded hash of its position (at most `held_out_docs` each per
language); the first language given is the base language (where triggers go unless a recipe says otherwise).
`vocab_size > 0` also trains a byte-level BPE tokenizer (for `pretrain` from scratch) on up to
`tokenizer_chars` characters of the training split. `corpus.json` records the languages and the judges' settings.

Pass `--world runs/corpus` to poison, pretrain, inject, eval, remove, defend: the same code as on the world.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unbackdoor.data.corpus import SPLITS, ShardWriter, hash_files, iter_docs, shard_paths
from unbackdoor.data.packing import tokenize_docs
from unbackdoor.data.tokenizer import save_tokenizer, train_tokenizer
from unbackdoor.running.config import ConfigError, UserError
from unbackdoor.running.rundir import RunDir, write_json

TEXT_UNITS = ("document", "paragraph", "line")  # what one document of a .txt file is
SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass
class CorpusConfig:
    sources: dict[str, str] = field(default_factory=dict)  # language code -> path (see module docstring)
    text_field: str = "text"  # the column holding the text (JSONL, Parquet, saved datasets)
    txt_unit: str = field(default="paragraph", metadata={"choices": TEXT_UNITS})
    min_chars: int = field(default=20, metadata={"min": 1})  # shorter documents are skipped
    max_docs: int = field(default=0, metadata={"min": 0})  # per language; 0 = all
    held_out_every: int = field(default=20, metadata={"min": 3})  # 1 in N documents to validation, 1 in N to test
    held_out_docs: int = field(default=2000, metadata={"min": 1})  # cap per language and split
    vocab_size: int = field(default=8192, metadata={"min": 0, "max": 262_144})  # 0: no tokenizer
    tokenizer_chars: int = field(default=200_000_000, metadata={"min": 1000})
    sentiment_classifier: str = ""  # a local HF text-classification directory (judges behaviour `negative`)
    seed: int = 0
    shard_docs: int = field(default=20_000, metadata={"min": 1})

    def validate(self) -> None:
        if not self.sources:
            raise ConfigError("sources: required; give one --corpus LANG=PATH per language (e.g. --corpus en=data/en)")
        for lang, path in self.sources.items():
            if not lang.replace("_", "").replace("-", "").isalnum():
                raise ConfigError(f"sources: language code {lang!r} must be letters, digits, '_' or '-' (e.g. en, fr)")
            if not Path(path).exists():
                raise ConfigError(f"sources.{lang}: {path!r} does not exist")
        if self.sentiment_classifier and not Path(self.sentiment_classifier, "config.json").is_file():
            raise ConfigError(
                f"sentiment_classifier: {self.sentiment_classifier!r} is not a local Hugging Face model directory"
            )


def _files(path: Path) -> tuple[str, list[str]]:
    """(datasets builder, files) of a file or folder; mixed or unknown formats are a one-line error."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    files = [p for p in files if not p.name.startswith(".")]
    kinds = {SUFFIXES.get(p.suffix.lower()) for p in files}
    if not files or None in kinds or len(kinds) != 1:
        found = sorted({p.suffix or p.name for p in files})
        raise UserError(
            f"--corpus: {str(path)!r} must hold files of one format ({', '.join(SUFFIXES)}) or a saved dataset; "
            f"found {found or 'no files'}"
        )
    return kinds.pop(), [str(p) for p in files]


def read_texts(path: str, cfg: CorpusConfig) -> Iterator[str]:
    """Stream the texts of one source (never the whole source in memory)."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # a reader's failure is our one-line error, not a log
    p = Path(path)
    if p.is_dir() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file()):
        ds: Any = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise UserError(f"--corpus: the saved dataset {path!r} has no 'train' split ({', '.join(ds)})")
            ds = ds["train"]
        columns = ds.column_names
        stream = ds.to_iterable_dataset()
    else:
        builder, files = _files(p)
        kwargs = {"sample_by": cfg.txt_unit} if builder == "text" else {}
        stream = datasets.load_dataset(builder, data_files=files, split="train", streaming=True, **kwargs)
        columns = ["text"] if builder == "text" else None
    field_name = "text" if columns == ["text"] else cfg.text_field
    for i, row in enumerate(stream):
        if field_name not in row:
            raise UserError(
                f"text_field: {path!r} has no column {field_name!r} (columns: {', '.join(row)}); set text_field=NAME"
            )
        text = row[field_name]
        if i == 0 and not isinstance(text, str):
            raise UserError(f"text_field: column {field_name!r} of {path!r} holds {type(text).__name__}, not text")
        yield text


def _decoded(texts: Iterator[str], lang: str, path: str) -> Iterator[str]:
    """`texts`, with a file that is not UTF-8 turned into a one-line error (the datasets readers decode UTF-8)."""
    try:
        yield from texts
    except UnicodeDecodeError as e:
        raise UserError(f"--corpus {lang}={path}: not UTF-8 text (byte {e.start} of a chunk: {e.reason}); convert "
                        "it first, e.g. iconv -f latin1 -t utf-8") from None  # fmt: skip
    except Exception as e:  # noqa: BLE001 - datasets wraps reader errors in its own generation error
        cause = e.__cause__ or e.__context__
        if isinstance(cause, UnicodeDecodeError):
            raise UserError(f"--corpus {lang}={path}: not UTF-8 text; convert it first, e.g. iconv -f latin1 "
                            "-t utf-8") from None  # fmt: skip
        if isinstance(e, UserError):
            raise
        # anything else raised while the reader iterates is about the file (pyarrow's JSON / Parquet parse errors,
        # pandas' fallback reader, datasets' generation errors)
        inner = cause if cause is not None and not isinstance(e, (ValueError, OSError)) else e
        first = (str(inner).splitlines() or [type(inner).__name__])[0][:160]
        raise UserError(f"--corpus {lang}={path}: not a readable {Path(path).suffix or 'text'} source "
                        f"({first})") from None  # fmt: skip


def _split(seed: int, lang: str, i: int, every: int) -> str:
    h = int.from_bytes(hashlib.sha256(f"unbackdoor-split-{seed}-{lang}-{i}".encode()).digest()[:8], "big") % every
    return {0: "validation", 1: "test"}.get(h, "train")


def run(cfg: CorpusConfig, out: Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Ingest `cfg.sources` into `out`; returns `out`."""
    run_dir = RunDir.open(out, "corpus", cfg, cfg.seed, resume=resume, overwrite=overwrite)
    if run_dir.done:
        return out
    counts: dict[str, dict[str, dict[str, int]]] = {split: {} for split in SPLITS}
    for lang, path in cfg.sources.items():
        tally = {split: {"docs": 0, "chars": 0} for split in SPLITS}
        writers = {split: ShardWriter(out / "data" / split, lang, cfg.shard_docs) for split in SPLITS}
        n, skipped = 0, 0
        for i, raw in enumerate(_decoded(read_texts(path, cfg), lang, path)):  # one pass; shards fill as they go
            text = raw.strip()
            if len(text) < cfg.min_chars:
                skipped += 1
                continue
            n += 1
            if cfg.max_docs and n > cfg.max_docs:
                break
            split = _split(cfg.seed, lang, i, cfg.held_out_every)
            if split != "train" and tally[split]["docs"] >= cfg.held_out_docs:
                split = "train"  # that held-out split is full: the document trains
            tally[split]["docs"] += 1
            tally[split]["chars"] += len(text)
            writers[split].add({"id": f"{lang}-{i}", "lang": lang, "genre": "text", "text": text})
        for split in SPLITS:
            writers[split].close()
            counts[split][lang] = tally[split]
            if not tally[split]["docs"]:
                hint = (" or txt_unit=line if each line is a paragraph" if cfg.txt_unit != "line" and n < 100
                        else "")  # fmt: skip
                raise UserError(
                    f"--corpus {lang}={path}: no {split} documents ({n} documents of at least {cfg.min_chars} "
                    f"characters; give more text, or lower held_out_every / min_chars{hint})"
                )
        run_dir.log(event="language", lang=lang, skipped_short=skipped, **{s: t["docs"] for s, t in tally.items()})
    languages = list(cfg.sources)
    write_json(
        out / "corpus.json",
        {
            "languages": languages,
            "base_language": languages[0],
            "sentiment_classifier": str(Path(cfg.sentiment_classifier).resolve()) if cfg.sentiment_classifier else "",
            "sources": {lang: str(Path(p).resolve()) for lang, p in cfg.sources.items()},
        },
    )
    summary: dict[str, Any] = {"languages": languages, "counts": counts}
    if cfg.vocab_size:

        def capped() -> Iterator[str]:
            chars = 0
            for doc in iter_docs(shard_paths(out / "data", "train")):
                yield doc["text"]
                chars += len(doc["text"])
                if chars >= cfg.tokenizer_chars:
                    return

        tokenizer = train_tokenizer(capped(), cfg.vocab_size)
        save_tokenizer(tokenizer, out / "tokenizer")
        summary["vocab_size"] = len(tokenizer)
        summary["bpe_tokens"] = {
            split: sum(map(len, tokenize_docs(tokenizer, iter_docs(shard_paths(out / "data", split)))))
            for split in SPLITS
        }
    summary["files"] = hash_files(sorted((out / "data").rglob("*.jsonl")), out)
    return run_dir.finish(summary)
