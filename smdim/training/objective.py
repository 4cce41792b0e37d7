"""The training loss of the configured objective (`model.objective`), in nats per real token.

One place for the choice, so the training loop and the step timing of equal-time sweeps
(smdim.training.speed) always run the same loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from smdim.autoregressive.loss import autoregressive_loss
from smdim.diffusion.loss import diffusion_loss
from smdim.model.config import ModelConfig


def objective_loss(net, causal: bool, x0: Tensor, pad_mask: Tensor, *, mask_id: int, bos_id: int | None,
                   schedule, generator: torch.Generator | None = None, excluded: Sequence[int] = (),
                   block_share: float = 0.0, self_cond_share: float = 0.0, block_diffusion: int = 0) -> Tensor:
    """Causal: exact next-token NLL (windows start with BOS). Else: the diffusion loss, an upper
    bound on the NLL with the ELBO weighting (t and masks drawn from `generator`; `excluded` ids
    get no probability; `block_share` of the windows masked block by block, diffusion.block_tokens;
    `self_cond_share` of the batches fed the net's own first prediction, model.self_cond;
    `block_diffusion`: model.block_diffusion's block length, 0 = off)."""
    if causal:
        loss, _ = autoregressive_loss(net, x0, bos_id=bos_id, mask_id=mask_id, pad_mask=pad_mask)
    else:
        loss, _ = diffusion_loss(net, x0, mask_id=mask_id, schedule=schedule, pad_mask=pad_mask,
                                 generator=generator, excluded=excluded, block_share=block_share,
                                 block_tokens=schedule.cfg.block_tokens, self_cond_share=self_cond_share,
                                 block_diffusion=block_diffusion)
    return loss


def self_cond_share(cfg: ModelConfig, training: bool) -> float:
    """Share of batches that give a self-conditioned net (model.self_cond) its own first prediction:
    half while training (the other half teaches the first call, which has none), every validation
    batch (a sampler has one at every call after its first)."""
    if not cfg.self_cond:
        return 0.0
    return 0.5 if training else 1.0
