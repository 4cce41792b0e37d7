"""Equal wall-clock budgets: `train.steps` that makes one arm train for about `budget_s` seconds here."""

from __future__ import annotations

import logging
from typing import Any

from smdim.config import build
from smdim.model.config import ModelConfig
from smdim.training.config import TrainConfig
from smdim.training.speed import step_seconds


def steps_for_budget(params: dict, arm: dict[str, Any], budget_s: float, vocab_size: int,
                     log: logging.Logger | None = None, label: str = "") -> int:
    """Steps for `budget_s` seconds of training of `arm` (section.key overrides on top of params) on
    this machine, from a measured step time; never fewer than the warm-up + 1."""
    sections = {name: dict(params.get(name) or {}) for name in ("model", "train")}
    for key, value in arm.items():
        section, _, field = key.partition(".")
        if section in sections:
            sections[section][field] = value
    train_cfg = build(TrainConfig, sections["train"], "train")
    model_cfg = build(ModelConfig, {**sections["model"], "vocab_size": vocab_size}, "model")
    s = step_seconds(model_cfg, train_cfg)
    steps = max(int(budget_s / s), train_cfg.warmup_steps + 1)
    if log is not None:
        log.info("%s: %.3f s/step -> %d steps for %.0f s", label, s, steps, budget_s)
    return steps
