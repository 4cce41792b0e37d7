"""SMDIM denoiser: tokens (B, L) -> logits over the vocabulary (B, L, V).

    embed (B, L, D)
      -> strided Conv1d, kernel = stride = s: (B, ceil(L/s), D)   attention now costs (L/s)^2
      -> n_blocks x Block (mfa by default)
      -> ConvTranspose1d back to (B, L, D) (+ the embedding, a skip that keeps token identity)
      -> refine_layers x TokenRefiner (B, L, D): token-level mixing over a few neighbours (causal
         window for autoregressive models)
      -> LayerNorm -> Linear head (B, L, V)

With `model.block_diffusion: N` the same parts run block diffusion instead (smdim.model.block_causal):
blocks of N tokens, each reading the clean blocks before it; `model.token_attention` adds attention
sublayers at token resolution there, between the transposed conv and the refinement layers.

The head scores every class including MASK and PAD: the x0-parameterised loss and the samplers
(smdim.diffusion / smdim.sampling) exclude MASK, so the network stays a plain classifier.

With `model.objective: autoregressive` the same network is causal: output i (the prediction of
token i + 1) sees tokens 0..i only. The blocks are causal, and the strided conv reads the input
shifted right by s - 1, so coarse position j covers tokens js - s + 1 .. js and feeds outputs
js .. js + s - 1 (the Hourglass trick); `step` then runs it one token at a time with a recurrent
state, one pass through the blocks per s tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from smdim.errors import SmdimError
from smdim.model.block_causal import block_forward
from smdim.model.blocks import Block, Sublayer
from smdim.model.config import ModelConfig
from smdim.model.refine import TokenRefiner
from smdim.model.strided import strided_conv, transposed_conv


def time_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal features of t in [0, 1]: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    angles = 1000.0 * t.float()[:, None] * freqs  # (B, half)
    emb = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return F.pad(emb, (0, dim - 2 * half))


class Denoiser(nn.Module):
    """x0-predicting network for absorbing diffusion; any length L >= 1."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size < 1:
            raise SmdimError("model.vocab_size is 0; set it from the tokenizer (len(tokenizer)) before building")
        self.cfg = cfg
        D, s = cfg.d_model, cfg.stride
        self.embed = nn.Embedding(cfg.vocab_size, D)
        self.down = nn.Conv1d(D, D, kernel_size=s, stride=s)
        self.time_mlp = (
            nn.Sequential(nn.Linear(D, D), nn.SiLU(), nn.Linear(D, D))
            if cfg.time_cond and not cfg.causal else None
        )
        # index 0: no collection (unconditional); 1..K: the collections of the train split
        self.collection_embed = nn.Embedding(cfg.n_collections + 1, D) if cfg.collection_cond else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_blocks))
        self.up = nn.ConvTranspose1d(D, D, kernel_size=s, stride=s)
        # block diffusion only: token-resolution attention over the clean prefix (block_causal)
        self.token_attn = nn.ModuleList(Sublayer("a", cfg) for _ in range(cfg.token_attention))
        self.refine = nn.ModuleList(TokenRefiner(D, cfg.refine_kernel, causal=cfg.causal)
                                    for _ in range(cfg.refine_layers))
        # zero at init: a fresh self-conditioned net computes what an unconditioned one does
        self.self_cond = nn.Linear(cfg.vocab_size, D, bias=False) if cfg.self_cond else None
        if self.self_cond is not None:
            nn.init.zeros_(self.self_cond.weight)
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, cfg.vocab_size)

    @property
    def uses_time(self) -> bool:
        """Whether forward reads t (if not, a cached sampler may skip unchanged steps)."""
        return self.cfg.time_cond

    @property
    def self_conditioned(self) -> bool:
        """Whether forward reads `prev`, the previous x0 prediction (model.self_cond)."""
        return self.self_cond is not None

    def forward(self, x: Tensor, t: Tensor | None = None, pad_mask: Tensor | None = None,
                collection: Tensor | None = None, prev: Tensor | None = None,
                clean: Tensor | None = None) -> Tensor:
        """x: (B, L) token ids; t: (B,) in [0, 1]; pad_mask: (B, L) True = real token;
        collection: (B,) indices (0 = none; None = all none), read when model.collection_cond;
        prev: (B, L, V) probabilities of the previous x0 prediction (None = none yet), read when
        model.self_cond; clean: (B, L) the clean window whose earlier blocks x's blocks read, for
        model.block_diffusion (training; None = x itself, as a sampler has it)."""
        if self.cfg.block_diffusion:
            return block_forward(self, x, x if clean is None else clean, pad_mask, collection)
        B, L = x.shape
        s = self.cfg.stride
        lengths = _right_padded_lengths(pad_mask)  # (B,) or None
        emb = self.embed(x)  # (B, L, D)
        if self.self_cond is not None and prev is not None:
            emb = emb + self.self_cond(prev.to(emb.dtype))  # (B, L, D)
        if pad_mask is not None:
            emb = emb * pad_mask[..., None]
        Ls = -(-L // s)  # ceil(L / s) positions after the strided conv
        if self.cfg.causal:  # s - 1 zeros in front: coarse j ends at token js (see module doc)
            h = F.pad(emb[:, : (Ls - 1) * s + 1], (0, 0, s - 1, 0))  # (B, Ls*s, D)
        else:
            h = F.pad(emb, (0, 0, 0, Ls * s - L))  # (B, Ls*s, D): zero tail
        h = strided_conv(h, self.down.weight, self.down.bias)  # (B, Ls, D)
        # A coarse position is real if any of its s tokens is (right padding keeps a prefix).
        mask_s = None if lengths is None else torch.arange(Ls, device=x.device) < -(-lengths[:, None] // s)
        lengths_s = None if lengths is None else -(-lengths // s)
        if self.time_mlp is not None:
            if t is None:
                raise SmdimError("model.time_cond is true but the denoiser got no t; pass t in [0, 1]")
            h = h + self.time_mlp(time_embedding(t, self.cfg.d_model))[:, None, :]
        if self.collection_embed is not None:
            if collection is None:
                collection = torch.zeros(B, dtype=torch.long, device=x.device)
            h = h + self.collection_embed(collection)[:, None, :]  # (B, 1, D)
        if mask_s is not None:
            h = h * mask_s[..., None]
        for block in self.blocks:
            h = block(h, mask_s, lengths_s)  # (B, Ls, D)
        h = transposed_conv(h, self.up.weight, self.up.bias)[:, :L]  # (B, L, D): crop the tail
        if self.cfg.skip:
            h = h + emb
        if pad_mask is not None:
            h = h * pad_mask[..., None]
        for layer in self.refine:
            h = layer(h, pad_mask)  # (B, L, D)
        return self.head(self.norm(h))  # (B, L, V)

    def step(self, token: Tensor, state: StreamState) -> Tensor:
        """Causal models: logits (B, V) predicting the token after `token` (B,), which sits at
        position state.pos; the same numbers as forward(...)[:, state.pos] (tests check it)."""
        if not self.cfg.causal:
            raise SmdimError("step() runs autoregressive models only (model.objective: autoregressive)")
        s, i = self.cfg.stride, state.pos
        emb = self.embed(token)  # (B, D)
        if state.window is None:
            state.window = emb.new_zeros(emb.shape[0], s, emb.shape[1])
            state.layers = [[{} for _ in block.sublayers] for block in self.blocks]
            state.refine = [None] * len(self.refine)
        state.window = torch.cat([state.window[:, 1:], emb[:, None]], dim=1)  # tokens i-s+1 .. i
        if i % s == 0:  # token js completes coarse position j: one pass through the blocks
            h = strided_conv(state.window, self.down.weight, self.down.bias)[:, 0]  # (B, D)
            if self.collection_embed is not None:
                c = state.collection if state.collection is not None else token.new_zeros(token.shape[0])
                h = h + self.collection_embed(c.to(token.device).expand(token.shape[0]))  # (B, D)
            for block, states in zip(self.blocks, state.layers, strict=True):
                h = block.step(h, states)
            state.up = transposed_conv(h[:, None], self.up.weight, self.up.bias)  # (B, s, D)
        h = state.up[:, i % s]  # (B, D)
        if self.cfg.skip:
            h = h + emb
        for k, layer in enumerate(self.refine):
            h, state.refine[k] = layer.step(h, state.refine[k])  # (B, D)
        state.pos += 1
        return self.head(self.norm(h))  # (B, V)


@dataclass
class StreamState:
    """What a causal model carries from token to token (start with StreamState())."""

    pos: int = 0  # position of the next token fed to `step`
    window: Tensor | None = None  # (B, s, D): embeddings of the last s tokens (zeros before 0)
    up: Tensor | None = None  # (B, s, D): upsampled output of the current coarse position
    layers: list[list[dict]] = field(default_factory=list)  # per block, per sublayer: its state
    refine: list[Tensor | None] = field(default_factory=list)  # per refinement layer: its last kernel - 1 inputs
    collection: Tensor | None = None  # (B,) or scalar collection indices (model.collection_cond; None = "none")


def _right_padded_lengths(pad_mask: Tensor | None) -> Tensor | None:
    """Lengths of a right-padding mask (True prefix per row); other masks are an error."""
    if pad_mask is None:
        return None
    lengths = pad_mask.sum(dim=1)  # (B,)
    prefix = torch.arange(pad_mask.shape[1], device=pad_mask.device)[None, :] < lengths[:, None]
    if not torch.equal(prefix, pad_mask.bool()):
        raise SmdimError("pad_mask must be right padding (True for the first n tokens of each row, then False)")
    if bool((lengths == 0).any()):
        raise SmdimError("pad_mask has a row with no real token; drop empty rows before the denoiser")
    return lengths
