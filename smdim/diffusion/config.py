"""The `diffusion` section of params.yaml: forward (masking) process and loss weighting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class DiffusionConfig:
    T: int = 1024  # number of discrete diffusion steps; training draws t in 1..T, fed as t/T (paper: 1024)
    # MaskGIT's recipe (cosine, uniform) samples better here than the likelihood-optimal MDLM one
    # (linear, elbo), though its ELBO is worse: docs/sampling_study.md, seventh round.
    schedule: Literal["linear", "cosine"] = "cosine"  # mask probability m(t): t | 1 - cos(pi t / 2)
    weighting: Literal["elbo", "reweighted", "uniform"] = "uniform"  # loss weight w(t), see schedule.py
    low_discrepancy: bool = True  # stratify the batch's t over [0, 1] (lower-variance loss, MDLM)

    def __post_init__(self) -> None:
        if self.T < 1:
            raise ValueError(f"T must be >= 1, got {self.T}")
