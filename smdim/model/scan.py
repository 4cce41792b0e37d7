"""Selective scan (Mamba's SSM recurrence): a fast chunked PyTorch scan and its sequential twin.

Both functions take mamba_ssm's `selective_scan_fn` arguments (without `cu_seqlens`):

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t      (per channel d, state n)
    y_t = <C_t, h_t> + D * u_t;   out = y * silu(z)

plus two of our own: `initial_state` (h_{-1}; zero without one) and `segment` (the recurrence
restarts every `segment` positions, each segment from its own initial state). The last states
are differentiable, so scans chain: block diffusion's block-causal Mamba (smdim.model.block_mamba)
starts each block of a row from the clean prefix's state.

The fast scan never loops over every position. The recurrence h_t = a_t h_{t-1} + b_t is solved
in two levels: a sequential pass over the K positions of a chunk, run for all chunks at once,
then the chunk-end states are scanned the same way (recursively, so the Python loop count is about
K + K + L/K^2), and each position adds its chunk-start state times the within-chunk cumulative
decay. Every factor is a product of decays in (0, 1], so nothing can overflow (unlike the
exp(+cumsum) log-space trick). The backward pass is the same scan run in reverse time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CHUNK = 32  # positions per chunk of the two-level scan; ~sqrt of typical lengths keeps loops short


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: Tensor | None = None,
    segment: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Sequential reference scan (one step per position; the test oracle).

    u: (B, D, L); delta: (B, D, L); A: (D, N); B: (B, N, L); C: (B, N, L); D: (D,);
    z: (B, D, L); delta_bias: (D,); initial_state: (B, D, N), h_{-1} (None = zero).
    Returns out (B, D, L) [and last_state (B, D, N)]. With `segment` (a divisor of L) the
    recurrence restarts every `segment` positions: initial_state and last_state are then
    (B, D, L / segment, N), one per segment.
    """
    check_segment(segment, u.shape[-1])
    dtype_in = u.dtype
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, B, C = (t.to(compute) for t in (u, delta, B, C))
    A = A.to(compute)
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].to(compute)
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, dstate = u.shape[0], A.shape[0], A.shape[1]
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    seg = u.shape[2] if segment is None else segment
    starts = None if initial_state is None else initial_state.to(compute)
    if starts is not None and segment is None:
        starts = starts[:, :, None]  # (B, D, 1, N)
    ys, lasts = [], []
    for i in range(u.shape[2]):
        if i % seg == 0:
            x = u.new_zeros((batch, dim, dstate)) if starts is None else starts[:, :, i // seg]
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i]))
        if i % seg == seg - 1:
            lasts.append(x)
    y = torch.stack(ys, dim=2)  # (B, D, L)
    x = lasts[-1] if segment is None else torch.stack(lasts, dim=2)
    out = y if D is None else y + u * D.to(compute)[:, None]
    if z is not None:
        out = out * F.silu(z.to(compute))
    out = out.to(dtype_in)
    return (out, x) if return_last_state else out


