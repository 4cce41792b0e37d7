"""Reverse process of absorbing diffusion: turn an all-MASK (or partly fixed) sequence into tokens.

Methods (all draw tokens from the denoiser's x0 prediction with MASK excluded; fixed tokens stay):
- "ancestral": S steps from t = 1 to 0; at the step t -> s every still-masked slot is unmasked
  with probability (m(t) - m(s)) / m(t) (= 1/k at step k of S for the linear schedule, the
  SCHmUBERT rule). One network call per step.
- "cached": the same distribution, fewer calls (the MDLM cache). We draw *which* slots unmask
  before calling the network, so a step where no slot of a sequence unmasks needs no call for
  that sequence (its output would be unused). MDLM instead reuses the last output while x is
  unchanged, which needs a time-independent denoiser; drawing first makes the skip exact for any
  denoiser and saves the same calls. With the same generator it returns exactly the ancestral
  tokens (up to batch-size-dependent float rounding in the network).
- "confidence": MaskGIT. At step k the number of masked slots left follows a cosine (or linear)
  schedule; the most confident slots are unmasked, optionally with annealed Gumbel noise on the
  confidences (`confidence_noise`), over the whole sequence or block by block from the left
  (`block_tokens`, the semi-autoregressive order of LLaDA, Nie et al. 2025). For a block-diffusion
  model sampled in its own blocks, each call runs only the block being drawn against a cache of the
  finished ones (smdim.model.block_cache): the same logits, at a cost linear in the length. Confidence
  (`confidence`): "logprob" of the sampled token (MaskGIT), "margin" between the two most probable
  tokens (top-k margin, Kim et al. 2025: a slot torn between two tokens waits for more context),
  "entropy" (minus the entropy of the slot), or "left_to_right": not a confidence but a fixed order,
  the leftmost masked slot first. With one slot per step (linear unmasking, steps = tokens) no two
  tokens are drawn in one step, so none is drawn without the others it depends on: inside a
  block-diffusion model's blocks this is ancestral sampling of the order the model's REMI is written
  in (time), and it leaves none of the silent beats the parallel orders do (docs/sampling_study.md,
  thirty-seventh round).
- "remdm": the ancestral sampler with remasking (ReMDM, Wang et al. 2025), smdim/sampling/remdm.py:
  decoded tokens go back to MASK with probability sigma_t, so early errors can be redrawn.

After any method, `correct_rounds` Gibbs corrector rounds (smdim/sampling/corrector.py) can redraw
random subsets of the finished tokens given all the others.

Every sampler draws from the constrained distribution, truncated to `top_k` / `top_p` if set
(smdim.sampling.truncation).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from smdim.diffusion.config import DiffusionConfig
from smdim.diffusion.loss import x0_logits
from smdim.diffusion.schedule import make_schedule
from smdim.errors import SmdimError
from smdim.model.block_cache import BlockCache, block_logits
from smdim.model.collection import WithCollection
from smdim.sampling.config import CONFIDENCE_SCORES, METHODS, REMASK_STRATEGIES, UNMASK_SCHEDULES
from smdim.sampling.constraints import Constraints
from smdim.sampling.corrector import correct
from smdim.sampling.remdm import remdm
from smdim.sampling.truncation import draw_tokens


def sample(denoiser, length: int, **kw: Any) -> Tensor:
    """Generate (B, length) token ids without any MASK; the arguments are sample_with_stats's."""
    tokens, _ = sample_with_stats(denoiser, length, **kw)
    return tokens


