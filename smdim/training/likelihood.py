"""Validation likelihood in bits per note, comparable across objectives and tokenizations.

Every validation piece is cut into consecutive windows of `seq_len` tokens (each window its own
context, as in training), and the negative log-likelihood of all its tokens is summed:
- autoregressive: exact, sum_i -log p(x_i | BOS, x_<i);
- diffusion: the continuous-time ELBO of absorbing diffusion (an upper bound on the NLL),
  E_t[m'(t)/m(t) sum_{masked i} -log p(x0_i | x_t)], estimated with `draws` stratified times per
  window (whatever loss weighting training used: the bound needs the ELBO weight). A
  self-conditioned network (model.self_cond) is scored as its samplers run it, reading its own
  prediction for the same x_t as `prev` (two calls per draw): the bound is then that of the
  two-call denoiser, which is still a function of x_t alone.
Dividing by the notes the windows hold (not their tokens) makes plain REMI and BPE comparable:
a BPE token stands for several REMI tokens.

A block-diffusion model (model.block_diffusion = N) also gets an exact NLL: that of drawing each
block left to right, one token at a time, each given the clean blocks before it and the tokens of
its own block on its left (what `sample.confidence: left_to_right` with one slot per step draws at
temperature 1). N calls per batch, one per offset in the block, score every block's token at that
offset at once. It is a likelihood like the autoregressive one (it sums to 1 over sequences), not a
bound, so the two are directly comparable.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from smdim.autoregressive.loss import next_token_nll, shifted_input
from smdim.diffusion.loss import masked_loss, self_conditioned_logits
from smdim.diffusion.masking import mask_tokens
from smdim.diffusion.schedule import Schedule


@dataclass(frozen=True)
class Likelihood:
    """Validation NLL of one model."""

    bits_per_note: float
    bits_per_token: float
    notes: int
    tokens: int
    exact: bool  # autoregressive: exact NLL; diffusion: an upper bound (ELBO)
    left_to_right_bits_per_note: float | None = None  # block diffusion: exact NLL drawn left to right


def windows(pieces: list[np.ndarray], seq_len: int) -> list[np.ndarray]:
    """Consecutive, non-overlapping windows of at most seq_len tokens covering every piece."""
    return [p[i : i + seq_len] for p in pieces for i in range(0, len(p), seq_len)]


def validation_likelihood(
    model,
    pieces: list[np.ndarray],
    *,
    seq_len: int,
    notes_per_id: np.ndarray,
    mask_id: int,
    bos_id: int | None,
    pad_id: int,
    schedule: Schedule,
    draws: int = 8,
    batch_size: int = 16,
    seed: int = 0,
    excluded: Sequence[int] = (),
) -> Likelihood:
    """Bits per note of `pieces` under `model` (causal -> exact NLL, else the diffusion ELBO);
    `excluded`: ids the pieces never hold and the diffusion model gets no probability for (SLACK)."""
    device = next(model.parameters()).device
    elbo = Schedule(dataclasses.replace(schedule.cfg, weighting="elbo"))
    gen = torch.Generator(device=device).manual_seed(seed)
    wins = windows(pieces, seq_len)
    nats, ltr_nats, tokens, notes = 0.0, 0.0, 0, 0
    block = 0 if model.cfg.causal else model.cfg.block_diffusion
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for lo in range(0, len(wins), batch_size):
            chunk = wins[lo : lo + batch_size]
            x0, pad_mask = _batch(chunk, pad_id, device)  # (b, L) each
            tokens += int(pad_mask.sum())
            notes += int(sum(notes_per_id[w].sum() for w in chunk))
            if model.cfg.causal:
                logits = model(shifted_input(x0, bos_id), None, pad_mask=pad_mask)
                nats += float(next_token_nll(logits, x0, mask_id, pad_mask))
            else:
                nats += _elbo_nats(model, x0, pad_mask, elbo, mask_id, draws, gen, excluded)
                if block:
                    ltr_nats += _left_to_right_nats(model, x0, pad_mask, block, mask_id, excluded)
    if was_training:
        model.train()
    bits = 1 / math.log(2) / max(notes, 1)
    return Likelihood(nats * bits, nats / math.log(2) / max(tokens, 1), notes, tokens, bool(model.cfg.causal),
                      ltr_nats * bits if block else None)


def _elbo_nats(model, x0: Tensor, pad_mask: Tensor, schedule: Schedule, mask_id: int, draws: int,
               gen: torch.Generator, excluded: Sequence[int] = ()) -> float:
    """Sum over the batch of the ELBO (nats), averaged over `draws` stratified times per window."""
    total = 0.0
    b = x0.shape[0]
    u = torch.rand(b, generator=gen, device=x0.device)  # one offset per window, then evenly spaced
    for d in range(draws):
        k = (((d + u) / draws) * schedule.T).floor().clamp(0, schedule.T - 1) + 1  # 1..T
        t = k / schedule.T  # (b,)
        x_t, masked = mask_tokens(x0, t, mask_id, schedule, generator=gen, pad_mask=pad_mask)
        if getattr(model, "self_conditioned", False):
            logits = self_conditioned_logits(model, x_t, t, mask_id=mask_id, pad_mask=pad_mask)  # (b, L, V)
        elif model.cfg.block_diffusion:
            # Each block's ELBO given the clean blocks before it: their sum bounds the NLL (BD3-LM).
            logits = model(x_t, t, pad_mask=pad_mask, clean=x0)  # (b, L, V)
        else:
            logits = model(x_t, t, pad_mask=pad_mask)  # (b, L, V)
        # The training loss's weighted masked CE, summed (n_real = 1) rather than averaged.
        nats, _ = masked_loss(logits, x0, masked, schedule.loss_weight(t), mask_id, torch.tensor(1), excluded)
        total += float(nats)
    return total / draws


def _left_to_right_nats(model, x0: Tensor, pad_mask: Tensor, block: int, mask_id: int,
                        excluded: Sequence[int] = ()) -> float:
    """Sum over the batch of -log p(x0) (nats) drawn left to right inside each block of `block`
    tokens: at offset j, every block is masked from j on and its token j is scored."""
    offset = torch.arange(x0.shape[1], device=x0.device) % block  # (L,)
    weight = torch.ones(x0.shape[0], device=x0.device)  # (b,): an exact NLL, no ELBO weight
    total = 0.0
    for j in range(block):
        x_t = x0.masked_fill((offset >= j)[None, :] & pad_mask, mask_id)  # (b, L)
        logits = model(x_t, None, pad_mask=pad_mask, clean=x0)  # (b, L, V)
        scored = (offset == j)[None, :] & pad_mask  # (b, L)
        nats, _ = masked_loss(logits, x0, scored, weight, mask_id, torch.tensor(1), excluded)
        total += float(nats)
    return total


def _batch(chunk: list[np.ndarray], pad_id: int, device) -> tuple[Tensor, Tensor]:
    """Right-padded (b, L) ids and their pad mask (True = real)."""
    lengths = torch.tensor([len(w) for w in chunk])
    x = torch.full((len(chunk), int(lengths.max())), pad_id, dtype=torch.long)
    for i, w in enumerate(chunk):
        x[i, : len(w)] = torch.from_numpy(np.asarray(w, dtype=np.int64))
    pad_mask = torch.arange(x.shape[1])[None, :] < lengths[:, None]
    return x.to(device), pad_mask.to(device)
