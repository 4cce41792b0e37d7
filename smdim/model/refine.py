"""Token-level refinement after the transposed convolution.

With stride s, every group of s tokens is predicted from one coarse vector: a masked token sees
its neighbours' identities only through what the strided conv squeezed into that vector. A
refinement layer mixes the upsampled features over a window of `kernel` tokens at full
resolution (depthwise conv, then a position-wise MLP), so the prediction for a masked Pitch can
read the Position and Pitch tokens decoded right next to it. Cost: O(L * D * kernel), small next
to the blocks. A diffusion model's window is centred; an autoregressive model's ends at the
token itself (causal), and `step` runs it one token at a time.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class TokenRefiner(nn.Module):
    """x + MLP(LN(depthwise_conv(x))): (B, L, D) -> (B, L, D) over a window of `kernel` tokens."""

    def __init__(self, d_model: int, kernel: int, causal: bool = False, mult: int = 2) -> None:
        super().__init__()
        self.kernel = kernel
        self.left = kernel - 1 if causal else (kernel - 1) // 2  # window: i - left .. i - left + kernel - 1
        self.conv = nn.Conv1d(d_model, d_model, kernel_size=kernel, groups=d_model)
        self.norm = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, mult * d_model), nn.GELU(), nn.Linear(mult * d_model, d_model))

    def forward(self, x: Tensor, pad_mask: Tensor | None) -> Tensor:
        """x: (B, L, D); pad_mask: (B, L) True = real token (padding contributes zeros)."""
        h = F.pad(x.transpose(1, 2), (self.left, self.kernel - 1 - self.left))  # (B, D, L + kernel - 1)
        h = self.conv(h).transpose(1, 2)  # (B, L, D)
        out = x + self.mlp(self.norm(h))
        return out if pad_mask is None else out * pad_mask[..., None]

    def step(self, x: Tensor, past: Tensor | None) -> tuple[Tensor, Tensor]:
        """Causal only: one token (B, D) and the previous kernel - 1 inputs (B, kernel - 1, D) or
        None at the start -> (output (B, D), the updated inputs)."""
        if past is None:
            past = x.new_zeros(x.shape[0], self.kernel - 1, x.shape[1])
        window = torch.cat([past, x[:, None]], dim=1)  # (B, kernel, D)
        h = torch.einsum("bkd,dk->bd", window, self.conv.weight[:, 0]) + self.conv.bias  # (B, D)
        return x + self.mlp(self.norm(h)), window[:, 1:]
