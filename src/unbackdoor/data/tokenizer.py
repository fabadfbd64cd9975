"""A byte-level BPE tokenizer trained on a corpus with HF `tokenizers`, saved for `AutoTokenizer`.

Byte-level pre-tokenisation with no normaliser means every string (any script, any trigger) round-trips
encode -> decode exactly.

Run: `pytest tests/unit/test_tokenizer.py`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts`.

    Args:
        texts: training text, streamed.
        vocab_size: total vocabulary size, special tokens included.

    Returns:
        A fast tokenizer with bos/eos/pad tokens; `encode` adds no special tokens (stages add them explicitly).
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_batched(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, clean_up_tokenization_spaces=False
    )


def _batched(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for t in texts:
        batch.append(t)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    """Save as a directory that `AutoTokenizer.from_pretrained(path)` loads."""
    tokenizer.save_pretrained(str(path))
