"""Token-level refinement after the transposed convolution (diffusion denoisers only).

With stride s, every group of s tokens is predicted from one coarse vector: a masked token sees
its neighbours' identities only through what the strided conv squeezed into that vector. A
refinement layer mixes the upsampled features over a window of `kernel` tokens at full
resolution (depthwise conv, then a position-wise MLP), so the prediction for a masked Pitch can
read the Position and Pitch tokens decoded right next to it. Cost: O(L * D * kernel), small next
to the blocks.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class TokenRefiner(nn.Module):
    """x + MLP(LN(depthwise_conv(x))): (B, L, D) -> (B, L, D), centred window of `kernel` tokens."""

    def __init__(self, d_model: int, kernel: int, mult: int = 2) -> None:
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(d_model, d_model, kernel_size=kernel, groups=d_model)
        self.norm = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, mult * d_model), nn.GELU(), nn.Linear(mult * d_model, d_model))

    def forward(self, x: Tensor, pad_mask: Tensor | None) -> Tensor:
        """x: (B, L, D); pad_mask: (B, L) True = real token (padding contributes zeros)."""
        left = (self.kernel - 1) // 2
        h = F.pad(x.transpose(1, 2), (left, self.kernel - 1 - left))  # (B, D, L + kernel - 1)
        h = self.conv(h).transpose(1, 2)  # (B, L, D)
        out = x + self.mlp(self.norm(h))
        return out if pad_mask is None else out * pad_mask[..., None]
