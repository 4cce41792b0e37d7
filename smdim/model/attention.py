"""Multi-head self-attention with rotary position embeddings (RoPE), optionally causal.

Rotary rather than learned positions: RoPE encodes only relative offsets and has no table to
outgrow, so a model trained on crops of one length still runs (and generalises better than a
learned table, which simply has no entries) on longer sequences at sampling time.

A causal layer also runs one position at a time (`step`) with a key/value cache: the keys and
values of earlier positions never change, so streaming generation reuses them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def rotary(x: Tensor, base: float = 10000.0, offset: int = 0) -> Tensor:
    """Rotate pairs of features by position-dependent angles; x: (B, H, L, hd), hd even.

    Positions are offset .. offset + L - 1 (a streaming step rotates its one position by its index).
    """
    L, hd = x.shape[-2], x.shape[-1]
    inv_freq = base ** (-torch.arange(0, hd, 2, device=x.device, dtype=torch.float32) / hd)
    positions = torch.arange(offset, offset + L, device=x.device, dtype=torch.float32)
    angles = positions[:, None] * inv_freq  # (L, hd/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (B, H, L, hd/2)
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.flatten(-2)


class SelfAttention(nn.Module):
    """Multi-head attention via F.scaled_dot_product_attention; bidirectional unless `causal`."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, causal: bool = False) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.causal = causal
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self.dropout = dropout

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """x: (B, L, D); key_mask: (B, L) True = may be attended to. Returns (B, L, D).

        Causal layers ignore key_mask: with right padding, no real position can see a pad anyway.
        """
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k = rotary(q), rotary(k)  # (B, H, L, hd)
        mask = None if key_mask is None or self.causal else key_mask[:, None, None, :]  # (B, 1, 1, L)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=self.causal
        )  # (B, H, L, hd)
        return self.proj(y.transpose(1, 2).reshape(B, L, D))

    def step(self, x: Tensor, cache: dict[str, Tensor]) -> Tensor:
        """One new position of a causal layer: x (B, D) -> (B, D); `cache` holds earlier k, v."""
        return self.extend(x[:, None], cache)[:, 0]

    def extend(self, x: Tensor, cache: dict[str, Tensor], keep: bool = True) -> Tensor:
        """New positions T .. T + r - 1 after the cached ones: x (B, r, D) -> (B, r, D).

        They read every cached position and each other, with no mask among them: one position of
        a causal layer (`step`), or one block of a block-diffusion model (smdim.model.block_cache).
        cache["k"], cache["v"]: (B, H, T, hd) (absent at T = 0); with `keep` the new positions'
        keys and values are appended in place.
        """
        B, r, D = x.shape
        q, k, v = self.qkv(x).view(B, r, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)  # (B, H, r, hd)
        T = cache["k"].shape[2] if "k" in cache else 0
        q, k = rotary(q, offset=T), rotary(k, offset=T)
        if T:
            k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
        if keep:
            cache["k"], cache["v"] = k, v
        y = F.scaled_dot_product_attention(q, k, v)  # (B, H, r, hd)
        return self.proj(y.transpose(1, 2).reshape(B, r, D))
