"""Training loss of absorbing diffusion: weighted cross-entropy on the masked positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from smdim.diffusion.masking import mask_tokens


def masked_loss(
    logits: Tensor, x0: Tensor, masked: Tensor, weight: Tensor, mask_id: int, n_real: Tensor
) -> tuple[Tensor, dict[str, float]]:
    """sum_b w_b sum_{i masked} -log p(x0_i) / n_real, MASK logit excluded; plus stats.

    logits (B, L, V), x0 (B, L), masked (B, L) bool, weight (B,), n_real scalar tensor.
    """
    # The clean token is never MASK, so the model must not spend probability on it.
    logits = logits.float().index_fill(-1, torch.tensor([mask_id], device=logits.device), float("-inf"))
    sel = masked.nonzero(as_tuple=True)
    ce = F.cross_entropy(logits[sel], x0[sel], reduction="none")  # (N,)
    w = weight.float()[sel[0]]  # (N,)
    loss = (w * ce).sum() / n_real.clamp_min(1).float()
    n_masked = int(ce.numel())
    with torch.no_grad():
        acc = (logits[sel].argmax(-1) == x0[sel]).float().mean().item() if n_masked else 0.0
        stats = {
            "loss": float(loss.detach()),
            "ce_masked": float(ce.mean()) if n_masked else 0.0,
            "acc_masked": acc,
            "masked_frac": n_masked / max(int(n_real), 1),
            "n_masked": float(n_masked),
        }
    return loss, stats


def diffusion_loss(
    denoiser,
    x0: Tensor,
    *,
    mask_id: int,
    schedule,
    pad_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Draw t, mask x0 (B, L), run `denoiser(x_t, t, pad_mask=...)`, return (loss, stats).

    The loss is the schedule's weighted CE on masked positions normalised by the number of real
    tokens in the batch (nats per token; for weighting "elbo" an upper bound on the NLL).
    """
    t = schedule.sample_t(x0.shape[0], generator=generator, device=x0.device)  # (B,)
    x_t, masked = mask_tokens(x0, t, mask_id, schedule, generator=generator, pad_mask=pad_mask)
    logits = denoiser(x_t, t, pad_mask=pad_mask)  # (B, L, V)
    n_real = pad_mask.sum() if pad_mask is not None else torch.tensor(x0.numel())
    loss, stats = masked_loss(logits, x0, masked, schedule.loss_weight(t), mask_id, n_real)
    stats["t_mean"] = float(t.mean())
    return loss, stats
