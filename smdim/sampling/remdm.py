"""ReMDM: the ancestral sampler with remasking (Wang et al. 2025, "Remasking Discrete Diffusion
Models with Inference-Time Scaling"), so tokens drawn early and wrong can be drawn again.

With alpha_t = 1 - m(t) the expected share of decoded tokens at time t, ReMDM's reverse step
t -> s draws, given the denoiser's prediction of x0:

    decoded slot: back to MASK with probability sigma_t, else kept
    masked slot:  drawn from the prediction with probability (alpha_s - (1 - sigma_t) alpha_t) / (1 - alpha_t)

which keeps the forward marginals (a share 1 - alpha_s masked at s) for any
0 <= sigma_t <= sigma_max = min(1, (1 - alpha_s) / alpha_t); sigma_t = 0 is the ancestral step.
Strategies for sigma_t (eta = `remask_eta`):
- "cap": min(eta, sigma_max) (ReMDM-cap).
- "rescale": eta * sigma_max (ReMDM-rescale).
- "conf": cap's expected number of remasked tokens, spread over the decoded tokens by
  softmax(-psi), psi = the model probability of each token when it was drawn (ReMDM-conf: the less
  sure the model was, the likelier a token goes back). Per-token probabilities are clipped at 1.
At s = 0 sigma_max is 0: the last step unmasks every slot and remasks none.

Fixed tokens (prompt, infill context) are never remasked. The constraints stay consistent: new
tokens are drawn to fit every known token of z_t (the ones remasked in the same step included),
and removing known tokens only merges gaps; a gap a..c..b that was completable stays completable
as a..b, for the grammar and the Position order alike. The polyphony cap is the exception: a
remasked Bar/Position merges two onsets' pitch counts, so one whose merged segment would hold more
than max_polyphony known pitches is kept.

Like the cached sampler, which slots change is drawn before the network call, so a sequence with
nothing to unmask in a step (only remasking) costs no call.
"""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm


def remdm(ctx, x: Tensor, steps: int, schedule, *, strategy: str, eta: float, progress: bool = False) -> Tensor:
    """Run S ReMDM steps from t = 1 to 0 on x (B, L); ctx is the samplers' _Step."""
    free = x == ctx.mask_id  # (B, L): slots this sampler writes; fixed tokens are never remasked
    psi = torch.zeros(x.shape, device=x.device)  # probability of each decoded token when drawn
    for k in tqdm(range(steps, 0, -1), desc="sampling", disable=not progress, leave=False):
        m_t, m_s = (float(schedule.mask_prob(torch.tensor(v / steps))) for v in (k, k - 1))
        sigma, p_unmask = _rates(1.0 - m_t, 1.0 - m_s, strategy, eta)
        masked = x == ctx.mask_id  # (B, L)
        decoded = free & ~masked
        # Unmasking and remasking touch disjoint slots: one uniform per slot serves both.
        u = torch.rand(x.shape, generator=ctx.generator, device=x.device)
        unmask = masked & (u < p_unmask)
        p_remask = _remask_probs(decoded, psi, sigma, strategy)  # (B, L)
        remask = decoded & (u < p_remask)
        if ctx.constraints is not None:
            remask = ctx.constraints.remaskable(x, remask, ctx.mask_id)
        rows = unmask.any(1).nonzero().squeeze(1)
        if rows.numel():
            t_rows = torch.full((rows.numel(),), k / steps, device=x.device)
            logits = ctx.logits(x[rows], t_rows, rows)  # (b, L, V)
            new = ctx.fill(x[rows], unmask[rows], logits)
            p_new = torch.softmax(ctx.unconstrained, dim=-1).gather(-1, new[..., None]).squeeze(-1)  # (b, L)
            psi[rows] = torch.where(unmask[rows], p_new, psi[rows])
            x[rows] = new
        x = x.masked_fill(remask, ctx.mask_id)
    return x


def _rates(a_t: float, a_s: float, strategy: str, eta: float) -> tuple[float, float]:
    """(sigma_t, unmask probability of a masked slot) of the step t -> s."""
    sigma_max = min(1.0, (1.0 - a_s) / a_t) if a_t > 0 else 1.0  # alpha_t = 0: nothing decoded yet
    sigma = eta * sigma_max if strategy == "rescale" else min(eta, sigma_max)
    p_unmask = (a_s - (1.0 - sigma) * a_t) / (1.0 - a_t) if a_t < 1 else 1.0
    return sigma, min(max(p_unmask, 0.0), 1.0)


def _remask_probs(decoded: Tensor, psi: Tensor, sigma: float, strategy: str) -> Tensor:
    """(B, L) probability that each decoded slot goes back to MASK in this step."""
    if strategy != "conf":
        return torch.full(decoded.shape, sigma, device=decoded.device)
    weight = torch.softmax((-psi).masked_fill(~decoded, float("-inf")), dim=1).nan_to_num(0.0)  # (B, L)
    n_decoded = decoded.sum(1, keepdim=True)  # (B, 1)
    return (sigma * n_decoded * weight).clamp(max=1.0)
