"""The `diffusion` section of params.yaml: forward (masking) process and loss weighting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class DiffusionConfig:
    T: int = 1024  # number of discrete diffusion steps; training draws t in 1..T, fed as t/T (paper: 1024)
    schedule: Literal["linear", "cosine"] = "linear"  # mask probability m(t): t | 1 - cos(pi t / 2)
    weighting: Literal["elbo", "reweighted", "uniform"] = "elbo"  # loss weight w(t), see schedule.py
    low_discrepancy: bool = True  # stratify the batch's t over [0, 1] (lower-variance loss, MDLM)

    def __post_init__(self) -> None:
        if self.T < 1:
            raise ValueError(f"T must be >= 1, got {self.T}")
