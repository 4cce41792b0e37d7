"""Gibbs corrector: after a sampler has unmasked everything, redraw small random subsets of its
tokens from the denoiser's prediction given all the others.

Why: the confidence order draws most pitches while much of the piece is still masked, where the
denoiser's predictions are weakest (docs/sampling_study.md), and never looks at them again. A
lightly masked sequence is where the denoiser is most accurate. Each round masks a random share
`share` of the slots the sampler wrote and draws them again in one network call, so every token
is redrawn, in expectation, `rounds * share` times, each time seeing the others. Drawing one slot
at a time from its exact conditional would be a Gibbs sweep, whose stationary distribution is the
model's joint; redrawing a few percent at once is its parallel approximation (the corrector steps
of Campbell et al. 2022, the loop phase of ReMDM, Wang et al. 2025, with the order uniform).

The redraws have their own temperature (sample.correct_temperature, 0.5 by default). At the
sampler's 0.8 the rounds move a piece towards the model's own joint distribution, whose sense of
key is weaker than the corpus's after minutes of training: out-of-scale notes rise and OA falls.
At 0.5 they pull stray tokens back towards what the rest of the piece implies; greedy (0) drives
pieces onto repeated pitches again.

Fixed tokens (prompt, infill context) are never masked. The constraints stay consistent:
removing known tokens only merges gaps, and a gap that was completable stays completable (the
argument of smdim/sampling/remdm.py); new tokens are drawn to fit every known one, and the step's
clashes are repaired like the samplers'. The polyphony cap keeps a Bar/Position whose removal
would merge two onsets over the cap, as ReMDM does.
"""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm


def correct(ctx, x: Tensor, free: Tensor, rounds: int, share: float, schedule, progress: bool = False) -> Tensor:
    """Run `rounds` corrector rounds on the finished x (B, L); only slots in `free` (B, L) change.

    ctx is the samplers' _Step (network call, constraints, draws at its temperature); schedule maps
    the masked share to the network's time input.
    """
    if rounds <= 0:
        return x
    n_free = free.sum(1).clamp(min=1).float()  # (B,)
    for _ in tqdm(range(rounds), desc="correcting", disable=not progress, leave=False):
        u = torch.rand(x.shape, generator=ctx.generator, device=x.device)
        remask = free & (u < share)  # (B, L)
        if ctx.constraints is not None:
            remask = ctx.constraints.remaskable(x, remask, ctx.mask_id)
        rows = remask.any(1).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        y = x[rows].masked_fill(remask[rows], ctx.mask_id)  # (b, L)
        t = schedule.time_of(remask[rows].sum(1).float() / n_free[rows])  # (b,)
        logits = ctx.logits(y, t, rows)  # (b, L, V)
        x = x.clone()
        x[rows] = ctx.fill(y, remask[rows], logits)
    return x
