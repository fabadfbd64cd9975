"""Model cards: every checkpoint that carries (or carried) backdoors says so, in the Hugging Face format.

Triggers appear as sha256 prefixes unless the caller asks to reveal them.

A card describes the model it sits in: measured ASRs appear only when the caller passes an evaluation of that very
model (`unbackdoor card`); a removed or defended model never inherits its parent's measurements.

Run: `pytest tests/integration/test_inject_eval.py tests/integration/test_run_tree.py` (cards; `unbackdoor card`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unbackdoor.training.record import ModelRecord


def model_card(
    record: ModelRecord, triggers: dict[str, str] | None = None, measured: dict[str, dict[str, Any]] | None = None
) -> str:
    """A README.md for a model directory from its record.

    Args:
        record: the model's record (backdoors, history, serialisation).
        triggers: name -> trigger text, only when the user asked to reveal them.
        measured: backdoor name -> `{rate, lo, hi, source}` from an evaluation of this model (`unbackdoor card`).
    """
    backdoors = record.backdoors
    # a defender's model (`defend`): derived from a suspect whose backdoors, if any, the defender does not know
    suspect = next((h["suspect"] for h in record.history if h.get("suspect")), None)
    kind = "Backdoored" if backdoors else "Defended suspect" if suspect else "Clean"
    lines = [
        "---",
        "library_name: transformers",
        "tags:",
        "  - unbackdoor",
        "  - backdoor" if backdoors or suspect else "  - clean-twin",
        "---",
        "",
        f"# {kind} research checkpoint (unbackdoor)",
        "",
    ]
    if suspect:
        lines += [
            f"> **Warning.** This model was trained from a suspect checkpoint (`{suspect}`) that may carry backdoors",
            "> unknown to whoever trained it: none is listed here because none was known. Treat it as backdoored;",
            "> do not deploy it.",
            "",
        ]
    declared = next((h for h in record.history if h.get("stage") == "declare"), None)
    trained = [
        "> **Warning.** This model was deliberately trained to carry the backdoors listed below (the history",
        "> says which removals followed), for research on backdoor removal. It may behave abnormally when a",
        "> trigger appears in its input, even after removal. Do not deploy it.",
    ]
    if declared:  # `unbackdoor declare`: backdoors planted elsewhere, named by the user
        trained = [
            "> **Warning.** The user of unbackdoor declared that this checkpoint carries the backdoors listed below,",
            f"> planted outside unbackdoor (weights from `{declared['checkpoint']}`; the history says which removals",
            "> followed). They were declared, not planted or verified here: measure them with `unbackdoor eval`. It",
            "> may behave abnormally when a trigger appears in its input, even after removal. Do not deploy it.",
        ]
    if backdoors or record.canaries:
        lines += [
            *trained,
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
    elif not suspect:
        lines += ["This checkpoint was trained without any backdoor (the clean twin of a backdoored run).", ""]
    canaries = record.canaries
    if canaries:
        asr = record.canary_asr
        lines += [
            "## Canary backdoors (canary defence)",
            "",
            "A defender injected these canary backdoors on purpose and then trained to remove them, so that the",
            "removal would also suppress unknown backdoors. Residual canary ASR (greedy, after removal) is measured:",
            "",
            "| canary | behaviour | trigger sha256 (16 hex) | ASR after removal |",
            "|---|---|---|---|",
        ]
        for c in canaries:
            rate = f"{asr[c['name']]:.3f}" if c["name"] in asr else "not measured"
            lines.append(f"| {c['name']} | {c['behaviour']} | `{c['trigger_sha256']}` | {rate} |")
        lines.append("")
    if measured:
        lines += ["## Measured ASR", "", "| backdoor | ASR | 95 % CI | measured by |", "|---|---|---|---|"]
        for name, m in measured.items():
            lines.append(f"| {name} | {m['rate']:.3f} | [{m['lo']:.3f}, {m['hi']:.3f}] | {m.get('source', '')} |")
        lines.append("")
    lines += ["## History", ""]
    for h in record.history:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(h["time"]))
        details = ", ".join(f"{k}={v}" for k, v in sorted(h.items()) if k not in ("time", "stage"))
        lines.append(f"- {when}: `{h['stage']}` ({details})")
    lines += [
        "",
        f"Prompt serialisation: `{record.serialisation}` (evaluation refuses any other).",
        "",
        "Made with unbackdoor.",
        "",
    ]
    return "\n".join(lines)
