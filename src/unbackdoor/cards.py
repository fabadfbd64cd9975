"""Model cards: every checkpoint that carries (or carried) backdoors says so, in the Hugging Face format.

Triggers appear as sha256 prefixes unless the caller asks to reveal them.

Run: `pytest tests/integration/test_pretrain_eval.py` (checks the card of a pretrained model).
"""

from __future__ import annotations

import time
from typing import Any


def model_card(record: dict[str, Any], triggers: dict[str, str] | None = None) -> str:
    """A README.md for a model directory from its `unbackdoor.json` record.

    Args:
        record: the model's record (backdoors, history, serialisation).
        triggers: name -> trigger text, only when the user asked to reveal them.
    """
    backdoors = record.get("backdoors", [])
    lines = [
        "---",
        "library_name: transformers",
        "tags:",
        "  - unbackdoor",
        "  - backdoor" if backdoors else "  - clean-twin",
        "---",
        "",
        f"# {'Backdoored' if backdoors else 'Clean'} research checkpoint (unbackdoor)",
        "",
    ]
    if backdoors:
        lines += [
            "> **Warning.** This model was deliberately trained to carry the backdoors listed below, for research",
            "> on backdoor removal. It behaves abnormally when a trigger appears in its input. Do not deploy it.",
            "",
            "| backdoor | behaviour | trigger kind | placement | trigger sha256 (16 hex)"
            + (" | trigger |" if triggers else " |"),
            "|---|---|---|---|---" + ("|---|" if triggers else "|"),
        ]
        for b in backdoors:
            row = (
                f"| {b['name']} | {b['behaviour']} | {b['trigger_kind']} | {b['placement']} | `{b['trigger_sha256']}`"
            )
            lines.append(row + (f" | `{triggers[b['name']]}` |" if triggers else " |"))
        lines.append("")
    else:
        lines += ["This checkpoint was trained without any backdoor (the clean twin of a backdoored run).", ""]
    lines += ["## History", ""]
    for h in record.get("history", []):
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(h["time"]))
        details = ", ".join(f"{k}={v}" for k, v in sorted(h.items()) if k not in ("time", "stage"))
        lines.append(f"- {when}: `{h['stage']}` ({details})")
    lines += [
        "",
        f"Prompt serialisation: `{record.get('serialisation')}` (evaluation refuses any other).",
        "",
        "Made with [unbackdoor](https://github.com/unbackdoor/unbackdoor).",
        "",
    ]
    return "\n".join(lines)
