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
    """Mask each real, non-fixed token of x0 (B, L) with probability m(t); returns (x_t, masked).

    t: (B,) in [0, 1], one time per row, or (B, L), one per token (block diffusion's blocks).
    fixed: BoolTensor (True = keep) or LongTensor (>= 0 = keep), (B, L).
    pad_mask: BoolTensor (B, L), True = real token; padding is never masked.
    """
    p = schedule.mask_prob(t.to(torch.float32))
    p = p[:, None] if p.dim() == 1 else p  # (B, 1) or (B, L)
    u = torch.rand(x0.shape, generator=generator, device=x0.device)  # (B, L)
    masked = u < p
    if pad_mask is not None:
        masked &= pad_mask
    keep = fixed_to_bool(fixed, x0.shape)
    if keep is not None:
        masked &= ~keep
    x_t = x0.masked_fill(masked, mask_id)
    return x_t, masked


def mask_per_block(
    x0: Tensor,
    block: int,
    mask_id: int,
    schedule,
    *,
    generator: torch.Generator | None = None,
    pad_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Block diffusion's forward process: every block of `block` tokens of x0 (B, L) gets its own
    t (the schedule's draw over all B x n_blocks blocks, shuffled), and its real tokens are masked
    with probability m(t) (mask_tokens). Returns (x_t, masked, t (B, n_blocks))."""
    B, L = x0.shape
    n_blocks = -(-L // block)
    t = schedule.sample_t(B * n_blocks, generator=generator, device=x0.device)
    # sample_t spaces low-discrepancy draws evenly in order: shuffle them over the blocks.
    t = t[torch.randperm(B * n_blocks, generator=generator, device=x0.device)].view(B, n_blocks)
    x_t, masked = mask_tokens(x0, per_token(t, block, L), mask_id, schedule, generator=generator,
                              pad_mask=pad_mask)
    return x_t, masked, t


def per_token(values: Tensor, block: int, length: int) -> Tensor:
    """Per-block values (B, n_blocks) -> (B, length): each repeated over its block's tokens."""
    return values.repeat_interleave(block, dim=1)[:, :length]


def block_masks(
    x_t: Tensor,
    masked: Tensor,
    x0: Tensor,
    mask_id: int,
    rows: Tensor,
    block: int,
    *,
    generator: torch.Generator | None = None,
    pad_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Turn `rows` (B,) bool of a masked batch into the semi-autoregressive sampler's view.

    Each such row gets one block [s, s + block), s a multiple of `block` inside its real tokens:
    left of it clean (x0), inside it masked as drawn, right of it all MASK. Returns (x_t, masked,
    scored): `scored` (B, L) are the masked tokens the loss counts (inside the block for those
    rows; a fully masked right side teaches nothing about the next block).
    """
    B, L = x0.shape
    n_real = pad_mask.sum(1) if pad_mask is not None else torch.full((B,), L, device=x0.device)
    n_blocks = (n_real + block - 1) // block  # (B,)
    u = torch.rand(B, generator=generator, device=x0.device)
    start = (u * n_blocks).floor().long().clamp(min=0) * block  # (B,)
    pos = torch.arange(L, device=x0.device)  # (L,)
    left = pos < start[:, None]  # (B, L)
    right = pos >= (start + block)[:, None]
    if pad_mask is not None:
        right &= pad_mask
    r = rows[:, None]
    masked = torch.where(r, (masked & ~left & ~right) | right, masked)
    scored = torch.where(r, masked & ~right, masked)
    return x0.masked_fill(masked, mask_id), masked, scored
