"""Noise schedules of absorbing diffusion: mask probability m(t), loss weight w(t), time draws.

Time is continuous, t in [0, 1] (t = 0 clean, t = 1 all MASK); training draws a discrete step
k in 1..T and uses t = k / T, so the discrete-time process of D3PM/SCHmUBERT is the continuous one
evaluated on a grid.

Loss weights (applied per masked token to -log p(x0 | x_t), then summed and divided by the number
of real tokens):
- "elbo": w(t) = m'(t) / m(t), the continuous-time NELBO of absorbing diffusion (MDLM, Sahoo et
  al. 2024, eq. 10, written with alpha_t = 1 - m(t): -alpha'_t / (1 - alpha_t)). For the linear
  schedule m(t) = t this is 1/t, exactly the discrete D3PM absorbing bound
  sum_k (1/k) CE_k = T E_k[(T/k) CE_k] (Austin et al. 2021; Bond-Taylor et al. 2022).
- "reweighted": w(t) = 1 - t, the reweighted ELBO of Unleashing Transformers (Bond-Taylor et al.
  2022), which SCHmUBERT (Plasser et al. 2023) trains with: (1 - k/T) * sum CE / #tokens.
- "uniform": w(t) = 1, plain masked-token cross-entropy (every masked token counts the same).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from smdim.diffusion.config import DiffusionConfig


@dataclass(frozen=True)
class Schedule:
    """m(t), w(t) and the training-time draw of t for one DiffusionConfig."""

    cfg: DiffusionConfig

    @property
    def T(self) -> int:
        return self.cfg.T

    def mask_prob(self, t: Tensor) -> Tensor:
        """Probability m(t) that a token is MASK at time t in [0, 1]."""
        t = t.clamp(0.0, 1.0)
        if self.cfg.schedule == "linear":
            return t
        if self.cfg.schedule == "maskgit":
            return torch.sin(0.5 * math.pi * t)
        return 1.0 - torch.cos(0.5 * math.pi * t)

    def mask_prob_rate(self, t: Tensor) -> Tensor:
        """Derivative m'(t)."""
        if self.cfg.schedule == "linear":
            return torch.ones_like(t)
        if self.cfg.schedule == "maskgit":
            return 0.5 * math.pi * torch.cos(0.5 * math.pi * t)
        return 0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def time_of(self, p: Tensor) -> Tensor:
        """Inverse of mask_prob: the time t at which the mask probability is p in [0, 1]."""
        p = p.clamp(0.0, 1.0)
        if self.cfg.schedule == "linear":
            return p
        if self.cfg.schedule == "maskgit":
            return torch.arcsin(p) * (2.0 / math.pi)
        return torch.arccos(1.0 - p) * (2.0 / math.pi)

    def loss_weight(self, t: Tensor) -> Tensor:
        """Per-masked-token weight w(t) of the cross-entropy (see module docstring)."""
        if self.cfg.weighting == "uniform":
            return torch.ones_like(t)
        if self.cfg.weighting == "reweighted":
            return 1.0 - t
        # t >= 1/T during training, so the 1/t singularity at 0 is never reached.
        return self.mask_prob_rate(t) / self.mask_prob(t).clamp_min(1e-12)

    def sample_t(
        self, batch_size: int, *, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
    ) -> Tensor:
        """Draw t = k/T with k uniform in 1..T (mask rates uniform in mask_range), one per sequence:
        (B,) float."""
        u = torch.rand(batch_size, generator=generator, device=device)  # (B,)
        if self.cfg.low_discrepancy:
            # One uniform offset, then evenly spaced: still uniform marginally, lower variance.
            offsets = torch.arange(batch_size, device=device, dtype=u.dtype) / batch_size
            u = (u[:1] / batch_size + offsets) % 1.0
        low, high = self.cfg.mask_range
        if (low, high) != (0.0, 1.0):
            # Uniform mask rates in [low, high]: the times whose m(t) lies there, on the same grid.
            u = self.time_of(low + u * (high - low))
        k = (u * self.T).floor().clamp(0, self.T - 1) + 1  # 1..T
        return k / self.T

    def for_validation(self) -> Schedule:
        """This schedule without training's mask_range: validation losses cover all of [0, 1], so
        they compare between runs."""
        return Schedule(dataclasses.replace(self.cfg, mask_range=(0.0, 1.0)))


def make_schedule(cfg: DiffusionConfig) -> Schedule:
    """The schedule object for `cfg` (mask_prob, loss_weight, sample_t)."""
    return Schedule(cfg)
