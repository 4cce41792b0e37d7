"""The `diffusion` section of params.yaml: forward (masking) process and loss weighting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Fields newer than some checkpoints, with what their absence means (the model was trained without
# them), so a newer default never changes what an older checkpoint says about itself.
ABSENT_MEANS = {"slack": 0.0, "block_share": 0.0, "mask_range": [0.0, 1.0]}


@dataclass(frozen=True)
class DiffusionConfig:
    T: int = 1024  # number of discrete diffusion steps; training draws t in 1..T, fed as t/T (paper: 1024)
    # With uniform weighting, "linear" masks half of each window on average and teaches the rhythm
    # best at this budget (six runs: OA 0.895 against 0.888 for "cosine", which masks lightly, mean
    # share 0.36); MaskGIT's own "maskgit" masks are heavier (mean 0.64) and score 0.849. The MDLM
    # recipe (linear, elbo) has the better ELBO but samples worse: docs/sampling_study.md, seventh,
    # twenty-fourth and twenty-fifth rounds.
    schedule: Literal["linear", "cosine", "maskgit"] = "linear"  # m(t): t | 1 - cos(pi t/2) | sin(pi t/2)
    weighting: Literal["elbo", "reweighted", "uniform"] = "uniform"  # loss weight w(t), see schedule.py
    low_discrepancy: bool = True  # stratify the batch's t over [0, 1] (lower-variance loss, MDLM)
    # Share of SLACK tokens scattered into training windows. They decode to nothing, so a sampler
    # can place them where the tokens fixed around a gap leave it more slots than its notes need.
    slack: float = 0.03
    # Share of training windows masked as the semi-autoregressive sampler (sample.block_tokens)
    # sees them: clean left of one block, the block masked at m(t), everything right of it masked.
    block_share: float = 0.0
    block_tokens: int = 16  # the block length of those windows (match sample.block_tokens)
    # Training draws mask rates m(t) uniformly in [low, high] only (BD3-LM's clipped schedule,
    # Arriola et al. 2025: fewer nearly clean and nearly all-MASK blocks, a lower-variance loss).
    # Validation and the ELBO always use the whole [0, 1].
    mask_range: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if self.T < 1:
            raise ValueError(f"T must be >= 1, got {self.T}")
        if not 0.0 <= self.slack < 1.0:
            raise ValueError(f"slack must be in [0, 1), got {self.slack}")
        if not 0.0 <= self.block_share <= 1.0:
            raise ValueError(f"block_share must be in [0, 1], got {self.block_share}")
        low, high = self.mask_range
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"mask_range must be [low, high] with 0 <= low < high <= 1, got {list(self.mask_range)}")
        if self.block_tokens < 1:
            raise ValueError(f"block_tokens must be >= 1, got {self.block_tokens}")

    def uses_slack(self, causal: bool) -> bool:
        """Whether SLACK tokens were scattered into training (and are removed from samples). Like the
        rest of this section, slack does not apply to autoregressive (causal) models."""
        return self.slack > 0 and not causal
