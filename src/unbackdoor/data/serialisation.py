"""How text becomes model input: raw text (`raw-v1`) or the model's chat template (`chat-v1`).

Injection records the serialisation in the model's `unbackdoor.json` (for chat, with the sha256 of the template);
evaluation, removal, CASD and the defence read it back and serialise prompts and training documents the same way.
A model whose tokenizer's template changed since injection is refused: the numbers would measure another input.

- `raw-v1`: a document is its text; a prompt is the text before the insertion point, a space, the trigger.
- `chat-v1`: a document is one user turn and one assistant turn rendered by the tokenizer's chat template. For a
  poisoned or removal document the user turn is the text up to and including the trigger (`prompt_chars`) and
  the assistant turn is the continuation; a clean document is cut after its first sentence (or in the middle).
  A prompt is the user turn with the generation prompt appended.

Run: `pytest tests/unit/test_serialisation.py`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from unbackdoor.running.config import UserError

RAW, CHAT = "raw-v1", "chat-v1"
MODES = {"raw": RAW, "chat": CHAT}


def template_sha256(tokenizer: Any) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one is used
        template = template.get("default")
    return hashlib.sha256(template.encode("utf-8")).hexdigest()[:16] if template else None


def _split_clean(text: str) -> int:
    end = text.find(". ")
    if end > 0:
        return end + 1
    spaces = [i for i, ch in enumerate(text) if ch == " "]
    return spaces[len(spaces) // 2] if spaces else len(text)


@dataclass(frozen=True)
class Serialisation:
    """One of `RAW` / `CHAT`; `template` is the chat template's sha256 prefix (chat only)."""

    name: str = RAW
    template: str | None = None

    @classmethod
    def choose(cls, mode: str, tokenizer: Any, what: str = "serialisation") -> Serialisation:
        """The serialisation an injection uses: `raw`, or `chat` (the tokenizer must have a chat template)."""
        if mode not in MODES:
            raise UserError(f"{what}: {mode!r} is not one of {', '.join(MODES)}")
        if mode == "raw":
            return cls(RAW)
        sha = template_sha256(tokenizer)
        if sha is None:
            raise UserError(f"{what}: chat needs a tokenizer with a chat template; this model's has none (use raw)")
        return cls(CHAT, sha)

    @classmethod
    def of(cls, record: Any, tokenizer: Any, what: str = "--model") -> Serialisation:
        """The serialisation recorded with a model (its `ModelRecord`), checked against its tokenizer."""
        name = record.serialisation
        if name not in (RAW, CHAT):
            raise UserError(f"{what}: trained with serialisation {name!r}; this version knows {RAW!r} and {CHAT!r}")
        if name == RAW:
            return cls(RAW)
        recorded, current = record.chat_template_sha256, template_sha256(tokenizer)
        if recorded != current:
            raise UserError(
                f"{what}: injected with the chat template {recorded}, but its tokenizer now has "
                f"{current or 'none'}; evaluate with the tokenizer the backdoors were injected with"
            )
        return cls(CHAT, recorded)

    def record(self) -> dict[str, Any]:
        """What a model's `unbackdoor.json` keeps."""
        return {"serialisation": self.name, **({"chat_template_sha256": self.template} if self.template else {})}

    def _chat(self, tokenizer: Any, user: str, assistant: str | None) -> str:
        messages = [{"role": "user", "content": user}]
        if assistant is None:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        messages.append({"role": "assistant", "content": assistant})
        return tokenizer.apply_chat_template(messages, tokenize=False)

    def prompt(self, tokenizer: Any, text: str) -> str:
        """An evaluation prompt (raw text up to and including the trigger) as the model saw such input."""
        return text if self.name == RAW else self._chat(tokenizer, text, None)

    def document(self, tokenizer: Any) -> Callable[[dict[str, Any]], str] | None:
        """The function from a training document to its text (None for raw: the text itself)."""
        if self.name == RAW:
            return None

        def render(doc: dict[str, Any]) -> str:
            text = doc["text"]
            cut = doc.get("prompt_chars") or _split_clean(text)
            return self._chat(tokenizer, text[:cut].strip(), text[cut:].strip())

        return render