def sample_with_stats(
    denoiser,
    length: int,
    *,
    mask_id: int,
    steps: int,
    method: str = "ancestral",
    batch_size: int = 1,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    fixed: Tensor | None = None,
    constraints: Constraints | None = None,
    progress: bool = False,
    schedule=None,
    unmask_schedule: str = "cosine",
    confidence_noise: float = 0.0,
    confidence: str = "logprob",
    remask: str = "cap",
    remask_eta: float = 0.02,
    top_k: int | None = None,
    top_p: float | None = None,
    block_tokens: int = 0,
    correct_rounds: int = 0,
    correct_share: float = 0.1,
    correct_temperature: float | None = None,
) -> tuple[Tensor, dict[str, int]]:
    """Generate tokens and count network calls: returns ((B, length), {"network_calls", "steps"}).

    denoiser(x (B, L), t (B,), pad_mask=None) -> logits (B, L, V). steps: S >= 1 (may be far
    below the training T). temperature: softmax temperature (0 = greedy). fixed: (B, L) or (L,)
    ids to keep, -1 = free. constraints: smdim.sampling.constraints.Constraints. schedule: the
    training schedule (default linear). unmask_schedule / confidence_noise / confidence:
    "confidence" only. block_tokens: "confidence" only, 0 = rank the whole sequence at once, N = finish
    N-token blocks left to right. remask / remask_eta: "remdm" only. top_k / top_p: truncation of every
    draw (None = off). correct_rounds / correct_share / correct_temperature: Gibbs corrector rounds after any
    method, each redrawing a random share of the generated slots at that temperature (None = temperature)
    (smdim.sampling.corrector; 0 rounds = off).
    """
    if method not in METHODS:
        raise SmdimError(f"sampling method {method!r} is unknown; use one of {', '.join(METHODS)}")
    if steps < 1 or length < 1 or batch_size < 1:
        raise SmdimError(f"steps, length and batch size must be >= 1 (got {steps}, {length}, {batch_size})")
    if temperature < 0:
        raise SmdimError(f"temperature must be >= 0, got {temperature}")
    if unmask_schedule not in UNMASK_SCHEDULES:
        raise SmdimError(f"unmask schedule {unmask_schedule!r} is unknown; use cosine or linear")
    if confidence not in CONFIDENCE_SCORES:
        raise SmdimError(f"confidence {confidence!r} is unknown; use one of {', '.join(CONFIDENCE_SCORES)}")
    if remask not in REMASK_STRATEGIES:
        raise SmdimError(f"remask strategy {remask!r} is unknown; use one of {', '.join(REMASK_STRATEGIES)}")
    if not 0 <= remask_eta <= 1:
        raise SmdimError(f"remask_eta must be in [0, 1], got {remask_eta}")
    if correct_temperature is not None and correct_temperature < 0:
        raise SmdimError(f"correct_temperature must be >= 0, got {correct_temperature}")
    if correct_rounds < 0 or not 0 < correct_share <= 1:
        raise SmdimError(f"correct_rounds must be >= 0 and correct_share in (0, 1] (got {correct_rounds}, "
                         f"{correct_share})")
    if block_tokens < 0:
        raise SmdimError(f"block_tokens must be >= 0 (0 = the whole sequence at once), got {block_tokens}")
    if (top_k is not None and top_k < 1) or (top_p is not None and not 0 < top_p <= 1):
        raise SmdimError(f"top_k must be >= 1 and top_p in (0, 1] (got {top_k}, {top_p})")
    schedule = schedule or make_schedule(DiffusionConfig(schedule="linear"))
    device = _device(denoiser)
    x = initial_tokens(length, batch_size, fixed, mask_id, device)
    free = x == mask_id  # (B, L): the slots the sampler writes
    ctx = _Step(denoiser, mask_id, temperature, generator, constraints.to(device) if constraints else None,
                top_k, top_p, batch_size)
    with _eval_mode(denoiser), torch.no_grad():
        if method == "confidence":
            x = _confidence(ctx, x, steps, schedule, unmask_schedule, confidence_noise, confidence, progress,
                            block=block_tokens)
        elif method == "remdm":
            x = remdm(ctx, x, steps, schedule, strategy=remask, eta=remask_eta, progress=progress)
        else:
            x = _ancestral(ctx, x, steps, schedule, skip_idle=method == "cached", progress=progress)
        if correct_temperature is not None:
            ctx.temperature = correct_temperature  # the sampler is done: what is drawn now is the corrector's
        x = correct(ctx, x, free, correct_rounds, correct_share, schedule, progress)
    if (x == mask_id).any():  # the last step unmasks everything: this is a bug, not bad input
        raise RuntimeError("sampler left MASK tokens")
    return x, {"network_calls": ctx.calls, "steps": steps}


