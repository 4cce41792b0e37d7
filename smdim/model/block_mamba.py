"""Block-causal Mamba: the Mamba sublayer of block diffusion (smdim.model.block_causal).

Block diffusion runs the noised window x_t and the clean window x0 side by side, [x_t ; x0]
(B, 2Ls, D), in blocks of cb coarse positions. x_t's block b may read x0's blocks before b and its
own block, nothing later; x0's block b reads x0's blocks up to b. A Mamba layer keeps to that so:

    forward direction (causal):  x0's half is the plain causal Mamba of x0. x_t's block b continues
                                 x0's first b blocks: its conv window starts with x0's last d_conv-1
                                 positions before the block, its scan with x0's state there.
    backward direction (BiMamba): inside each block only (from the block's last real position).

So x_t's block b sees exactly what `Mamba(cat(x0[:b cb], x_t block b))` would: the reference twin
`block_causal_mamba_ref` computes it that way, one block at a time. The fast path scans each row
once, restarting at every block edge (the scan's `segment`) from the block's entering state. Those
are x0's states at block edges, S_{b+1} = P_b S_b + E_b, where E_b is x0 block b's end state from a
zero start and P_b its total decay: nb small steps of (B, d_inner, d_state), chained through the
scan's differentiable initial and last states. mamba_ssm's Mamba-1 kernels take no initial state,
so on a GPU this runs the chunked PyTorch scan.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from smdim.model.mamba import BiMamba, Mamba, depthwise_conv
from smdim.model.scan_cpu import selective_scan_cpu


def block_causal_mamba(layer: Mamba | BiMamba, hidden: Tensor, Ls: int, cb: int,
                       lengths: Tensor | None) -> Tensor:
    """`layer` on [x_t ; x0] (B, 2Ls, D) -> (B, 2Ls, D), block-causal with blocks of cb positions.

    lengths (B,): real positions per half (a right-padded prefix; None = all real)."""
    if not isinstance(layer, BiMamba):
        return blockwise(layer, hidden, Ls, cb, chained=True)
    # The backward direction: each block reversed within its real part (an involution).
    flip = block_reversal(hidden.shape[0], Ls, cb, lengths, hidden.device)[..., None].expand_as(hidden)
    back = blockwise(layer.bwd, hidden.gather(1, flip), Ls, cb, chained=False).gather(1, flip)
    return blockwise(layer.fwd, hidden, Ls, cb, chained=True) + back


def blockwise(m: Mamba, hidden: Tensor, Ls: int, cb: int, chained: bool) -> Tensor:
    """m on (B, 2Ls, D) with its conv and scan restarted at every block edge, from x0's conv inputs
    and state before the block (chained: the causal direction) or from zeros (not chained)."""
    B, nb, di, K = hidden.shape[0], Ls // cb, m.d_inner, m.d_conv
    x, z = m.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)  # (B, di, 2Ls) each
    if chained:  # block b (of either half) convolves x0's K - 1 positions before it first
        starts = torch.arange(nb, device=x.device)[:, None] * cb + torch.arange(K - 1, device=x.device)
        left = F.pad(x[..., Ls:], (K - 1, 0))[..., starts]  # (B, di, nb, K-1)
        left = torch.cat([left, left], dim=2)  # (B, di, 2nb, K-1)
    else:
        left = x.new_zeros(B, di, 2 * nb, K - 1)
    window = torch.cat([left, x.reshape(B, di, 2 * nb, cb)], dim=-1)  # (B, di, 2nb, K-1+cb)
    conv = depthwise_conv(window, m.conv1d.weight, m.conv1d.bias)  # (B, di, 2nb, cb)
    u = F.silu(conv.reshape(B, di, 2 * Ls))  # (B, di, 2Ls)
    dt, Bm, Cm = m.ssm_inputs(u)  # (B, di, 2Ls), (B, N, 2Ls) x 2
    A = -torch.exp(m.A_log.float())  # (di, N)
    bias = m.dt_proj.bias.float()
    h0 = None
    if chained:
        # x0's states at block edges: each block's end state from zero, chained by its decay.
        _, ends = selective_scan_cpu(u[..., Ls:], dt[..., Ls:], A, Bm[..., Ls:], Cm[..., Ls:],
                                     delta_bias=bias, delta_softplus=True, return_last_state=True,
                                     chunk=m.chunk, segment=cb)  # (B, di, nb, N)
        dt_0 = dt[..., Ls:].to(ends.dtype)  # the scan's compute dtype (float64 in the tests)
        span = F.softplus(dt_0 + bias.to(ends.dtype)[:, None]).view(B, di, nb, cb).sum(-1)
        decay = torch.exp(span[..., None] * A.to(ends.dtype)[:, None])  # (B, di, nb, N)
        # unbind, not ends[:, :, b]: each indexing op's backward would zero a full-size tensor
        ends_b, decay_b = ends.unbind(2), decay.unbind(2)
        states = [torch.zeros_like(ends_b[0])]
        for b in range(nb - 1):
            states.append(decay_b[b] * states[-1] + ends_b[b])
        enter = torch.stack(states, dim=2)  # (B, di, nb, N): x0's state entering block b
        h0 = torch.cat([enter, enter], dim=2)  # x_t's block b enters where x0's does
    y = selective_scan_cpu(u, dt, A, Bm, Cm, m.D.float(), z=z, delta_bias=bias, delta_softplus=True,
                           chunk=m.chunk, initial_state=h0, segment=cb)  # (B, di, 2Ls)
    return m.out_proj(y.transpose(1, 2).to(hidden.dtype))  # (B, 2Ls, D)


def block_reversal(B: int, Ls: int, cb: int, lengths: Tensor | None, device) -> Tensor:
    """(B, 2Ls) gather indices reversing every block of both halves within its real positions."""
    pos = torch.arange(2 * Ls, device=device)
    start = pos // cb * cb  # (2Ls,) first position of each one's block
    end = start + cb
    if lengths is not None:  # the same prefix in both halves
        half = (pos >= Ls).long() * Ls  # (2Ls,)
        end = torch.minimum(end[None], half[None] + lengths[:, None])  # (B, 2Ls)
    idx = start + end - 1 - pos
    return torch.where(pos < end, idx, pos).expand(B, 2 * Ls)


def block_causal_mamba_ref(layer: Mamba | BiMamba, hidden: Tensor, Ls: int, cb: int,
                           lengths: Tensor | None) -> Tensor:
    """Reference twin of `block_causal_mamba`, straight from the definition (the test oracle).

    Real positions match; positions past a row's length are left zero here."""
    fwd = layer.fwd if isinstance(layer, BiMamba) else layer
    B, nb = hidden.shape[0], Ls // cb
    x_t, x_0 = hidden[:, :Ls], hidden[:, Ls:]
    out_t = [fwd(torch.cat([x_0[:, :b * cb], x_t[:, b * cb:(b + 1) * cb]], dim=1))[:, b * cb:]
             for b in range(nb)]
    out = torch.cat(out_t + [fwd(x_0)], dim=1)  # (B, 2Ls, D)
    if isinstance(layer, BiMamba):
        back = torch.zeros_like(out)
        for r in range(B):
            n = Ls if lengths is None else int(lengths[r])
            for half in (0, Ls):
                for start in range(0, n, cb):
                    end = min(start + cb, n)
                    seg = hidden[r, half + start:half + end].flip(0)[None]
                    back[r, half + start:half + end] = layer.bwd(seg)[0].flip(0)
        out = out + back
    if lengths is not None:
        real = torch.arange(Ls, device=hidden.device)[None] < lengths[:, None]  # (B, Ls)
        out = out * torch.cat([real, real], dim=1)[..., None]
    return out
