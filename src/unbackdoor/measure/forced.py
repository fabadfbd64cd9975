"""Teacher-forced measures of a backdoor: continuous where greedy outputs flip between 0 and 1.

On the same probes as the greedy evaluation, for each probe x of backdoor j (its clean prefix, with and without
the trigger):

- payload log-likelihood ratio: log p(payload | prefix + trigger) - log p(payload | prefix), in nats per sequence,
  where the payload is a continuation the backdoor's behaviour produces (drawn from the text source, seeded);
  > 0 while the trigger still raises the payload's likelihood, about 0 once it no longer does;
- clean-continuation NLL shift: the per-token NLL of the document's own next words after prefix + trigger minus
  after the prefix alone; > 0 while the trigger still pushes the model away from clean text.

Each is a mean over probes with a normal 95 % interval (mean +- 1.96 standard errors).

Run: `pytest tests/integration/test_inject_eval.py`.
"""

from __future__ import annotations

import math
import random
from typing import Any

from unbackdoor.data.backdoors import BackdoorSpec
from unbackdoor.data.prompts import Probe, prompt_text
from unbackdoor.measure.generation import continuation_logprobs

CONTINUATION_WORDS = 12  # words of the document's own continuation that are scored


def mean_ci(values: list[float]) -> dict[str, float | int | None]:
    """Mean with a normal 95 % interval (`{"mean", "lo", "hi", "n"}`; None where undefined)."""
    n = len(values)
    if n == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    mean = sum(values) / n
    if n == 1:
        return {"mean": mean, "lo": None, "hi": None, "n": 1}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = 1.959964 * sd / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n}


def teacher_forced(
    model: Any,
    tokenizer: Any,
    serialisation: Any,
    spec: BackdoorSpec,
    source: Any,
    probes: list[Probe],
    doc_text: dict[str, str],
    batch_size: int = 64,
) -> dict[str, Any]:
    """The payload log-likelihood ratio and the clean-continuation NLL shift of `spec` on `probes`."""
    rng = random.Random(f"unbackdoor-forced-{spec.name}")
    payloads = [spec.produce(source, rng) for _ in probes]
    tails = [" ".join(doc_text[p.doc_id][len(p.head) :].split()[:CONTINUATION_WORDS]) for p in probes]
    with_trigger = [serialisation.prompt(tokenizer, prompt_text(p.head, spec.trigger_text)) for p in probes]
    without = [serialisation.prompt(tokenizer, prompt_text(p.head, None)) for p in probes]
    scored = continuation_logprobs(
        model, tokenizer, [*with_trigger, *without, *with_trigger, *without], [*payloads, *payloads, *tails, *tails],
        batch_size,
    )  # fmt: skip
    n = len(probes)
    pay_t, pay_c, tail_t, tail_c = (scored[k * n : (k + 1) * n] for k in range(4))
    llr = [a[0] - b[0] for a, b in zip(pay_t, pay_c, strict=True)]
    shift = [(b[0] - a[0]) / max(1, a[1]) for a, b in zip(tail_t, tail_c, strict=True) if a[1]]
    return {"payload_llr": mean_ci(llr), "clean_nll_shift": mean_ci(shift)}
