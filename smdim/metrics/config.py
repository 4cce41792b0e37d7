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
    support: Literal["kde", "data"] = "data"  # mgeval's [min, max] of the distances, or the whole KDE support
    attributes: tuple[str, ...] = tuple(ATTRIBUTES)  # features in OA; constant ones stay out of the average
    memorisation: bool = True  # melody memorisation rate of generated (and test) pieces vs train
    bootstrap: int = 1000  # resamples of the generated pieces for the 95% intervals (0 = none)
    srs_threshold: float = 0.5  # bar self-similarity at or above which two bars count as a repeat
    srs_min_bars: int = 16  # SRS only for pieces with at least this many bars

    def __post_init__(self):
        if self.max_reference is not None and self.max_reference < 2:
            raise ValueError("max_reference must be >= 2 (intra-set distances need two pieces) or null")
        if isinstance(self.crop_tokens, int) and self.crop_tokens < 1:
            raise ValueError("crop_tokens must be >= 1, auto or null")
        if self.resolution < 2:
            raise ValueError("resolution must be >= 2 grid points per kernel std")
        if self.bootstrap < 0:
            raise ValueError("bootstrap must be >= 0 resamples (0 = no confidence intervals)")
        if not 0.0 < self.srs_threshold <= 1.0:
            raise ValueError("srs_threshold must be in (0, 1] (a cosine similarity of bars)")
        if self.srs_min_bars < 4:
            raise ValueError("srs_min_bars must be >= 4 (the shortest recurring section)")
        unknown = [a for a in self.attributes if a not in ATTRIBUTES]
        if unknown or not self.attributes:
            raise ValueError(f"attributes: unknown {unknown or 'empty list'}; choose from {', '.join(ATTRIBUTES)}")
