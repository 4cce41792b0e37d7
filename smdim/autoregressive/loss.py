"""Training loss of the autoregressive objective: next-token cross-entropy, BOS-prefixed windows."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def shifted_input(x0: Tensor, bos_id: int) -> Tensor:
    """(B, L) -> (B, L): BOS, then x0 without its last token; output i then predicts x0[:, i].

    Every window starts with BOS, so the first token of a crop is scored too (from no context,
    like a piece's opening) and the model learns how to begin.
    """
    bos = torch.full_like(x0[:, :1], bos_id)
    return torch.cat([bos, x0[:, :-1]], dim=1)


def next_token_nll(logits: Tensor, x0: Tensor, mask_id: int, pad_mask: Tensor | None) -> Tensor:
    """Summed -log p(x0_i | x0_<i) over real tokens; logits (B, L, V) from shifted_input(x0).

    The MASK logit is excluded as in the diffusion loss: MASK is never a token of a piece.
    """
    logits = logits.float().index_fill(-1, torch.tensor([mask_id], device=logits.device), float("-inf"))
    ce = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")  # (B, L)
    return ce.sum() if pad_mask is None else (ce * pad_mask).sum()


def autoregressive_loss(
    model, x0: Tensor, *, bos_id: int, mask_id: int, pad_mask: Tensor | None = None
) -> tuple[Tensor, dict[str, float]]:
    """Mean next-token NLL per real token (nats, exact) of x0 (B, L) under the causal `model`."""
    logits = model(shifted_input(x0, bos_id), None, pad_mask=pad_mask)  # (B, L, V)
    n_real = pad_mask.sum() if pad_mask is not None else torch.tensor(x0.numel())
    loss = next_token_nll(logits, x0, mask_id, pad_mask) / n_real.clamp_min(1).float()
    return loss, {"loss": float(loss.detach())}
