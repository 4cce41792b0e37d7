"""Drawing one token per slot: temperature, top-k and top-p (nucleus) truncation as logit masks.

Shared by the diffusion samplers and streaming generation, so both draw the same way.

Applied after the constraints, so the kept tokens are the most probable *allowed* ones; the most
probable allowed token always survives, so a slot never ends up with nothing to draw.
"""

from __future__ import annotations

import torch
from torch import Tensor


def truncate(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Logits (N, V) with tokens outside the top k and outside the top-p nucleus set to -inf."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (N, V)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Keep a token when the mass strictly before it is below p: the smallest set reaching p.
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw_tokens(logits: Tensor, temperature: float, generator: torch.Generator | None,
                top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """One token per row of logits (N, V): argmax at temperature 0, else a draw from
    softmax(logits / temperature) truncated to top_k / top_p."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(truncate(logits / temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
