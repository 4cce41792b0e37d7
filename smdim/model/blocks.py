"""Residual blocks: one sublayer order per block type, all pre-norm.

    mfa          Mamba -> FFN -> Attention          (SMDIM default)
    afm          Attention -> FFN -> Mamba
    fma          FFN -> Mamba -> Attention
    mfa2sa       Mamba -> FFN -> Attention -> Attention
    mamba        Mamba -> FFN                       (no attention)
    transformer  Attention -> FFN                   (SCHmUBERT-like baseline, no Mamba)

"Mamba" stands for `mamba_layers` consecutive Mamba sublayers. An autoregressive model
(`cfg.causal`) uses causal attention and one-directional Mamba, and can run one position at a
time (`step`) with a recurrent state per sublayer.
"""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from smdim.model.attention import SelfAttention
from smdim.model.config import ModelConfig
from smdim.model.mamba import BiMamba, Mamba

ORDERS: dict[str, str] = {
    "mfa": "mfa",
    "afm": "afm",
    "fma": "fma",
    "mfa2sa": "mfaa",
    "mamba": "mf",
    "transformer": "af",
}


class FeedForward(nn.Module):
    """Position-wise MLP: D -> ffn_mult*D -> D with GELU."""

    def __init__(self, d_model: int, mult: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_model, mult * d_model), nn.GELU(), nn.Linear(mult * d_model, d_model)
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, L, D) -> (B, L, D)."""
        return self.net(x)


class Sublayer(nn.Module):
    """Pre-norm residual wrapper: x + dropout(layer(norm(x)))."""

    def __init__(self, kind: str, cfg: ModelConfig) -> None:
        super().__init__()
        self.kind = kind
        self.norm = nn.LayerNorm(cfg.d_model)
        if kind == "a":
            self.layer = SelfAttention(cfg.d_model, cfg.n_heads, cfg.attention_weight_dropout, causal=cfg.causal)
        elif kind == "f":
            self.layer = FeedForward(cfg.d_model, cfg.ffn_mult)
        else:
            mamba_cls = BiMamba if cfg.bidirectional and not cfg.causal else Mamba
            self.layer = mamba_cls(
                cfg.d_model, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand,
                chunk=cfg.scan_chunk,
            )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor | None, lengths: Tensor | None) -> Tensor:
        """x: (B, L, D); mask: (B, L) True = real; lengths: (B,) real positions per row."""
        h = self.norm(x)
        if self.kind == "a":
            h = self.layer(h, mask)
        elif self.kind == "m" and isinstance(self.layer, BiMamba):
            h = self.layer(h, lengths)
        else:  # FFN, or a causal Mamba (right padding cannot reach real positions)
            h = self.layer(h)
        return x + self.drop(h)

    def step(self, x: Tensor, state: dict) -> Tensor:
        """One new position of a causal sublayer: (B, D) -> (B, D); `state` is its own, in place."""
        h = self.norm(x)
        h = self.layer(h) if self.kind == "f" else self.layer.step(h, state)
        return x + h


class Block(nn.Module):
    """One block: the sublayers of `cfg.block` in order; padded positions zeroed at the end."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        kinds = []
        for kind in ORDERS[cfg.block]:
            kinds += [kind] * (cfg.mamba_layers if kind == "m" else 1)
        self.sublayers = nn.ModuleList(Sublayer(k, cfg) for k in kinds)

    def forward(self, x: Tensor, mask: Tensor | None, lengths: Tensor | None) -> Tensor:
        """(B, L, D) -> (B, L, D)."""
        for sub in self.sublayers:
            x = sub(x, mask, lengths)
        return x if mask is None else x * mask[..., None]

    def step(self, x: Tensor, states: list[dict]) -> Tensor:
        """One new position: (B, D) -> (B, D); states[i] belongs to sublayer i (start with {})."""
        for sub, state in zip(self.sublayers, states, strict=True):
            x = sub.step(x, state)
        return x
