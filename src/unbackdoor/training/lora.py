"""LoRA adapters for the training stages (`inject`, `remove` and the sweeps that run it): PEFT's, merged into the
weights before a model is saved, so every checkpoint on disk is a plain model with no adapter to lose.

Run: `pytest tests/integration/test_inject_eval.py tests/integration/test_remove_transfer.py -k lora`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from unbackdoor.running.config import UserError


@dataclass
class LoraConfig:
    r: int = field(default=0, metadata={"min": 0})  # 0: train all weights
    alpha: int = field(default=32, metadata={"min": 1})
    dropout: float = field(default=0.0, metadata={"min": 0.0, "max": 0.9})
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    # also train the embedding rows (tied output rows included) of the tokens the backdoors' triggers and poisoned
    # continuations use (PEFT trainable tokens): a payload made of tokens the clean model never emits (a refusal,
    # gibberish) cannot be reached through the linear layers' adapters alone
    train_tokens: bool = False


def linear_module_names(model: torch.nn.Module) -> set[str]:
    """Short names of the model's linear layers (what LoRA `target_modules` may name)."""
    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def check_lora_targets(model: torch.nn.Module, cfg: LoraConfig) -> None:
    """Unknown LoRA target module names are a one-line error listing the valid ones."""
    valid = linear_module_names(model) - {"lm_head"}
    for name in cfg.target_modules:
        if name != "all-linear" and name not in valid:
            raise UserError(
                f"lora.target_modules: {name!r} is not a linear module of this model; valid: all-linear, "
                + ", ".join(sorted(valid))
            )


def wrap_lora(model: torch.nn.Module, cfg: LoraConfig, token_ids: list[int] | None = None) -> torch.nn.Module:
    """A PEFT LoRA model (plus trainable embedding rows of `token_ids`, when given)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    check_lora_targets(model, cfg)
    targets = "all-linear" if "all-linear" in cfg.target_modules else list(cfg.target_modules)
    peft_cfg = PeftLoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, task_type="CAUSAL_LM",
        trainable_token_indices=token_ids or None,
    )  # fmt: skip
    return get_peft_model(model, peft_cfg)
