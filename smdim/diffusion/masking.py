"""Forward process of absorbing diffusion: independently replace tokens by MASK."""

from __future__ import annotations

import torch
from torch import Tensor


def fixed_to_bool(fixed: Tensor | None, shape: torch.Size) -> Tensor | None:
    """Fixed tokens as a BoolTensor (True = never masked); accepts bool or the -1-is-free ids."""
    if fixed is None:
        return None
    keep = fixed if fixed.dtype == torch.bool else fixed >= 0
    return keep.expand(shape)


def mask_tokens(
    x0: Tensor,
    t: Tensor,
    mask_id: int,
    schedule,
    *,
    generator: torch.Generator | None = None,
    fixed: Tensor | None = None,
    pad_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Mask each real, non-fixed token of x0 (B, L) with probability m(t_b); returns (x_t, masked).

    t: (B,) in [0, 1]. fixed: BoolTensor (True = keep) or LongTensor (>= 0 = keep), (B, L).
    pad_mask: BoolTensor (B, L), True = real token; padding is never masked.
    """
    p = schedule.mask_prob(t.to(torch.float32)).view(-1, 1)  # (B, 1)
    u = torch.rand(x0.shape, generator=generator, device=x0.device)  # (B, L)
    masked = u < p
    if pad_mask is not None:
        masked &= pad_mask
    keep = fixed_to_bool(fixed, x0.shape)
    if keep is not None:
        masked &= ~keep
    x_t = x0.masked_fill(masked, mask_id)
    return x_t, masked
