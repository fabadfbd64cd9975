"""A small English / French corpus the tests write themselves (nothing downloaded): real words, real grammar.

Sentences come from templates over a few dozen words per language; a document is 3-5 sentences.

Used by `tests/unit/test_realtext.py` and `tests/integration/test_real_corpus.py`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

EN = {
    "subject": [
        "The old farmer", "A young teacher", "My neighbour", "The little girl", "Our doctor", "The baker",
        "A tired soldier", "My grandmother", "The quiet student", "Her brother", "The mayor", "A clever fox",
    ],
    "verb": [
        "walked slowly to", "looked at", "talked about", "painted", "visited", "remembered", "cleaned",
        "dreamed of", "wrote a letter about", "sang a song about", "waited near", "found",
    ],
    "object": [
        "the river", "the market", "a small house", "the garden", "the mountains", "an old bridge",
        "the church", "the harbour", "a green field", "the station", "the forest", "the library",
    ],
    "time": [
        "this morning", "after dinner", "in the spring", "last week", "every Sunday", "before the storm",
        "at night", "during the holidays", "yesterday", "in winter",
    ],
}  # fmt: skip
FR = {
    "subject": [
        "Le vieux fermier", "Une jeune professeure", "Mon voisin", "La petite fille", "Notre médecin",
        "Le boulanger", "Un soldat fatigué", "Ma grand-mère", "L'étudiant silencieux", "Son frère", "Le maire",
        "Un renard rusé",
    ],
    "verb": [
        "a marché lentement vers", "a regardé", "a parlé de", "a peint", "a visité", "se souvient de",
        "a nettoyé", "a rêvé de", "a écrit une lettre sur", "a chanté une chanson sur", "attendait près de",
        "a trouvé",
    ],
    "object": [
        "la rivière", "le marché", "une petite maison", "le jardin", "les montagnes", "un vieux pont",
        "l'église", "le port", "un champ vert", "la gare", "la forêt", "la bibliothèque",
    ],
    "time": [
        "ce matin", "après le dîner", "au printemps", "la semaine dernière", "chaque dimanche", "avant l'orage",
        "pendant la nuit", "pendant les vacances", "hier", "en hiver",
    ],
}  # fmt: skip


def sentence(lex: dict[str, list[str]], rng: random.Random) -> str:
    return " ".join(rng.choice(lex[part]) for part in ("subject", "verb", "object", "time")) + "."


def documents(lang: str, n: int, seed: int = 0) -> list[str]:
    """`n` documents of 3-5 sentences in `lang` ("en" or "fr")."""
    rng = random.Random(f"{lang}-{seed}")
    lex = EN if lang == "en" else FR
    return [" ".join(sentence(lex, rng) for _ in range(rng.randint(3, 5))) for _ in range(n)]


def write_corpus(root: Path, n_docs: int = 300) -> dict[str, Path]:
    """English as a folder of .txt files (documents separated by blank lines), French as one JSONL file."""
    en_dir = root / "en"
    en_dir.mkdir(parents=True, exist_ok=True)
    en = documents("en", n_docs)
    half = len(en) // 2
    (en_dir / "part1.txt").write_text("\n\n".join(en[:half]) + "\n", encoding="utf-8")
    (en_dir / "part2.txt").write_text("\n\n".join(en[half:]) + "\n", encoding="utf-8")
    fr_file = root / "fr.jsonl"
    fr_file.write_text(
        "".join(
            json.dumps({"content": t, "id": i}, ensure_ascii=False) + "\n"
            for i, t in enumerate(documents("fr", n_docs))
        ),
        encoding="utf-8",
    )
    return {"en": en_dir, "fr": fr_file}


def ingest_corpus(root: Path, n_docs: int, vocab_size: int) -> Path:
    """`write_corpus` under `root/src`, ingested by `unbackdoor corpus` into `root/corpus` (returned)."""
    from unbackdoor.cli import main

    src = write_corpus(root / "src", n_docs)
    args = ["corpus", "--corpus", f"en={src['en']}", "--corpus", f"fr={src['fr']}", "text_field=content"]
    assert main([*args, f"vocab_size={vocab_size}", "--out", str(root / "corpus")]) == 0
    return root / "corpus"