def _scan_(a: Tensor, b: Tensor, chunk: int, reverse: bool = False) -> Tensor:
    """h_t = a_t * h_{t-1} + b_t along dim 0 (h_{t+1} if reverse), zero start; a, b, h: (L, M).

    Overwrites b with h (and returns it, or a copy when b needed padding): every caller's b is a
    temporary, and writing the states over it saves an (L, M) allocation whose first touch (page
    faults) costs as much as the arithmetic.
    """
    a, b = a.contiguous(), b.contiguous()
    L, M = a.shape
    if L <= chunk:
        order = list(range(L - 1, -1, -1) if reverse else range(L))
        for prev, t in zip(order, order[1:], strict=False):
            b[t].addcmul_(a[t], b[prev])
        return b
    nc = -(-L // chunk)
    pad = nc * chunk - L
    if pad:  # b = 0 at the (processed first or last) tail leaves the states unchanged
        a = torch.cat([a, a.new_ones(pad, M)])
        b = torch.cat([b, b.new_zeros(pad, M)])
    a3, b3 = a.view(nc, chunk, M), b.view(nc, chunk, M)  # (nc, K, M)
    ks = list(range(chunk - 1, -1, -1) if reverse else range(chunk))
    # Pass 1 (reads a, b once): each chunk's end state from a zero start, and its total decay.
    state, decay = b3[:, ks[0]].clone(), a3[:, ks[0]].clone()  # (nc, M)
    for k in ks[1:]:
        state = torch.addcmul(b3[:, k], a3[:, k], state)
        decay.mul_(a3[:, k])
    # Chunk-end states obey the same recurrence over chunks (recursion keeps loops short).
    ends = _scan_(decay, state, chunk, reverse)  # (nc, M)
    init = torch.zeros_like(ends)  # state entering each chunk
    if reverse:
        init[:-1] = ends[1:]
    else:
        init[1:] = ends[:-1]
    # Pass 2: rerun every chunk from its true entering state, turning b into the states in place.
    b3[:, ks[0]].addcmul_(a3[:, ks[0]], init)
    for prev, k in zip(ks, ks[1:], strict=False):
        b3[:, k].addcmul_(a3[:, k], b3[:, prev])
    return b.view(nc * chunk, M)[:L]


class _SelectiveScanCore(torch.autograd.Function):
    """y_t = <C_t, h_t>, h_t = exp(delta_t A) h_{t-1} + x_t B_t, with a fused hand-written backward.

    Inputs are time-major: delta, x: (L, B, D); Bm, C: (L, B, N); A: (D, N); h0: (B, D, N) or None
    (h_{-1}; zero). Only h (L, B, D, N) is kept for backward; the decays are recomputed (cheaper
    than storing a second big tensor). The last state is differentiable, back to h0.
    Contractions over N go through einsum, which runs them ~4x faster here than batched matmul
    of (D, N) @ (N, 1) per position.
    """

    @staticmethod
    def forward(ctx, delta, A, Bm, C, x, chunk, h0):  # noqa: D102
        L, batch, dim = delta.shape
        n = A.shape[1]
        a = (delta[..., None] * A).exp_()  # (L, B, D, N)
        b = x[..., None] * Bm[:, :, None, :]  # (L, B, D, N), becomes h
        if h0 is not None:  # h_0 = a_0 h0 + b_0, then the zero-start scan from there
            b[0].addcmul_(a[0], h0)
        h = _scan_(a.view(L, -1), b.view(L, -1), chunk).view(L, batch, dim, n)
        del a, b
        y = torch.einsum("lbdn,lbn->lbd", h, C)  # (L, B, D)
        ctx.save_for_backward(delta, A, Bm, C, x, h, h0)
        ctx.chunk = chunk
        ctx.set_materialize_grads(False)
        return y, h[-1].clone()

    @staticmethod
    def backward(ctx, dy, dlast):  # noqa: D102
        delta, A, Bm, C, x, h, h0 = ctx.saved_tensors
        L = delta.shape[0]
        dy = torch.zeros_like(x) if dy is None else dy.contiguous()
        dC = torch.einsum("lbd,lbdn->lbn", dy, h)  # (L, B, N)
        dh = dy[..., None] * C[:, :, None, :]  # (L, B, D, N) gradient reaching h_t from y_t
        if dlast is not None:
            dh[-1] += dlast
        # The gradient runs the recurrence backwards: g_t = dh_t + a_{t+1} g_{t+1}.
        a_next = torch.empty_like(h)  # a_{t+1} at t (zero past the end)
        a_next[-1].zero_()
        torch.mul(delta[1:, ..., None], A, out=a_next[:-1]).exp_()
        g = _scan_(a_next.view(L, -1), dh.view(L, -1), ctx.chunk, reverse=True).view_as(h)
        dx = torch.einsum("lbdn,lbn->lbd", g, Bm)  # (L, B, D)
        dB = torch.einsum("lbd,lbdn->lbn", x, g)  # (L, B, N)
        dh0 = dlog0 = None
        if h0 is not None:  # h_0 = a_0 h0 + ...: h0 gets a_0 g_0, and delta_0 A gets g_0 a_0 h0
            a0 = (delta[0, ..., None] * A).exp()  # (B, D, N)
            dh0 = g[0] * a0
            dlog0 = dh0 * h0
        # d/d(delta_t A) = g_t * a_t * h_{t-1} for t >= 1 (0 at t = 0), built over a_next's
        # memory: row t-1 of it holds a_t, so dlog_t lands in row t-1.
        dlog = a_next[:-1]
        dlog.mul_(g[1:]).mul_(h[:-1])
        del g
        ddelta = torch.zeros_like(delta)
        ddelta[1:] = (dlog * A).sum(-1)  # (L, B, D)
        dA = (dlog * delta[1:, ..., None]).sum((0, 1))  # (D, N)
        if dlog0 is not None:
            ddelta[0] = (dlog0 * A).sum(-1)
            dA += (dlog0 * delta[0, ..., None]).sum(0)
        return ddelta, dA, dB, dC, dx, None, dh0


def selective_scan_fast(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    chunk: int = CHUNK,
    initial_state: Tensor | None = None,
    segment: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Chunked parallel scan, same signature and shapes as `selective_scan_ref`.

    Memory: keeps the states, one (L, B, D, N) tensor in the compute dtype, for backward; the
    forward needs one more of that size while it runs (the decays), the backward two.
    """
    check_segment(segment, u.shape[-1])
    if segment is not None and segment < u.shape[-1]:  # segments as rows of their own
        out, last = selective_scan_fast(
            *(_rows(t, segment) for t in (u, delta)), A, *(_rows(t, segment) for t in (B, C)), D,
            _rows(z, segment), delta_bias, delta_softplus, True, chunk,
            None if initial_state is None else initial_state.transpose(1, 2).flatten(0, 1))
        Bsz, nseg = u.shape[0], u.shape[-1] // segment
        out = out.view(Bsz, nseg, *out.shape[1:]).transpose(1, 2).flatten(2)  # (B, D, L)
        last = last.view(Bsz, nseg, *last.shape[1:]).transpose(1, 2)  # (B, D, nseg, N)
        return (out, last) if return_last_state else out
    if segment is not None and initial_state is not None:
        initial_state = initial_state[:, :, 0]  # one segment: (B, D, N)
    dtype_in = u.dtype
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, B, C = (t.to(compute) for t in (u, delta, B, C))
    A = A.to(compute)
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].to(compute)
    if delta_softplus:
        delta = F.softplus(delta)
    # Time-major so each scan step reads one contiguous (B*D*N) slab.
    delta_t = delta.permute(2, 0, 1).contiguous()  # (L, B, D)
    x_t = (delta * u).permute(2, 0, 1).contiguous()  # (L, B, D)
    B_t = B.permute(2, 0, 1).contiguous()  # (L, B, N)
    C_t = C.permute(2, 0, 1).contiguous()  # (L, B, N)
    h0 = None if initial_state is None else initial_state.to(compute).contiguous()
    y, last = _SelectiveScanCore.apply(delta_t, A, B_t, C_t, x_t, chunk, h0)
    y = y.permute(1, 2, 0)  # (B, D, L)
    out = y if D is None else y + u * D.to(compute)[:, None]
    if z is not None:
        out = out * F.silu(z.to(compute))
    out = out.to(dtype_in)
    if segment is not None:
        last = last[:, :, None]  # (B, D, 1, N)
    return (out, last) if return_last_state else out


def check_segment(segment: int | None, length: int) -> None:
    """A scan's `segment` must divide its length L (None: no segments)."""
    if segment is not None and (segment < 1 or length % segment):
        raise ValueError(f"selective scan: segment {segment} must be >= 1 and divide L = {length}")


def _rows(t: Tensor | None, segment: int) -> Tensor | None:
    """(B, C, L) -> (B * L / segment, C, segment): one row per segment."""
    if t is None:
        return None
    Bsz, ch, L = t.shape
    return t.reshape(Bsz, ch, L // segment, segment).transpose(1, 2).reshape(-1, ch, segment)


def scan_flops(batch: int, d_inner: int, length: int, d_state: int) -> dict[str, int]:
    """Elementwise FLOPs of one fast scan, which FlopCounterMode does not see: fwd and bwd.

    The benchmark counts on the meta device, where Mamba runs this chunked scan (the fused CPU
    kernel is one opaque op with the same work). FlopCounterMode does count the scan's contractions
    (y, dC, dx, dB run as matmuls); this adds
    the per-(b, d, l, n) elementwise work: fwd delta*A, exp, x*B, a*h+b (2) = 5; bwd dy*C,
    recomputed decay (2), reverse scan (2), d log a (2), its two reductions (4) = 11.
    """
    elems = batch * d_inner * length * d_state
    return {"forward": 5 * elems, "backward": 11 * elems}
