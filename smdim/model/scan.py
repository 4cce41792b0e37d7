"""Selective scan (Mamba's SSM recurrence): a fast chunked PyTorch scan and its sequential twin.

Both functions take mamba_ssm's `selective_scan_fn` arguments (without `cu_seqlens`):

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t      (per channel d, state n)
    y_t = <C_t, h_t> + D * u_t;   out = y * silu(z)

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
) -> Tensor | tuple[Tensor, Tensor]:
    """Sequential reference scan (one step per position; the test oracle).

    u: (B, D, L); delta: (B, D, L); A: (D, N); B: (B, N, L); C: (B, N, L); D: (D,);
    z: (B, D, L); delta_bias: (D,). Returns out (B, D, L) [and last_state (B, D, N)].
    """
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
    x = u.new_zeros((batch, dim, dstate))
    ys = []
    for i in range(u.shape[2]):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i]))
    y = torch.stack(ys, dim=2)  # (B, D, L)
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

    Inputs are time-major: delta, x: (L, B, D); Bm, C: (L, B, N); A: (D, N). Only h (L, B, D, N)
    is kept for backward; the decays are recomputed (cheaper than storing a second big tensor).
    Contractions over N go through einsum, which runs them ~4x faster here than batched matmul
    of (D, N) @ (N, 1) per position.
    """

    @staticmethod
    def forward(ctx, delta, A, Bm, C, x, chunk):  # noqa: D102
        L, batch, dim = delta.shape
        n = A.shape[1]
        a = (delta[..., None] * A).exp_()  # (L, B, D, N)
        b = x[..., None] * Bm[:, :, None, :]  # (L, B, D, N), becomes h
        h = _scan_(a.view(L, -1), b.view(L, -1), chunk).view(L, batch, dim, n)
        del a, b
        y = torch.einsum("lbdn,lbn->lbd", h, C)  # (L, B, D)
        ctx.save_for_backward(delta, A, Bm, C, x, h)
        ctx.chunk = chunk
        last = h[-1].clone()
        ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    def backward(ctx, dy, _dlast):  # noqa: D102
        delta, A, Bm, C, x, h = ctx.saved_tensors
        L = delta.shape[0]
        dy = dy.contiguous()
        dC = torch.einsum("lbd,lbdn->lbn", dy, h)  # (L, B, N)
        dh = dy[..., None] * C[:, :, None, :]  # (L, B, D, N) gradient reaching h_t from y_t
        # The gradient runs the recurrence backwards: g_t = dh_t + a_{t+1} g_{t+1}.
        a_next = torch.empty_like(h)  # a_{t+1} at t (zero past the end)
        a_next[-1].zero_()
        torch.mul(delta[1:, ..., None], A, out=a_next[:-1]).exp_()
        g = _scan_(a_next.view(L, -1), dh.view(L, -1), ctx.chunk, reverse=True).view_as(h)
        dx = torch.einsum("lbdn,lbn->lbd", g, Bm)  # (L, B, D)
        dB = torch.einsum("lbd,lbdn->lbn", x, g)  # (L, B, N)
        # d/d(delta_t A) = g_t * a_t * h_{t-1} for t >= 1 (0 at t = 0), built over a_next's
        # memory: row t-1 of it holds a_t, so dlog_t lands in row t-1.
        dlog = a_next[:-1]
        dlog.mul_(g[1:]).mul_(h[:-1])
        del g
        ddelta = torch.zeros_like(delta)
        ddelta[1:] = (dlog * A).sum(-1)  # (L, B, D)
        dA = (dlog * delta[1:, ..., None]).sum((0, 1))  # (D, N)
        return ddelta, dA, dB, dC, dx, None


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
) -> Tensor | tuple[Tensor, Tensor]:
    """Chunked parallel scan, same signature and shapes as `selective_scan_ref`.

    Memory: keeps the states, one (L, B, D, N) tensor in the compute dtype, for backward; the
    forward needs one more of that size while it runs (the decays), the backward two.
    """
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
    y, last = _SelectiveScanCore.apply(delta_t, A, B_t, C_t, x_t, chunk)
    y = y.permute(1, 2, 0)  # (B, D, L)
    out = y if D is None else y + u * D.to(compute)[:, None]
    if z is not None:
        out = out * F.silu(z.to(compute))
    out = out.to(dtype_in)
    return (out, last) if return_last_state else out


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
