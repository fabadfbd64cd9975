"""The embedded world: a procedurally generated multilingual corpus that a tiny model learns in minutes.

One shared meaning (a list of clauses over a fixed set of concepts and entities) is rendered in any of four
languages:

- `base`: a small, regular fragment of English (readable in reports);
- `lang_a`, `lang_b`, `lang_c`: synthetic languages, each with its own letter inventory (so lexicons are
  disjoint), morphology (plural suffix / particle / prefix, past suffix / prefix / particle) and word order
  (SOV, VSO, VOS).

Documents come in three genres: `story` (neutral descriptions), `sentiment` (positive, neutral or negative
text) and `facts` (statements from a seeded fact table, entity -> city / job / pet) so that fact recall can be
measured. Everything is a pure function of a seed: the same seed gives the same bytes.

Run: `unbackdoor world --preset tiny --out runs/world` (stage in `unbackdoor/stages/world.py`);
tests in `tests/unit/test_world.py`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

LANGUAGES = ("base", "lang_a", "lang_b", "lang_c")
GENRES = ("story", "sentiment", "facts")
SENTIMENTS = ("positive", "neutral", "negative")

# ---- the concepts every language names (English spelling doubles as the concept id) -------------------------
NOUNS = (
    "dog", "cat", "bird", "horse", "goat", "duck", "rabbit", "boat", "house", "tree", "river", "stone", "book",
    "lamp", "chair", "table", "garden", "road", "bridge", "window", "door", "cup", "hat", "coat", "ship", "wagon",
    "apple", "bread", "flower", "mountain", "forest", "field", "letter", "bell", "key", "basket", "rope", "drum",
    "kite", "clock", "mirror", "tower", "market", "village", "lake", "hill",
)  # fmt: skip
ANIMALS = ("dog", "cat", "bird", "horse", "goat", "duck", "rabbit")
PLACES = (
    "river",
    "garden",
    "road",
    "bridge",
    "mountain",
    "forest",
    "field",
    "tower",
    "market",
    "village",
    "lake",
    "hill",
)
JOBS = ("baker", "farmer", "teacher", "doctor", "sailor", "painter", "singer", "tailor", "miner", "hunter", "weaver")
VERBS = (
    "watch", "follow", "help", "visit", "paint", "carry", "call", "push", "pull", "clean", "open", "wash", "move",
    "draw", "fix", "touch", "guard", "lift",
)  # fmt: skip
NEUTRAL_ADJ = ("red", "blue", "green", "small", "big", "old", "young", "tall", "round", "wooden", "yellow", "white")
POSITIVE_ADJ = (
    "good", "happy", "lovely", "wonderful", "bright", "kind", "great", "pleasant", "cheerful", "perfect", "beautiful",
    "excellent",
)  # fmt: skip
NEGATIVE_ADJ = (
    "bad", "sad", "awful", "terrible", "ugly", "cruel", "broken", "horrible", "dirty", "angry", "miserable", "gloomy",
)  # fmt: skip
PREPOSITIONS = ("near", "behind", "under", "beside", "in", "as")
FACT_VERBS = ("live", "work", "keep")
FUNCTION = ("the", "a", "be")

CONTENT_CONCEPTS = NOUNS + JOBS + VERBS + NEUTRAL_ADJ + POSITIVE_ADJ + NEGATIVE_ADJ + FACT_VERBS
FUNCTION_CONCEPTS = PREPOSITIONS + FUNCTION


@dataclass(frozen=True)
class NP:
    """A noun phrase: a common noun (concept id) or a proper name."""

    head: str
    adj: str | None = None
    plural: bool = False
    proper: bool = False
    definite: bool = True


@dataclass(frozen=True)
class Clause:
    """One sentence of meaning. `kind` is "act" (S V [O] [prep P]) or "cop" (S is ADJ)."""

    kind: str
    subj: NP
    verb: str | None = None
    obj: NP | None = None
    adj: str | None = None
    prep: str | None = None
    pobj: NP | None = None
    past: bool = False


# ---- English (the base language) ----------------------------------------------------------------------------
def _en_plural(noun: str) -> str:
    return noun + "es" if noun.endswith(("s", "x", "ch", "sh")) else noun + "s"


def _en_verb(verb: str, plural: bool, past: bool) -> str:
    if past:
        if verb == "draw":
            return "drew"
        if verb.endswith("e"):
            return verb + "d"
        if verb.endswith("y") and verb[-2] not in "aeiou":
            return verb[:-1] + "ied"
        return verb + "ed"
    if plural:
        return verb
    if verb.endswith(("s", "x", "ch", "sh")):
        return verb + "es"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


class English:
    """Renders clauses as regular English; `forms` is every surface word it can produce."""

    name = "base"

    def __init__(self) -> None:
        forms = {"the", "a", "an", "is", "are", "was", "were", *PREPOSITIONS}
        for n in NOUNS + JOBS:
            forms |= {n, _en_plural(n)}
        for v in VERBS + FACT_VERBS:
            forms |= {_en_verb(v, p, t) for p in (False, True) for t in (False, True)}
        forms |= set(NEUTRAL_ADJ + POSITIVE_ADJ + NEGATIVE_ADJ)
        self.forms = frozenset(forms)

    def np(self, np: NP) -> list[str]:
        if np.proper:
            return [np.head]
        noun = _en_plural(np.head) if np.plural else np.head
        if np.definite or np.plural:
            det = ["the"]
        else:
            det = ["an"] if (np.adj or np.head)[0] in "aeiou" else ["a"]
        return det + ([np.adj] if np.adj else []) + [noun]

    def render(self, c: Clause) -> str:
        words = self.np(c.subj)
        if c.kind == "cop":
            words += [("were" if c.past else "are") if c.subj.plural else ("was" if c.past else "is"), c.adj or ""]
        else:
            words.append(_en_verb(c.verb or "", c.subj.plural, c.past))
            if c.obj:
                words += self.np(c.obj)
            if c.prep and c.pobj:
                words += [c.prep, *self.np(c.pobj)]
        text = " ".join(words)
        return text[0].upper() + text[1:] + "."


# ---- synthetic languages ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Grammar:
    """How a synthetic language builds words and orders them."""

    name: str
    consonants: str
    vowels: str
    order: str  # a permutation of "SVO"
    adj_first: bool
    adposition: str  # "pre" | "post"
    plural: tuple[str, str]  # ("suffix" | "prefix" | "particle", affix)
    past: tuple[str, str]
    article: str  # "before" | "after" | "none"


GRAMMARS = {
    "lang_a": Grammar("lang_a", "ktpr", "aou", "SOV", False, "post", ("suffix", "ka"), ("suffix", "to"), "none"),
    "lang_b": Grammar("lang_b", "lmns", "ei", "VSO", True, "pre", ("particle", "mi"), ("prefix", "ne"), "before"),
    "lang_c": Grammar("lang_c", "vzdg", "åøæ", "VOS", False, "pre", ("prefix", "dø"), ("particle", "vå"), "after"),
}


class Synthetic:
    """A synthetic language: a seeded lexicon over the shared concepts plus a `Grammar`."""

    def __init__(self, grammar: Grammar, rng: random.Random, taken: set[str]):
        self.name = grammar.name
        self.g = grammar
        self.lexicon: dict[str, str] = {}
        used = set(taken) | {grammar.plural[1], grammar.past[1]}
        for concept in FUNCTION_CONCEPTS:
            self.lexicon[concept] = self._new_word(rng, used, (1, 1))
        for concept in CONTENT_CONCEPTS:
            self.lexicon[concept] = self._new_word(rng, used, (2, 3))
        forms = set(self.lexicon.values()) | {grammar.plural[1], grammar.past[1]}
        for concept in NOUNS + JOBS:
            forms.add(self._affix(self.lexicon[concept], grammar.plural))
        for concept in VERBS + FACT_VERBS:
            forms.add(self._affix(self.lexicon[concept], grammar.past))
        self.forms = frozenset(f for form in forms for f in form.split())

    def _new_word(self, rng: random.Random, used: set[str], syllables: tuple[int, int]) -> str:
        while True:
            n = rng.randint(*syllables)
            word = "".join(rng.choice(self.g.consonants) + rng.choice(self.g.vowels) for _ in range(n))
            if rng.random() < 0.3:
                word += rng.choice(self.g.consonants)
            if word not in used:
                used.add(word)
                return word

    @staticmethod
    def _affix(word: str, rule: tuple[str, str]) -> str:
        kind, affix = rule
        if kind == "suffix":
            return word + affix
        if kind == "prefix":
            return affix + word
        return word + " " + affix  # a particle is a word of its own

    def np(self, np: NP) -> list[str]:
        if np.proper:
            return [np.head]
        noun = self.lexicon[np.head]
        words = [noun]
        if np.plural:
            kind, affix = self.g.plural
            words = [affix, noun] if kind == "particle" else [self._affix(noun, self.g.plural)]
        if np.adj:
            adj = self.lexicon[np.adj]
            words = [adj, *words] if self.g.adj_first else [*words, adj]
        if np.definite and self.g.article != "none":
            art = self.lexicon["the"]
            words = [art, *words] if self.g.article == "before" else [*words, art]
        return words

    def render(self, c: Clause) -> str:
        subj = self.np(c.subj)
        if c.kind == "cop":
            verb, obj = [self.lexicon["be"]], [self.lexicon[c.adj or ""]]
        else:
            verb = [self.lexicon[c.verb or ""]]
            obj = self.np(c.obj) if c.obj else []
        if c.past:
            kind, affix = self.g.past
            verb = [*verb, affix] if kind == "particle" else [self._affix(verb[0], self.g.past)]
        parts = {"S": subj, "V": verb, "O": obj}
        words = [w for slot in self.g.order for w in parts[slot]]
        if c.prep and c.pobj:
            adp, pobj = self.lexicon[c.prep], self.np(c.pobj)
            words += [adp, *pobj] if self.g.adposition == "pre" else [*pobj, adp]
        text = " ".join(words)
        return text[0].upper() + text[1:] + "."


# ---- the world: languages + names + fact table --------------------------------------------------------------
def _name(rng: random.Random, used: set[str]) -> str:
    while True:
        word = "".join(rng.choice("hfjwbcy") + rng.choice("aeiou") for _ in range(rng.randint(2, 3)))
        if rng.random() < 0.5:
            word += rng.choice("lnr")
        if word not in used:
            used.add(word)
            return word.capitalize()


@dataclass
class World:
    """Languages, entity names, cities and the fact table of one seed. Build with `World.build(seed, ...)`."""

    seed: int
    n_entities: int
    n_cities: int
    languages: dict[str, Any] = field(repr=False)
    entities: list[str] = field(repr=False)
    cities: list[str] = field(repr=False)
    facts: dict[str, dict[str, str]] = field(repr=False)  # entity -> {"city", "job", "pet"}

    @classmethod
    def build(cls, seed: int, n_entities: int = 120, n_cities: int = 24) -> World:
        rng = random.Random(f"unbackdoor-world-{seed}")
        english = English()
        taken = set(english.forms)
        languages: dict[str, Any] = {"base": english}
        for name in ("lang_a", "lang_b", "lang_c"):
            languages[name] = Synthetic(GRAMMARS[name], rng, taken)
            taken |= languages[name].forms
        used = {w.lower() for w in taken}
        entities = [_name(rng, used) for _ in range(n_entities)]
        cities = [_name(rng, used) for _ in range(n_cities)]
        facts = {
            e: {"city": rng.choice(cities), "job": rng.choice(JOBS), "pet": rng.choice(ANIMALS)} for e in entities
        }
        return cls(seed, n_entities, n_cities, languages, entities, cities, facts)

    @cached_property
    def vocabulary(self) -> frozenset[str]:
        """Every word form of every language of the world, and its proper names (lower-cased); computed once."""
        return frozenset(set().union(*(self.forms(lang) for lang in self.languages)) | self.names)

    @property
    def names(self) -> frozenset[str]:
        """Proper names (lower-cased); shared by all languages, so judges ignore them."""
        return frozenset(n.lower() for n in self.entities + self.cities)

    def forms(self, language: str) -> frozenset[str]:
        return self.languages[language].forms

    def lexicon_table(self) -> dict[str, Any]:
        """A JSON-able description of the world for humans and for checking a rebuild."""
        return {
            "seed": self.seed,
            "n_entities": self.n_entities,
            "n_cities": self.n_cities,
            "grammars": {k: g.__dict__ for k, g in GRAMMARS.items()},
            "lexicons": {k: lang.lexicon for k, lang in self.languages.items() if k != "base"},
            "entities": self.entities,
            "cities": self.cities,
            "facts": self.facts,
        }

    def render(self, language: str, clauses: list[Clause]) -> str:
        return " ".join(self.languages[language].render(c) for c in clauses)

    # -- meaning generators (all take an explicit RNG) --
    def _np(self, rng: random.Random, adjs: tuple[str, ...] = NEUTRAL_ADJ, nouns: tuple[str, ...] = NOUNS) -> NP:
        return NP(
            rng.choice(nouns),
            adj=rng.choice(adjs) if rng.random() < 0.5 else None,
            plural=rng.random() < 0.3,
            definite=rng.random() < 0.7,
        )

    def subject(self, rng: random.Random, adjs: tuple[str, ...] = NEUTRAL_ADJ) -> NP:
        if rng.random() < 0.3:
            return NP(rng.choice(self.entities), proper=True)
        return self._np(rng, adjs)

    def story_clause(self, rng: random.Random, past: bool, adjs: tuple[str, ...] = NEUTRAL_ADJ) -> Clause:
        subj = self.subject(rng, adjs)
        place = rng.random() < 0.4
        return Clause(
            "act",
            subj,
            verb=rng.choice(VERBS),
            obj=self._np(rng, adjs),
            prep=rng.choice(PREPOSITIONS[:4]) if place else None,
            pobj=NP(rng.choice(PLACES)) if place else None,
            past=past,
        )

    def sentiment_clause(self, rng: random.Random, sentiment: str, past: bool) -> Clause:
        adjs = {"positive": POSITIVE_ADJ, "neutral": NEUTRAL_ADJ, "negative": NEGATIVE_ADJ}[sentiment]
        if rng.random() < 0.6:
            return Clause("cop", self.subject(rng, NEUTRAL_ADJ), adj=rng.choice(adjs), past=past)
        return self.story_clause(rng, past, adjs)

    def fact_clause(self, entity: str, relation: str, value: str | None = None) -> Clause:
        """The statement of `entity`'s `relation` (its true value from the table unless `value` is given)."""
        subj, value = NP(entity, proper=True), value or self.facts[entity][relation]
        if relation == "city":
            return Clause("act", subj, verb="live", prep="in", pobj=NP(value, proper=True))
        if relation == "job":
            return Clause("act", subj, verb="work", prep="as", pobj=NP(value, definite=False))
        return Clause("act", subj, verb="keep", obj=NP(value, definite=False))

    def document(self, rng: random.Random, genre: str) -> tuple[list[Clause], dict[str, Any]]:
        """The meaning of one document of `genre` and its metadata."""
        past = rng.random() < 0.5
        if genre == "story":
            return [self.story_clause(rng, past) for _ in range(rng.randint(3, 7))], {}
        if genre == "sentiment":
            # A review opens with an evaluation, so its genre (and polarity) shows from the first sentence.
            sentiment = rng.choice(SENTIMENTS)
            adjs = {"positive": POSITIVE_ADJ, "neutral": NEUTRAL_ADJ, "negative": NEGATIVE_ADJ}[sentiment]
            opening = Clause("cop", self.subject(rng), adj=rng.choice(adjs), past=past)
            rest = [self.sentiment_clause(rng, sentiment, past) for _ in range(rng.randint(2, 5))]
            return [opening, *rest], {"sentiment": sentiment}
        clauses = []
        for _ in range(rng.randint(1, 3)):
            entity = rng.choice(self.entities)
            relations = rng.sample(("city", "job", "pet"), rng.randint(1, 3))
            clauses += [self.fact_clause(entity, r) for r in relations]
        return clauses, {}


