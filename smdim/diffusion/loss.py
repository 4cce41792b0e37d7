"""Training loss of absorbing diffusion: weighted cross-entropy on the masked positions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from smdim.diffusion.masking import block_masks, mask_per_block, mask_tokens, per_token
from smdim.errors import SmdimError


def masked_loss(
    logits: Tensor, x0: Tensor, masked: Tensor, weight: Tensor, mask_id: int, n_real: Tensor,
    excluded: Sequence[int] = (),
) -> tuple[Tensor, dict[str, float]]:
    """sum_b w_b sum_{i masked} -log p(x0_i) / n_real, MASK logit excluded; plus stats.

    logits (B, L, V), x0 (B, L), masked (B, L) bool, weight (B,) or per token (B, L), n_real scalar tensor;
    `excluded`: more ids the clean tokens never hold (SLACK, when scoring windows without it).
    """
    # The clean token is never MASK, so the model must not spend probability on it.
    drop = torch.tensor([mask_id, *excluded], device=logits.device)
    logits = logits.float().index_fill(-1, drop, float("-inf"))
    sel = masked.nonzero(as_tuple=True)
    ce = F.cross_entropy(logits[sel], x0[sel], reduction="none")  # (N,)
    w = weight.float()[sel if weight.dim() == 2 else sel[0]]  # (N,)
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


def x0_logits(logits: Tensor, mask_id: int) -> Tensor:
    """The network's logits (B, L, V) as float32 with MASK at -inf: x0 is never MASK.

    Out of place, so the network's output is never edited.
    """
    return logits.float().index_fill(-1, torch.tensor([mask_id], device=logits.device), float("-inf"))


def x0_probs(logits: Tensor, mask_id: int) -> Tensor:
    """Softmax of the network's logits (B, L, V) with MASK excluded: what `prev` holds."""
    return x0_logits(logits, mask_id).softmax(-1)


def self_conditioned_logits(denoiser, x_t: Tensor, t: Tensor, *, mask_id: int,
                            pad_mask: Tensor | None = None) -> Tensor:
    """Logits (B, L, V) of a self-conditioned denoiser reading its own prediction for x_t as `prev`.

    Two calls: the first (no grad, so training backpropagates through the second only) gives
    `prev`; training and the validation ELBO both score the second, the call a sampler makes.
    """
    with torch.no_grad():
        prev = x0_probs(denoiser(x_t, t, pad_mask=pad_mask), mask_id)  # (B, L, V)
    return denoiser(x_t, t, pad_mask=pad_mask, prev=prev)


def diffusion_loss(
    denoiser,
    x0: Tensor,
    *,
    mask_id: int,
    schedule,
    pad_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    excluded: Sequence[int] = (),
    block_share: float = 0.0,
    block_tokens: int = 16,
    self_cond_share: float = 0.0,
    block_diffusion: int = 0,
) -> tuple[Tensor, dict[str, float]]:
    """Draw t, mask x0 (B, L), run `denoiser(x_t, t, pad_mask=...)`, return (loss, stats).

    The loss is the schedule's weighted CE on masked positions normalised by the number of real
    tokens in the batch (nats per token; for weighting "elbo" an upper bound on the NLL).
    A self-conditioned denoiser (model.self_cond) gets, on `self_cond_share` of the batches, its own
    no-grad prediction for the same x_t as `prev`, the way a sampler feeds it its last call's.
    `block_diffusion` N > 0 (model.block_diffusion): every N-token block has its own t, and the
    denoiser also gets the clean window x0 that the blocks read (smdim.model.block_causal).
    """
    if block_diffusion:
        if block_share > 0 or self_cond_share > 0:
            raise SmdimError("model.block_diffusion trains without diffusion.block_share and model.self_cond; "
                             "set them to 0 / false")
        x_t, masked, t = mask_per_block(x0, block_diffusion, mask_id, schedule, generator=generator,
                                        pad_mask=pad_mask)
        weight = schedule.loss_weight(per_token(t, block_diffusion, x0.shape[1]))  # (B, L)
        logits = denoiser(x_t, None, pad_mask=pad_mask, clean=x0)  # (B, L, V)
        return _scored_loss(logits, x0, masked, weight, t, mask_id, pad_mask, excluded)
    t = schedule.sample_t(x0.shape[0], generator=generator, device=x0.device)  # (B,)
    x_t, masked = mask_tokens(x0, t, mask_id, schedule, generator=generator, pad_mask=pad_mask)
    weight = schedule.loss_weight(t)  # (B,)
    scored = masked
    if block_share > 0:
        rows = torch.rand(x0.shape[0], generator=generator, device=x0.device) < block_share  # (B,)
        x_t, masked, scored = block_masks(x_t, masked, x0, mask_id, rows, block_tokens, generator=generator,
                                          pad_mask=pad_mask)
        # One block holds block/L of a window's tokens: scale it up so both kinds of row weigh alike.
        n_row = pad_mask.sum(1) if pad_mask is not None else torch.full_like(weight, x0.shape[1])
        weight = torch.where(rows, weight * (n_row / block_tokens).clamp(min=1), weight)
    if self_cond_share > 0 and float(torch.rand((), generator=generator, device=x0.device)) < self_cond_share:
        logits = self_conditioned_logits(denoiser, x_t, t, mask_id=mask_id, pad_mask=pad_mask)  # (B, L, V)
    else:
        logits = denoiser(x_t, t, pad_mask=pad_mask)  # (B, L, V)
    return _scored_loss(logits, x0, scored, weight, t, mask_id, pad_mask, excluded)


def _scored_loss(logits: Tensor, x0: Tensor, scored: Tensor, weight: Tensor, t: Tensor, mask_id: int,
                 pad_mask: Tensor | None, excluded: Sequence[int]) -> tuple[Tensor, dict[str, float]]:
    """masked_loss over the batch's real tokens, with the mean t in the stats."""
    n_real = pad_mask.sum() if pad_mask is not None else torch.tensor(x0.numel())
    loss, stats = masked_loss(logits, x0, scored, weight, mask_id, n_real, excluded)
    stats["t_mean"] = float(t.mean())
    return loss, stats