class _Step:
    """Shared per-step work: call the network, restrict logits, draw and repair tokens."""

    def __init__(self, denoiser, mask_id: int, temperature: float, generator, constraints,
                 top_k: int | None = None, top_p: float | None = None, batch_size: int = 1):
        self.denoiser, self.mask_id, self.temperature = denoiser, mask_id, temperature
        self.generator, self.constraints, self.calls = generator, constraints, 0
        self.top_k, self.top_p = top_k, top_p
        # a self-conditioned net (model.self_cond) reads its last prediction for each row; zeros
        # (= none) until a row's first call
        self.self_cond = getattr(denoiser, "self_conditioned", False)
        self.prev: Tensor | None = None  # (B, L, V)
        self.batch_size = batch_size

    def logits(self, x: Tensor, t: Tensor, rows: Tensor | None = None) -> Tensor:
        """Network logits (B, L, V) with MASK and constrained tokens at -inf, as float32; `rows`:
        the batch rows x holds, when it holds a subset (a denoiser with per-row state, such as a
        collection per piece, is narrowed to them through its `select`)."""
        self.calls += 1
        net = self.denoiser
        if rows is not None and hasattr(net, "select"):
            net = net.select(rows)
        if self.self_cond:
            prev = None if self.prev is None else self.prev if rows is None else self.prev[rows]
            logits = x0_logits(net(x, t, pad_mask=None, prev=prev), self.mask_id)  # (B, L, V)
            if self.prev is None:  # zeros mean "no prediction yet" to the net, as None does
                self.prev = logits.new_zeros((self.batch_size, *logits.shape[1:]))
            self.prev[slice(None) if rows is None else rows] = logits.softmax(-1)  # x0_probs, as in training
        else:
            logits = x0_logits(net(x, t, pad_mask=None), self.mask_id)  # (B, L, V)
        return self._constrain(logits, x)

    def block_logits(self, x: Tensor, lo: int, hi: int, a: int, b: int, cache: BlockCache) -> Tensor:
        """`logits` of the columns [lo, hi) of x, for a block-diffusion model whose blocks before
        `a` are finished and cached: the network runs the block x[:, a:b] only, and the other
        columns' logits are zeros (unused: the sampler draws in the block)."""
        self.calls += 1
        out = x0_logits(block_logits(_block_net(self.denoiser), cache, x[:, a:b]), self.mask_id)  # (B, b-a, V)
        logits = out.new_zeros(x.shape[0], hi - lo, out.shape[-1])
        logits[:, a - lo:b - lo] = out
        return self._constrain(logits, x[:, lo:hi])

    def commit(self, x: Tensor, a: int, b: int, cache: BlockCache) -> None:
        """Append the finished block x[:, a:b] to `cache` (one network call on the block)."""
        self.calls += 1
        block_logits(_block_net(self.denoiser), cache, x[:, a:b], commit=True)

    def _constrain(self, logits: Tensor, x: Tensor) -> Tensor:
        self.unconstrained = logits  # for redraws under neighbours drawn later in the same step
        if self.constraints is not None:
            logits = self.constraints.apply(logits, x, x != self.mask_id)
        return logits

    def draw(self, logits: Tensor) -> Tensor:
        """One token per row of logits (N, V) at the sampling temperature, top-k / top-p truncated."""
        return draw_tokens(logits, self.temperature, self.generator, self.top_k, self.top_p)

    def fill(self, x: Tensor, sel: Tensor, logits: Tensor, tokens: Tensor | None = None) -> Tensor:
        """x (B, L) with slots `sel` set to drawn tokens (or `tokens` (B, L)), polyphony repaired."""
        if not sel.any():
            return x
        known = x != self.mask_id
        x = x.clone()
        x[sel] = tokens[sel] if tokens is not None else self.draw(logits[sel])
        if self.constraints is not None and self.constraints.max_polyphony is not None:
            excess = self.constraints.excess_pitches(x, known, sel)  # (B, L)
            if excess.any():
                # Redraw from the same prediction with pitches excluded: no extra network call.
                redo = logits[excess].masked_fill(self.constraints.is_pitch, float("-inf"))
                x[excess] = self.draw(redo)
        if self.constraints is not None and self.constraints.grammar is not None:
            x = self._repair_grammar(x, known, sel)
        return x

    def _repair_grammar(self, x: Tensor, known_before: Tensor, new: Tensor) -> Tensor:
        """Redraw, one at a time from the left, new tokens that clash with others drawn in this step.

        Each redraw sees every token kept so far, so it fits them (smdim.sampling.grammar); no
        extra network call: the step's network output (before its constraints) is reused.
        """
        c = self.constraints
        bad = c.grammar.clashes(x, known_before, new, c.position_of)  # (B, L)
        if not bad.any():
            return x
        x = x.masked_fill(bad, self.mask_id)
        rank = bad.long().cumsum(1).masked_fill(~bad, 0)  # 1, 2, ... for each row's clashes
        for r in range(1, int(rank.max()) + 1):
            sel = rank == r  # at most one slot per row
            redo = c.apply(self.unconstrained, x, x != self.mask_id)[sel]  # (n, V)
            stuck = torch.isinf(redo).all(-1)  # cannot happen for a consistent x; be safe anyway
            redo[stuck] = torch.zeros_like(redo[stuck]).masked_fill(c.banned, float("-inf"))
            x = x.clone()
            x[sel] = self.draw(redo)
        return x


