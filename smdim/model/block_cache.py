"""Block diffusion, one block at a time: the sampler's path, with the clean prefix cached.

A block-diffusion model (smdim.model.block_causal) lets x_t's block b read only x0's blocks
before b, and a sampler never changes a block once it is finished. So it need not run the whole
[x_t ; x0] window (2L tokens) on every call. `BlockCache` keeps what x0's finished blocks hand on,
layer by layer:

    attention       keys and values of x0's coarse positions so far   (B, H, P, hd)
    Mamba (causal)  the conv's last d_conv - 1 inputs and the scan's state at the block edge
                    (B, d_inner, d_conv - 1), (B, d_inner, d_state)
    token attention keys and values of x0's tokens so far                      (B, H, pos, hd)
    refinement      the clean stream's last `left` inputs before the block   (B, left, D)

`block_logits` runs one block of N tokens against it: attention reads P + N/s keys, Mamba scans
N/s positions from the cached state, and the backward Mamba stays inside the block, as in
training. So a call costs O(N) (plus the attention over the prefix) instead of O(L), and a piece
of L tokens costs O(L) calls of that size. `commit=True` runs a finished block as x0 (x0's block b
reads x0's blocks up to b, the rule x_t's block b follows with its own tokens) and appends it.

The logits equal `block_forward`'s for that block, given the same clean blocks before it
(tests/test_block_cache.py, float64, every block type).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from smdim.errors import SmdimError
from smdim.model.mamba import BiMamba, Mamba, depthwise_conv
from smdim.model.scan_cpu import selective_scan_cpu
from smdim.model.strided import strided_conv, transposed_conv


@dataclass
class BlockCache:
    """x0's finished blocks as the layers see them (start with BlockCache(collection=...))."""

    collection: Tensor | None = None  # (B,) collection indices (model.collection_cond; None = "none")
    pos: int = 0  # tokens committed; a multiple of the block length
    layers: list[list[dict]] = field(default_factory=list)  # per block, per sublayer: its state
    refine: list[Tensor] = field(default_factory=list)  # per refinement layer: (B, left, D)
    tokens: list[dict] = field(default_factory=list)  # per token-attention layer: its keys and values


def block_logits(net, cache: BlockCache, tokens: Tensor, commit: bool = False) -> Tensor:
    """Logits (B, n, V) for the block `tokens` (B, n) at position cache.pos, given the committed
    blocks; n = N, or fewer for a piece's last block. commit: also append the block as clean."""
    cfg = net.cfg
    N, s = cfg.block_diffusion, cfg.stride
    B, n = tokens.shape
    if not N or not 0 < n <= N or cache.pos % N:
        raise SmdimError(f"block_logits runs blocks of model.block_diffusion = {N} tokens at block "
                         f"edges (got {n} tokens at position {cache.pos})")
    if not cache.layers:
        cache.layers = [[{} for _ in block.sublayers] for block in net.blocks]
    emb = net.embed(tokens)  # (B, n, D)
    r = -(-n // s)  # coarse positions; a last block's padding tokens embed as zeros, as in training
    h = strided_conv(F.pad(emb, (0, 0, 0, r * s - n)), net.down.weight, net.down.bias)  # (B, r, D)
    if net.collection_embed is not None:
        c = cache.collection if cache.collection is not None else tokens.new_zeros(B)
        h = h + net.collection_embed(c.to(tokens.device).expand(B))[:, None, :]
    for block, states in zip(net.blocks, cache.layers, strict=True):
        for sub, state in zip(block.sublayers, states, strict=True):
            y = sub.norm(h)
            if sub.kind == "a":
                y = sub.layer.extend(y, state, keep=commit)  # the block reads the cached keys
            elif sub.kind == "m":
                y = _mamba(sub.layer, y, state, commit)
            else:
                y = sub.layer(y)
            h = h + y  # (B, r, D)
    h = transposed_conv(h, net.up.weight, net.up.bias)[:, :n]  # (B, n, D)
    if cfg.skip:
        h = h + emb
    if not cache.tokens:
        cache.tokens = [{} for _ in net.token_attn]
    for sub, state in zip(net.token_attn, cache.tokens, strict=True):
        h = h + sub.layer.extend(sub.norm(h), state, keep=commit)  # reads x0's tokens so far
    if not cache.refine:
        cache.refine = [h.new_zeros(B, layer.left, h.shape[-1]) for layer in net.refine]
    for k, layer in enumerate(net.refine):
        # The window is cut at the block edge: left neighbours from x0 (cached), right ones zeros.
        right = layer.kernel - 1 - layer.left
        w = torch.cat([cache.refine[k], h, h.new_zeros(B, right, h.shape[-1])], dim=1)
        c = layer.conv(w.transpose(1, 2)).transpose(1, 2)  # (B, n, D)
        if commit:  # a kernel wider than a block reads zeros beyond it, as in training
            take = min(layer.left, n)
            past = torch.zeros_like(cache.refine[k])
            past[:, layer.left - take:] = h[:, n - take:]
            cache.refine[k] = past
        h = h + layer.mlp(layer.norm(c))
    if commit:
        cache.pos += N
    return net.head(net.norm(h))  # (B, n, V)


def _mamba(layer: Mamba | BiMamba, x: Tensor, state: dict, commit: bool) -> Tensor:
    """The block-causal Mamba for one block (B, r, D): the causal direction continues x0's conv
    inputs and scan state; the backward one runs inside the block from zeros."""
    fwd = layer.fwd if isinstance(layer, BiMamba) else layer
    out = _continued(fwd, x, state, commit)
    if isinstance(layer, BiMamba):
        out = out + layer.bwd(x.flip(1)).flip(1)
    return out


def _continued(m: Mamba, hidden: Tensor, state: dict, commit: bool) -> Tensor:
    """Mamba `m` on (B, r, D), starting from state["conv"] (B, di, K-1) and state["ssm"] (B, di, N)."""
    B, K = hidden.shape[0], m.d_conv
    x, z = m.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)  # (B, di, r) each
    left = state.get("conv", x.new_zeros(B, m.d_inner, K - 1))
    window = torch.cat([left, x], dim=-1)  # (B, di, K-1+r)
    u = F.silu(depthwise_conv(window, m.conv1d.weight, m.conv1d.bias))  # (B, di, r)
    dt, Bm, Cm = m.ssm_inputs(u)
    y, last = selective_scan_cpu(u, dt, -torch.exp(m.A_log.float()), Bm, Cm, m.D.float(), z=z,
                                 delta_bias=m.dt_proj.bias.float(), delta_softplus=True,
                                 return_last_state=True, chunk=m.chunk, initial_state=state.get("ssm"))
    if commit:
        state["conv"], state["ssm"] = window[..., window.shape[-1] - (K - 1):], last
    return m.out_proj(y.transpose(1, 2).to(hidden.dtype))  # (B, r, D)
