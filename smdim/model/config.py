"""Typed configuration of the denoiser (params.yaml `model` section)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BlockType = Literal["mfa", "afm", "fma", "mfa2sa", "mamba", "transformer"]
BLOCK_TYPES: tuple[str, ...] = ("mfa", "afm", "fma", "mfa2sa", "mamba", "transformer")
Objective = Literal["diffusion", "autoregressive"]


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 0  # filled in by training from the tokenizer (len(tokenizer)); 0 = unset
    # diffusion: bidirectional x0-predicting denoiser; autoregressive: causal next-token model
    # from the same parts (causal Mamba and attention, causally shifted strided conv)
    objective: Objective = "diffusion"
    block: BlockType = "mfa"  # sublayer order per block: mfa | afm | fma | mfa2sa | mamba | transformer
    d_model: int = 128  # residual width (features per position after the strided conv)
    n_heads: int = 4  # attention heads; d_model must be divisible by it (head dim even for rotary)
    n_blocks: int = 2  # number of blocks (depth)
    stride: int = 4  # Conv1d stride = kernel: attention/Mamba run on ceil(L / stride) positions
    mamba_layers: int = 1  # Mamba layers inside each block that has one
    d_state: int = 16  # SSM state size N per channel
    d_conv: int = 4  # depthwise causal conv width inside Mamba
    expand: int = 2  # Mamba inner width = expand * d_model
    bidirectional: bool = True  # diffusion: forward + reversed scan summed (autoregressive: always causal)
    ffn_mult: int = 4  # FFN hidden width = ffn_mult * d_model
    dropout: float = 0.0  # dropout after attention, FFN and Mamba sublayers, in [0, 1)
    # dropout on the attention weights, in [0, 1); null = `dropout`. On CPU a nonzero value sends
    # scaled_dot_product_attention to its unfused path, which costs 21-35% of an hour preset's
    # attention-block step (fortieth round of docs/sampling_study.md)
    attention_dropout: float | None = None
    skip: bool = True  # add the token embedding to the upsampled features (keeps token identity)
    time_cond: bool = False  # diffusion: add an embedding of t; off keeps the sampler's cache valid
    # a learned vector per collection (embedded/han1, embedded/chorales, pop909, ...)
    # added at every position, so `smdim generate --collection` can ask for one; trained with
    # train.collection_dropout windows unconditional (the extra "none" vector)
    collection_cond: bool = True
    n_collections: int = 0  # filled in by training from the train split when collection_cond is on
    # Token-level layers after the transposed conv (depthwise conv over refine_kernel tokens + MLP),
    # so a masked token reads its decoded neighbours directly; 0 = none. A checkpoint saved before
    # this field existed has none (smdim.model.checkpoint).
    refine_layers: int = 1
    refine_kernel: int = 9  # window of each refinement layer, in tokens (odd; centred for diffusion)
    # diffusion: self-conditioning (Chen et al. 2022, "Analog Bits"): the network also reads its own
    # previous x0 prediction (probabilities over the vocabulary, zero when there is none); training
    # feeds it from a no-grad first pass on half the batches, the samplers from their last call
    self_cond: bool = False
    # diffusion: block diffusion (BD3-LM, Arriola et al. 2025) with blocks of this many tokens; the
    # blocks are denoised left to right, each reading the clean blocks before it and nothing after
    # (smdim.model.block_causal; any block: Mamba runs block-causally, smdim.model.block_mamba);
    # 0 = off, one bidirectional window (SMDIM)
    block_diffusion: int = 0
    # block diffusion: attention sublayers at token resolution after the transposed conv (before
    # the refinement layers), block-causal like the coarse ones (x_t's block b reads its own tokens
    # and x0's tokens before b), so a masked token reads every clean note of the prefix directly
    # instead of through stride-s summaries; 0 = none
    token_attention: int = 0
    scan_chunk: int = 32  # chunk of the fallback chunked scan (no C++ compiler, non-CPU); speed only

    @property
    def attention_weight_dropout(self) -> float:
        """The dropout probability on attention weights that `attention_dropout` resolves to."""
        return self.dropout if self.attention_dropout is None else self.attention_dropout

    @property
    def causal(self) -> bool:
        """Whether every output may only depend on the tokens at and before its position."""
        return self.objective == "autoregressive"

    def __post_init__(self) -> None:
        checks = [
            (self.vocab_size >= 0, "vocab_size must be >= 0"),
            (self.d_model >= 1, "d_model must be >= 1"),
            (self.n_heads >= 1, "n_heads must be >= 1"),
            (self.d_model % self.n_heads == 0, f"d_model {self.d_model} must be divisible by n_heads {self.n_heads}"),
            ((self.d_model // max(self.n_heads, 1)) % 2 == 0, "head dim d_model/n_heads must be even (rotary)"),
            (self.n_blocks >= 1, "n_blocks must be >= 1"),
            (self.stride >= 1, "stride must be >= 1"),
            (self.mamba_layers >= 1, "mamba_layers must be >= 1"),
            (self.d_state >= 1, "d_state must be >= 1"),
            (self.d_conv >= 1, "d_conv must be >= 1"),
            (self.expand >= 1, "expand must be >= 1"),
            (self.ffn_mult >= 1, "ffn_mult must be >= 1"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (self.attention_dropout is None or 0.0 <= self.attention_dropout < 1.0,
             "attention_dropout must be in [0, 1) or null (= dropout)"),
            (self.scan_chunk >= 2, "scan_chunk must be >= 2"),
            (self.n_collections >= 0, "n_collections must be >= 0"),
            (self.refine_layers >= 0, "refine_layers must be >= 0"),
            (self.refine_kernel >= 1 and self.refine_kernel % 2 == 1, "refine_kernel must be odd and >= 1"),
            (not (self.self_cond and self.objective == "autoregressive"), "self_cond is for diffusion only"),
            (self.block_diffusion >= 0, "block_diffusion must be >= 0 (0 = off)"),
            (self.token_attention >= 0, "token_attention must be >= 0 (0 = none)"),
            (not self.token_attention or self.block_diffusion,
             "token_attention needs model.block_diffusion (set it, or token_attention: 0)"),
        ]
        if self.block_diffusion:
            checks += [
                (self.objective == "diffusion", "block_diffusion is for model.objective: diffusion"),
                (self.block_diffusion % self.stride == 0,
                 f"block_diffusion {self.block_diffusion} must be a multiple of stride {self.stride}"),
                (not self.self_cond and not self.time_cond,
                 "block_diffusion works without self_cond and time_cond (set both false)"),
            ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