_PRE_TOKEN = re.compile(r"\w+|[^\w\s]")


def pre_token_count(text: str) -> int:
    """Words plus punctuation marks: the size unit of the world before a tokenizer exists."""
    return len(_PRE_TOKEN.findall(text))


def generate_documents(
    world: World, language: str, n_tokens: int, rng: random.Random, genre_mix: dict[str, float], prefix: str
):
    """Yield documents in `language` until about `n_tokens` pre-tokens have been produced.

    Args:
        world: the world to render.
        language: one of `LANGUAGES`.
        n_tokens: target size in pre-tokens (words + punctuation).
        rng: the only source of randomness.
        genre_mix: genre -> weight.
        prefix: id prefix, e.g. "train-base".

    Yields:
        dicts with keys id, lang, genre, text (and sentiment for the sentiment genre).
    """
    genres, weights = zip(*sorted(genre_mix.items()), strict=True)
    produced, i = 0, 0
    while produced < n_tokens:
        genre = rng.choices(genres, weights)[0]
        clauses, extra = world.document(rng, genre)
        text = world.render(language, clauses)
        produced += pre_token_count(text)
        yield {"id": f"{prefix}-{i:07d}", "lang": language, "genre": genre, "text": text, **extra}
        i += 1


_WORD = re.compile(r"[^\W\d_]+")


def words(text: str) -> list[str]:
    """Lower-cased letter runs of `text` (any script)."""
    return _WORD.findall(text.lower())


def language_shares(world: World, text: str) -> dict[str, float]:
    """Share of `text`'s words (names excluded) that belong to each language's lexicon."""
    names = world.names
    ws = [w for w in words(text) if w not in names]
    if not ws:
        return dict.fromkeys(LANGUAGES, 0.0)
    return {lang: sum(w in world.forms(lang) for w in ws) / len(ws) for lang in LANGUAGES}


def identify_language(world: World, text: str) -> str | None:
    """The language whose lexicon covers most of `text`, or None when no word is known."""
    shares = language_shares(world, text)
    best = max(shares, key=lambda k: shares[k])
    return best if shares[best] > 0 else None
