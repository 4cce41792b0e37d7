"""Block diffusion (BD3-LM, Arriola et al. 2025) on the denoiser's own parts.

The window is cut into blocks of N tokens (`model.block_diffusion`). A block is denoised by
masked diffusion, like the whole window in SMDIM, but it reads only the clean blocks to its left:
the blocks are generated left to right, and within a block all tokens are drawn in parallel. Every
block of a training window is trained at once, each at its own noise level, by running the noised
window x_t and the clean window x0 side by side as one sequence of 2L tokens:

    [x_t (L) ; x0 (L)] embed -> strided conv: (B, 2Ls, D), Ls = L / stride
      attention mask (coarse positions, cb = N / stride per block):
        x_t block b  ->  x_t block b (both ways)  and  x0 blocks < b
        x0 block b   ->  x0 blocks <= b
      Mamba, the same rule (smdim.model.block_mamba): x_t's block b continues the causal scan
        of x0's first b blocks; the backward scan stays inside each block
      -> blocks (any order of Mamba / FFN / attention) -> transposed conv (B, 2L, D)
      -> token_attention x attention at token resolution, the same rule with blocks of N tokens
         (model.token_attention): a masked token reads each clean token before its block itself,
         not through stride-s summaries; over 2L tokens it costs stride^2 times a coarse layer
      -> refinement windows cut at block edges: a token's left neighbours in the block before come
         from x0, those in the block after are zeros (at sampling time they are not drawn yet)
      -> head on the x_t half: (B, L, V)

Both halves use positions 0..Ls-1 (rotary), so x_t block b and x0 block b sit at the same place.
A sampler calls it with x_t alone: the blocks left of the one being drawn are clean, so x_t serves
as x0 as well.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from smdim.model.attention import rotary
from smdim.model.block_mamba import block_causal_mamba
from smdim.model.refine import TokenRefiner
from smdim.model.strided import strided_conv, transposed_conv


def block_attention_mask(Ls: int, cb: int, key_mask: Tensor | None, device) -> Tensor:
    """Boolean mask (B or 1, 1, 2Ls, 2Ls), True = may attend, over [x_t ; x0] coarse positions."""
    idx = torch.arange(2 * Ls, device=device)
    noised = idx < Ls  # (2Ls,)
    blk = (idx % Ls) // cb
    same = blk[:, None] == blk[None, :]
    before = blk[None, :] < blk[:, None]  # key's block is left of the query's
    q_t, k_t = noised[:, None], noised[None, :]
    allow = (q_t & k_t & same) | (q_t & ~k_t & before) | (~q_t & ~k_t & (before | same))  # (2Ls, 2Ls)
    allow = allow[None] if key_mask is None else allow[None] & key_mask[:, None, :]  # (B, 2Ls, 2Ls)
    # Every row keeps itself, so a padded query never softmaxes over nothing.
    return (allow | torch.eye(2 * Ls, dtype=torch.bool, device=device))[:, None]


def masked_attention(att, x: Tensor, allow: Tensor, Ls: int, dropout: float) -> Tensor:
    """SelfAttention `att` on [x_t ; x0] (B, 2Ls, D) under `allow`, both halves at positions 0..Ls-1;
    `dropout` on the attention weights."""
    B, L2, D = x.shape
    q, k, v = att.qkv(x).view(B, L2, 3, att.n_heads, D // att.n_heads).permute(2, 0, 3, 1, 4)  # (B, H, 2Ls, hd)
    q = torch.cat([rotary(q[:, :, :Ls]), rotary(q[:, :, Ls:])], dim=2)
    k = torch.cat([rotary(k[:, :, :Ls]), rotary(k[:, :, Ls:])], dim=2)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=allow, dropout_p=dropout)
    return att.proj(y.transpose(1, 2).reshape(B, L2, D))


def block_refine(layer: TokenRefiner, h: Tensor, h_clean: Tensor, block: int) -> Tensor:
    """`layer` on (B, L, D) with its window cut at block edges: the left neighbours across an edge
    are h_clean's (the clean half), the right ones zeros."""
    B, L, D = h.shape
    nb, k, left = L // block, layer.kernel, layer.left
    right = k - 1 - left
    pad_left = h.new_zeros(B, nb, left, D)
    if left:
        # A kernel wider than a block reaches further back than one block: zeros there.
        take = min(left, block)
        pad_left[:, 1:, left - take:] = h_clean.reshape(B, nb, block, D)[:, :-1, block - take:]
    w = torch.cat([pad_left, h.reshape(B, nb, block, D), h.new_zeros(B, nb, right, D)], dim=2)
    c = layer.conv(w.reshape(B * nb, block + k - 1, D).transpose(1, 2))  # (B * nb, D, block)
    return h + layer.mlp(layer.norm(c.transpose(1, 2).reshape(B, L, D)))