def _ancestral(ctx: _Step, x: Tensor, steps: int, schedule, *, skip_idle: bool, progress: bool) -> Tensor:
    B = x.shape[0]
    for k in tqdm(range(steps, 0, -1), desc="sampling", disable=not progress, leave=False):
        t, s = torch.tensor(k / steps), torch.tensor((k - 1) / steps)
        m_t, m_s = schedule.mask_prob(t), schedule.mask_prob(s)
        p_unmask = float((m_t - m_s) / m_t) if m_t > 0 else 1.0
        masked = x == ctx.mask_id  # (B, L)
        u = torch.rand(x.shape, generator=ctx.generator, device=x.device)
        sel = masked & (u < p_unmask)  # (B, L)
        rows = sel.any(1).nonzero().squeeze(1) if skip_idle else torch.arange(B, device=x.device)
        if rows.numel() == 0:
            continue
        t_rows = torch.full((rows.numel(),), k / steps, device=x.device)
        logits = ctx.logits(x[rows], t_rows, rows)  # (b, L, V)
        x[rows] = ctx.fill(x[rows], sel[rows], logits)
    return x


def _confidence(
    ctx: _Step, x: Tensor, steps: int, schedule, unmask_schedule: str, noise: float, score: str, progress: bool,
    block: int = 0,
) -> Tensor:
    """MaskGIT order over the whole sequence, or (block > 0) over one block of `block` tokens at a
    time from the left (LLaDA's semi-autoregressive remasking): each block gets steps / n_blocks
    steps and is finished before the next starts, so no slot commits far ahead of its context."""
    L = x.shape[1]
    spans = [(0, L)] if block <= 0 else [(a, min(a + block, L)) for a in range(0, L, block)]
    per_span = max(1, steps // len(spans))
    n_all = (x == ctx.mask_id).sum(1).clamp(min=1).float()  # (B,) for the network's time input
    net = _block_net(ctx.denoiser)
    cache = None
    if block > 0 and net is not None and net.cfg.block_diffusion == block:
        cache = BlockCache(collection=getattr(ctx.denoiser, "collection", None))
    bar = tqdm(total=per_span * len(spans), desc="sampling", disable=not progress, leave=False)
    for a, b in spans:
        lo, hi = 0, L  # the columns a step works on
        if cache is not None:
            if a > 0:
                ctx.commit(x, a - block, a, cache)
            lo, hi = _span_window(ctx, x, a, b)
        in_span = torch.zeros_like(x, dtype=torch.bool)
        in_span[:, a:b] = True
        n_free = ((x == ctx.mask_id) & in_span).sum(1)  # (B,)
        for k in range(1, per_span + 1):
            bar.update()
            masked = x == ctx.mask_id  # (B, L)
            open_ = masked & in_span
            n_open = open_.sum(1)  # (B,)
            if not n_open.any():
                break
            r = k / per_span
            if unmask_schedule == "cosine":
                target = (n_free.float() * math.cos(0.5 * math.pi * r)).floor().long()  # masked slots to leave
            else:  # in integers: with a step per slot, one slot per step (1 - k/n in floats can round down)
                target = n_free * (per_span - k) // per_span
            n_unmask = (n_open - target).clamp(min=1).minimum(n_open)  # (B,)
            if cache is None:
                logits = ctx.logits(x, schedule.time_of(masked.sum(1).float() / n_all))  # (B, L, V)
            else:
                logits = ctx.block_logits(x, lo, hi, a, b, cache)  # (B, W = hi - lo, V)
            xw, open_w = x[:, lo:hi], open_[:, lo:hi]
            tokens = torch.full_like(xw, ctx.mask_id)
            tokens[open_w] = ctx.draw(logits[open_w])
            conf = _confidence_score(logits, tokens, score, lo)  # (B, W)
            if noise > 0 and score != "left_to_right":  # noise would scramble the fixed order
                # Drawn at full size whatever the window, so the cached path draws what the other does.
                u = torch.rand(x.shape, generator=ctx.generator, device=x.device)[:, lo:hi].clamp(1e-10, 1 - 1e-10)
                conf = conf + noise * (1.0 - r) * -torch.log(-torch.log(u))
            conf = conf.masked_fill(~open_w, float("-inf"))
            order = conf.argsort(dim=1, descending=True, stable=True)  # (B, W)
            rank = torch.empty_like(order).scatter_(
                1, order, torch.arange(hi - lo, device=x.device).expand_as(order))
            sel = open_w & (rank < n_unmask[:, None])
            x[:, lo:hi] = ctx.fill(xw, sel, logits, tokens)  # x is this sampler's own tensor
    bar.close()
    return x


def _span_window(ctx: _Step, x: Tensor, a: int, b: int) -> tuple[int, int]:
    """Columns [lo, hi) that decide the constraints of span [a, b) when everything left of a is
    known: from the last onset boundary before a (the grammar, the position order and the
    polyphony cap look no further left; smdim.sampling.streaming relies on the same) to b, or to
    the end where a fixed token lies right of the span. So a step's work is O(block), not O(L).
    The key lock (`scale: auto`) reads every pitch of the piece: with it, the whole of x."""
    L = x.shape[1]
    hi = L if bool((x[:, b:] != ctx.mask_id).any()) else b
    c = ctx.constraints
    if c is None:
        return a, hi
    if c.key is not None:
        return 0, L
    boundary = c.is_boundary[x[:, :a]]  # (B, a): all known
    last = torch.where(boundary, torch.arange(a, device=x.device), -1).amax(1) if a else x.new_zeros(1)
    return max(0, int(last.min())), hi


def _confidence_score(logits: Tensor, tokens: Tensor, score: str, lo: int = 0) -> Tensor:
    """(B, L) confidence of each slot from its constrained logits (B, L, V), untempered (so greedy
    still ranks): log-prob of the drawn token, top-2 margin, minus the entropy, or (left_to_right)
    minus the slot's column, counted from `lo`, the window's first column in the piece."""
    if score == "left_to_right":
        col = torch.arange(lo, lo + logits.shape[1], device=logits.device, dtype=logits.dtype)
        return (-col).expand(logits.shape[:2])
    logp = torch.log_softmax(logits, dim=-1)  # (B, L, V); MASK and banned tokens: -inf
    if score == "logprob":
        return logp.gather(-1, tokens[..., None]).squeeze(-1)
    if score == "margin":
        top2 = logp.topk(2, dim=-1).values.exp()  # (B, L, 2); a slot with one allowed token: margin 1
        return top2[..., 0] - top2[..., 1]
    p = logp.exp()
    return (p * logp.masked_fill(p == 0, 0.0)).sum(-1)  # -H; 0 * -inf counts as 0


def _block_net(denoiser):
    """The block-diffusion Denoiser inside `denoiser` (bare or bound to collections), else None."""
    net = denoiser.net if isinstance(denoiser, WithCollection) else denoiser
    return net if getattr(getattr(net, "cfg", None), "block_diffusion", 0) else None


def _device(denoiser) -> torch.device:
    params = getattr(denoiser, "parameters", None)
    if params is not None:
        for p in params():
            return p.device
    return torch.device("cpu")


def initial_tokens(length: int, batch_size: int, fixed: Tensor | None, mask_id: int, device) -> Tensor:
    """All-MASK (B, L), with fixed tokens written in."""
    x = torch.full((batch_size, length), mask_id, dtype=torch.long, device=device)
    if fixed is None:
        return x
    fixed = torch.as_tensor(fixed, dtype=torch.long, device=device)
    if fixed.dim() == 1:
        fixed = fixed[None]
    if fixed.shape[-1] != length or fixed.shape[0] not in (1, batch_size):
        raise SmdimError(f"fixed has shape {tuple(fixed.shape)}; expected ({batch_size}, {length})")
    fixed = fixed.expand(batch_size, length)
    if (fixed == mask_id).any():
        raise SmdimError("fixed tokens contain MASK; mark free slots with -1 instead")
    return torch.where(fixed >= 0, fixed, x)


@contextmanager
def _eval_mode(module):
    """Dropout off while sampling; the caller's train/eval state is restored afterwards."""
    was_training = getattr(module, "training", False)
    if hasattr(module, "eval"):
        module.eval()
    try:
        yield
    finally:
        if was_training:
            module.train()
