"""Top-k and top-p (nucleus) truncation of token distributions, as logit masks.

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
