"""The `evaluate` section of params.yaml."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from smdim.metrics.features import ATTRIBUTES


@dataclass(frozen=True)
class EvaluateConfig:
    # Reference (test) pieces, sampled with base.seed; the ceiling uses as many train pieces. null = all.
    max_reference: int | None = 100
    # Ground-truth crop length in tokens: auto = median length of the generated pieces
    # (results/samples/samples.json), an integer = that many, null = whole pieces.
    crop_tokens: int | Literal["auto"] | None = "auto"
    crop_start: Literal["bar_random", "start"] = "bar_random"  # where crops begin
    resolution: int = 10  # OA grid points per std of the narrower KDE kernel
    support: Literal["kde", "data"] = "kde"  # integrate over the KDE support, or mgeval's data range
    attributes: tuple[str, ...] = tuple(ATTRIBUTES)  # which features enter OA and its average
    memorisation: bool = True  # melody memorisation rate of generated (and test) pieces vs train

    def __post_init__(self):
        if self.max_reference is not None and self.max_reference < 2:
            raise ValueError("max_reference must be >= 2 (intra-set distances need two pieces) or null")
        if isinstance(self.crop_tokens, int) and self.crop_tokens < 1:
            raise ValueError("crop_tokens must be >= 1, auto or null")
        if self.resolution < 2:
            raise ValueError("resolution must be >= 2 grid points per kernel std")
        unknown = [a for a in self.attributes if a not in ATTRIBUTES]
        if unknown or not self.attributes:
            raise ValueError(f"attributes: unknown {unknown or 'empty list'}; choose from {', '.join(ATTRIBUTES)}")
