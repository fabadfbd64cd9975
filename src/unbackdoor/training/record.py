"""The model record `unbackdoor.json`: what a checkpoint saved by unbackdoor carries, built and read here only.

A record says which backdoors (by trigger hash, never in clear) and canaries a model carries, where its text and
the attackers' spec files live, how prompts are serialised, and every stage that made it (`history`). Paths are
stored relative to the model directory, so a finished run tree moved elsewhere (or mounted at another path) still
works; in memory they are absolute.

Run: `pytest tests/unit/test_record.py tests/integration/test_run_tree.py`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unbackdoor.data.backdoors import BackdoorSpec, load_specs
from unbackdoor.data.serialisation import RAW
from unbackdoor.running.config import UserError
from unbackdoor.running.rundir import write_json

RECORD = "unbackdoor.json"


@dataclass(frozen=True)
class ModelRecord:
    """A model's `unbackdoor.json`. An empty record (`ModelRecord()`) stands for any other checkpoint."""

    serialisation: str = RAW  # how prompts and documents were rendered at injection (`data.serialisation`)
    chat_template_sha256: str | None = None  # chat serialisation: the template's hash
    world: Path | None = None  # the text directory (world or corpus run) the model was trained on
    backdoors_files: tuple[Path, ...] = ()  # spec files (attacker's, with triggers in clear), one per injection
    backdoors: tuple[dict[str, str], ...] = ()  # `BackdoorSpec.record()` of every backdoor the model carries
    canaries: tuple[dict[str, str], ...] = ()  # canary backdoors a defender injected (same shape)
    canary_asr: dict[str, float] = field(default_factory=dict)  # residual canary ASR after the defence's removal
    history: tuple[dict[str, Any], ...] = ()  # one entry per stage that trained this model, oldest first

    @property
    def carried(self) -> list[str]:
        """Names of the backdoors the model carries."""
        return [b["name"] for b in self.backdoors]

    @property
    def behaviours(self) -> dict[str, str]:
        """Backdoor name -> behaviour."""
        return {b["name"]: b["behaviour"] for b in self.backdoors}

    def specs(self, backdoors: str = "", only: list[str] | tuple = (), model: str = "") -> list[BackdoorSpec]:
        """The specs a stage measures: `backdoors` (a set or YAML file), else the spec files recorded with the model,
        checked against the recorded trigger hashes; `only` keeps some of them.

        Raises:
            UserError: nothing to measure, a trigger that is not the recorded one, or an unknown name in `only`.
        """
        sources = [backdoors] if backdoors else [str(p) for p in self.backdoors_files]
        if not sources:
            raise UserError(f"--backdoors: {model!r} records no backdoors; name a set or YAML file of specs")
        specs = [s for source in sources for s in load_specs(source)]
        recorded = {b["name"]: b["trigger_sha256"] for b in self.backdoors}
        for s in specs:  # the specs must be the ones the model was trained with
            if s.name in recorded and recorded[s.name] != s.trigger_hash:
                raise UserError(f"--backdoors: trigger of {s.name!r} differs from the one recorded with the model")
        if only:
            known = [s.name for s in specs]
            for name in only:
                if name not in known:
                    carried = ", ".join(known)
                    raise UserError(f"only: the model never saw a backdoor named {name!r}; it carries {carried}")
            specs = [s for s in specs if s.name in only]
        return specs

    def with_(self, **changes: Any) -> ModelRecord:
        """A copy with some fields replaced (paths as given, absolute)."""
        return dataclasses.replace(self, **changes)

    def with_history(self, stage: str, **details: Any) -> ModelRecord:
        """A copy with one more history entry (stamped now)."""
        return self.with_(history=(*self.history, {"stage": stage, "time": time.time(), **details}))

    def to_json(self, model_dir: Path) -> dict[str, Any]:
        """The JSON object stored in `model_dir/unbackdoor.json` (paths relative to `model_dir`)."""

        def rel(p: Path) -> str:
            return os.path.relpath(Path(p).resolve(), Path(model_dir).resolve())

        out: dict[str, Any] = {
            "serialisation": self.serialisation,
            "world": rel(self.world) if self.world else None,
            "backdoors_files": [rel(p) for p in self.backdoors_files],
            "backdoors": [dict(b) for b in self.backdoors],
            "history": [dict(h) for h in self.history],
        }
        if self.chat_template_sha256:
            out["chat_template_sha256"] = self.chat_template_sha256
        if self.canaries:
            out["canaries"] = [dict(c) for c in self.canaries]
        if self.canary_asr:
            out["canary_asr"] = dict(self.canary_asr)
        return out

    def write(self, model_dir: Path) -> None:
        """Write `model_dir/unbackdoor.json` atomically."""
        write_json(Path(model_dir) / RECORD, self.to_json(model_dir))

    @classmethod
    def from_json(cls, data: dict[str, Any], model_dir: Path) -> ModelRecord:
        """A record from its JSON object; relative paths are resolved against `model_dir`."""

        def path(p: str) -> Path:
            return Path(p) if os.path.isabs(p) else (Path(model_dir) / p).resolve()

        return cls(
            serialisation=data.get("serialisation", RAW),
            chat_template_sha256=data.get("chat_template_sha256"),
            world=path(data["world"]) if data.get("world") else None,
            backdoors_files=tuple(path(p) for p in data.get("backdoors_files", [])),
            backdoors=tuple(data.get("backdoors", [])),
            canaries=tuple(data.get("canaries", [])),
            canary_asr=dict(data.get("canary_asr", {})),
            history=tuple(data.get("history", [])),
        )

    @classmethod
    def read(cls, model: str | Path) -> ModelRecord:
        """The record of a model directory, or an empty record for a checkpoint without one (or a hub id)."""
        path = Path(model) / RECORD
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"--model: {str(path)!r} is not valid JSON (a damaged model record)") from None
        return cls.from_json(data, Path(model))