def block_forward(net, x_t: Tensor, x0: Tensor, pad_mask: Tensor | None, collection: Tensor | None) -> Tensor:
    """Logits (B, L, V) for x_t (B, L) given the clean window x0 (B, L); `net` is a Denoiser with
    cfg.block_diffusion = N. A length that is not a multiple of N is padded on the right (padding
    is a later block, which no earlier one reads) and the logits cropped."""
    cfg = net.cfg
    B, L = x_t.shape
    N, s = cfg.block_diffusion, cfg.stride
    Lp = -(-L // N) * N
    real = torch.ones(B, L, dtype=torch.bool, device=x_t.device) if pad_mask is None else pad_mask.bool()
    if Lp > L:
        x_t, x0, real = F.pad(x_t, (0, Lp - L)), F.pad(x0, (0, Lp - L)), F.pad(real, (0, Lp - L))
    Ls = Lp // s
    real2 = torch.cat([real, real], dim=1)  # (B, 2Lp)
    emb = net.embed(torch.cat([x_t, x0], dim=1)) * real2[..., None]  # (B, 2Lp, D)
    h = strided_conv(emb, net.down.weight, net.down.bias)  # (B, 2Ls, D)
    real_s = real2.view(B, 2 * Ls, s).any(-1)  # (B, 2Ls): a coarse position with any real token
    if net.collection_embed is not None:
        if collection is None:
            collection = torch.zeros(B, dtype=torch.long, device=x_t.device)
        h = h + net.collection_embed(collection)[:, None, :]  # (B, 1, D)
    h = h * real_s[..., None]
    allow = block_attention_mask(Ls, N // s, real_s, x_t.device)  # (B, 1, 2Ls, 2Ls)
    lengths_s = real_s[:, :Ls].sum(1)  # (B,) real coarse positions in each half
    for block in net.blocks:
        for sub in block.sublayers:
            y = sub.norm(h)
            if sub.kind == "a":
                y = masked_attention(sub.layer, y, allow, Ls, sub.layer.dropout if net.training else 0.0)
            elif sub.kind == "m":
                y = block_causal_mamba(sub.layer, y, Ls, N // s, lengths_s)
            else:
                y = sub.layer(y)
            h = h + sub.drop(y)
        h = h * real_s[..., None]
    h = transposed_conv(h, net.up.weight, net.up.bias)  # (B, 2Lp, D)
    if cfg.skip:
        h = h + emb
    h = h * real2[..., None]
    if len(net.token_attn):
        allow_tok = block_attention_mask(Lp, N, real2, x_t.device)  # (B, 1, 2Lp, 2Lp)
        for sub in net.token_attn:
            # No dropout on the attention weights here (the sublayer's output dropout stays): with
            # it, CPU SDPA materialises (B, H, 2L, 2L) weights, 0.35 s of a 0.85 s step measured.
            h = h + sub.drop(masked_attention(sub.layer, sub.norm(h), allow_tok, Lp, 0.0))
            h = h * real2[..., None]
    h_t, h_0 = h[:, :Lp], h[:, Lp:]
    for layer in net.refine:
        h_t, h_0 = block_refine(layer, h_t, h_0, N), block_refine(layer, h_0, h_0, N)
        h_t, h_0 = h_t * real[..., None], h_0 * real[..., None]
    return net.head(net.norm(h_t[:, :L]))  # (B, L, V)
