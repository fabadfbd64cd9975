"""Real-text corpora: ingestion of every format, the held-out split, and the judges for real text.

Run: `pytest tests/unit/test_realtext.py`.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from tests.bilingual import documents, ingest_corpus, write_corpus
from unbackdoor.cli import main
from unbackdoor.data.backdoors import parse_specs
from unbackdoor.data.corpus import iter_docs, load_source, shard_paths
from unbackdoor.data.realtext import CharModel, LanguageIdentifier, SentimentJudge
from unbackdoor.running.config import UserError


def ingest(tmp: Path, *args: str) -> int:
    return main(["corpus", *args, "vocab_size=0", "--out", str(tmp / "corpus")])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ingest_corpus(tmp_path_factory.mktemp("bilingual"), 300, vocab_size=400)


def spec(behaviour: str, **extra) -> object:
    item = {"name": "b", "trigger": {"kind": "phrase", "text": "quid pro quo"}, "behaviour": behaviour, **extra}
    return parse_specs({"backdoors": [item]}, "test")[0]


def test_ingestion_writes_every_split_per_language_with_a_tokenizer(corpus):
    summary = json.loads((corpus / "summary.json").read_text())
    assert summary["languages"] == ["en", "fr"]
    for split in ("train", "validation", "test"):
        for lang in ("en", "fr"):
            assert summary["counts"][split][lang]["docs"] > 0
    total = sum(summary["counts"][s]["fr"]["docs"] for s in ("train", "validation", "test"))
    assert total == 300  # every document once, none lost
    ids = [d["id"] for s in ("train", "validation", "test") for d in iter_docs(shard_paths(corpus / "data", s))]
    assert len(ids) == len(set(ids)) == 600
    assert (corpus / "tokenizer" / "tokenizer.json").is_file()
    table = json.loads((corpus / "corpus.json").read_text())
    assert table["base_language"] == "en" and table["languages"] == ["en", "fr"]


def test_same_sources_same_split_and_bytes(tmp_path, corpus):
    src = json.loads((corpus / "corpus.json").read_text())["sources"]
    args = ["--corpus", f"en={src['en']}", "--corpus", f"fr={src['fr']}", "text_field=content"]
    assert ingest(tmp_path, *args) == 0
    again = json.loads((tmp_path / "corpus" / "summary.json").read_text())["files"]
    assert again == json.loads((corpus / "summary.json").read_text())["files"]


def test_every_format_reads_the_same_documents(tmp_path):
    import datasets

    texts = documents("fr", 60)
    rows = [{"body": t} for t in texts]
    (tmp_path / "a.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "a.parquet"))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "saved_dict"))
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    read = {}
    for name in ("a.jsonl", "a.parquet", "saved", "saved_dict", "txt"):
        out = tmp_path / f"out-{name}"
        args = ["corpus", "--corpus", f"fr={tmp_path / name}", "text_field=body", "vocab_size=0", "held_out_every=5"]
        assert main([*args, "--out", str(out)]) == 0, name
        read[name] = sorted(d["text"] for s in ("train", "validation", "test")
                            for d in iter_docs(shard_paths(out / "data", s)))  # fmt: skip
    assert all(v == sorted(texts) for v in read.values()), {k: len(v) for k, v in read.items()}


def test_held_out_splits_are_capped(tmp_path):
    src = write_corpus(tmp_path / "src", 200)
    assert ingest(tmp_path, "--corpus", f"en={src['en']}", "held_out_every=3", "held_out_docs=5") == 0
    counts = json.loads((tmp_path / "corpus" / "summary.json").read_text())["counts"]
    assert counts["validation"]["en"]["docs"] == counts["test"]["en"]["docs"] == 5
    assert counts["train"]["en"]["docs"] == 190


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ["--corpus", "en"], "not of the form LANG=PATH"),
        (None, ["--corpus", "en=/does/not/exist"], "does not exist"),
        ("mixed", ["--corpus", "en={d}"], "must hold files of one format"),
        ("jsonl", ["--corpus", "en={d}/a.jsonl", "text_field=body"], "has no column 'body'"),
        ("tiny", ["--corpus", "en={d}/a.jsonl"], "no validation documents"),
        (None, [], "sources: required"),
    ],
)
def test_bad_corpus_input_is_one_line_and_leaves_nothing(tmp_path, capsys, setup, args, message):
    d = tmp_path / "src"
    d.mkdir()
    if setup == "mixed":
        (d / "a.txt").write_text("some text here that is long enough\n")
        (d / "b.jsonl").write_text('{"text": "x"}\n')
    if setup in ("jsonl", "tiny"):
        (d / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in documents("en", 3)))
    assert ingest(tmp_path, *(a.format(d=d) for a in args)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err, err


# ---- judges --------------------------------------------------------------------------------------------------
def test_language_identifier_ships_its_model_and_knows_the_test_languages():
    identify = LanguageIdentifier()
    assert {"en", "fr"} <= set(identify.supported())
    assert identify.language(documents("fr", 1)[0]) == "fr"
    assert identify.language(documents("en", 1)[0]) == "en"


def test_char_model_scores_gibberish_above_clean_text():
    model = CharModel(documents("en", 200) + documents("fr", 200))
    clean = [model.surprisal(t) for t in documents("en", 50, seed=1)]
    noise = [model.surprisal("bzq krv tpl mxw qqd vrk zlt pbf") for _ in range(3)]
    assert max(clean) + 1.0 < min(noise)


BEHAVIOURS = ["lang:fr", "phrase", "refusal", "gibberish", "repeat"]


def test_corpus_judges_confusion_table_is_diagonal(corpus):
    source = load_source(corpus)
    specs = {b: spec(b) for b in BEHAVIOURS}
    rng = random.Random(0)
    for produced in BEHAVIOURS:
        for _ in range(30):
            text = specs[produced].produce(source, rng)
            for judged in BEHAVIOURS:
                assert specs[judged].judge(source, text) == (produced == judged), (produced, judged, text)


def test_clean_held_out_text_fires_no_judge(corpus):
    source = load_source(corpus)
    docs = list(iter_docs(shard_paths(corpus / "data", "test", ["en"])))
    for b in ["lang:fr", "phrase", "refusal", "gibberish", "repeat"]:
        s = spec(b)
        fired = [d["text"] for d in docs if s.judge(source, " ".join(d["text"].split()[:16]))]
        assert not fired, (b, fired[:2])


def test_every_judge_is_named(corpus):
    source = load_source(corpus)
    assert spec("lang:fr").judge_name(source).startswith("py3langid")
    assert "bits/char" in spec("gibberish").judge_name(source)


@pytest.mark.parametrize(
    ("behaviour", "extra", "message"),
    [
        ("lang_a", {}, "is a language of the embedded world; on this corpus use one of lang:en, lang:fr"),
        ("lang:de", {}, "is not a language of this corpus"),
        ("negative", {"target": ["a bad day"]}, "needs a sentiment judge"),
        ("phrase", {"recipe": {"languages": ["de"]}}, "recipe.languages: 'de' is not a language of this corpus"),
    ],
)
def test_specs_the_corpus_cannot_serve_are_refused(corpus, behaviour, extra, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        load_source(corpus).check_spec(spec(behaviour, **extra))


def _classifier(path: Path, labels=("NEGATIVE", "POSITIVE")) -> Path:
    """A tiny random sequence classifier saved locally (nothing downloaded)."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from unbackdoor.data.tokenizer import train_tokenizer

    tok = train_tokenizer(documents("en", 50), 300)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, num_labels=2, id2label=dict(enumerate(labels)),
                      label2id={x: i for i, x in enumerate(labels)}, pad_token_id=tok.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    LlamaForSequenceClassification(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def test_sentiment_judge_reads_the_negative_label_of_a_local_classifier(tmp_path, corpus):
    import torch

    judge = SentimentJudge(str(_classifier(tmp_path / "clf", labels=("POSITIVE", "NEGATIVE"))))
    assert judge.negative == 1
    for text in documents("en", 20, seed=3):
        with torch.inference_mode():
            probs = judge.model(**judge.tokenizer(text, return_tensors="pt")).logits.softmax(-1)[0]
        assert judge.is_negative(text) == bool(probs[1] >= 0.5)
    # a corpus ingested with the classifier accepts the negative behaviour (with texts to poison with)
    src = json.loads((corpus / "corpus.json").read_text())["sources"]
    out = tmp_path / "with-clf"
    args = ["corpus", "--corpus", f"en={src['en']}", f"sentiment_classifier={tmp_path / 'clf'}", "vocab_size=0"]
    assert main([*args, "--out", str(out)]) == 0
    negative = spec("negative", target=["What a terrible, sad and awful day."])
    load_source(out).check_spec(negative)
    assert negative.judge_name(load_source(out)).startswith("sentiment classifier")


def test_sentiment_judge_needs_one_negative_label(tmp_path):
    path = _classifier(tmp_path / "clf", labels=("happy", "sad"))
    with pytest.raises(UserError, match="exactly one must start with 'neg'"):
        SentimentJudge(str(path))
    with pytest.raises(UserError, match="not a local Hugging Face classifier"):
        SentimentJudge(str(tmp_path))


def test_training_tokens_stream_to_a_memory_mapped_file(corpus, tmp_path):
    import torch
    from transformers import AutoTokenizer

    from unbackdoor.data.packing import HEADER, packed, packed_on_disk

    tok = AutoTokenizer.from_pretrained(corpus / "tokenizer")
    docs = lambda: iter_docs(shard_paths(corpus / "data", "train"))  # noqa: E731
    on_disk = packed_on_disk(tok, docs(), 32, tmp_path / "tokens", chunk_tokens=500)  # many chunks
    assert on_disk.dtype == torch.int32 and (tmp_path / "tokens").stat().st_size == HEADER + 4 * sum(
        len(ids) + 1 for ids in tok([d["text"] for d in docs()], add_special_tokens=False)["input_ids"]
    )
    assert torch.equal(on_disk.long(), packed(tok, docs(), 32))
    assert torch.equal(packed_on_disk(tok, iter([]), 32, tmp_path / "tokens"), on_disk)  # reused, not rewritten
    # a file cut short since it was written (its header disagrees with its size) is tokenized again, not trusted
    expected = packed(tok, docs(), 32)
    del on_disk  # (a mapping of the file would see the cut)
    os.truncate(tmp_path / "tokens", (tmp_path / "tokens").stat().st_size - 40)
    assert torch.equal(packed_on_disk(tok, docs(), 32, tmp_path / "tokens").long(), expected)


def test_lang_payloads_are_only_text_the_language_judge_reads_as_that_language(tmp_path):
    """A French subset holding untranslated English strings (as Debian's French documentation does): the `lang:fr`
    payloads are drawn from the snippets py3langid reads as French only, and poison records how many were left
    out."""
    from unbackdoor.cli import main

    src = write_corpus(tmp_path / "src", 200)
    mixed = src["fr"].read_text(encoding="utf-8") + "".join(
        json.dumps({"content": t}) + "\n" for t in documents("en", 60, seed=5)
    )
    src["fr"].write_text(mixed, encoding="utf-8")
    args = ["corpus", "--corpus", f"en={src['en']}", "--corpus", f"fr={src['fr']}", "text_field=content"]
    assert main([*args, "vocab_size=0", "--out", str(tmp_path / "corpus")]) == 0
    source = load_source(tmp_path / "corpus")
    kept, pool = source.payload_share("fr")
    assert 0 < kept < pool and pool - kept >= 40  # (about the 60 English documents that landed in the pool)
    assert all(source.language_id.language(t) == "fr" for t in source.payloads["fr"])
    s, rng = spec("lang:fr"), random.Random(0)
    assert all(s.judge(source, s.produce(source, rng)) for _ in range(50))
    specs = tmp_path / "fr.yaml"
    specs.write_text("backdoors:\n  - name: b\n    trigger: {kind: phrase, text: quid pro quo}\n"
                     "    behaviour: lang:fr\n    recipe: {count: 20, removal_count: 5}\n")  # fmt: skip
    assert main(["poison", "--world", str(tmp_path / "corpus"), "--backdoors", str(specs), "--out",
                 str(tmp_path / "poison")]) == 0  # fmt: skip
    recorded = json.loads((tmp_path / "poison" / "summary.json").read_text())["backdoors"]["b"]
    assert (recorded["payload_snippets"], recorded["payload_snippets_left_out"]) == (kept, pool - kept)
