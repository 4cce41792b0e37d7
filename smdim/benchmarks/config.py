"""Typed configuration of the efficiency benchmark (params.yaml `benchmark` section)."""

from __future__ import annotations

from dataclasses import dataclass, field

from smdim.model.config import BLOCK_TYPES


@dataclass(frozen=True)
class BenchmarkConfig:
    blocks: list[str] = field(default_factory=lambda: list(BLOCK_TYPES))  # block types to time
    transformer_s1: bool = True  # also time `transformer` at stride 1 (plain SCHmUBERT-like)
    lengths: list[int] = field(default_factory=lambda: [512, 1024, 2048, 4096, 8192, 16384])  # tokens
    d_model: int = 64  # width, equal for every block type
    n_heads: int = 4  # attention heads
    n_blocks: int = 2  # depth, equal for every block type
    stride: int = 4  # conv stride of every row except transformer_s1
    d_state: int = 16  # Mamba state size
    expand: int = 2  # Mamba inner width multiplier
    vocab_size: int = 512  # vocabulary of the synthetic tokens
    batch_size: int = 1  # sequences per training step
    repeats: int = 3  # timed training steps per cell after one warm-up step (min is reported)
    threads: int = 1  # torch threads per worker; 1 is fairest on a shared 2-core machine, 0 = default
    time_budget: float = 20.0  # seconds: skip a cell whose predicted step time exceeds this
    memory_budget_gb: float = 6.0  # GiB: skip a cell whose predicted peak memory exceeds this
    row_timeout: float = 240.0  # seconds: wall-clock cap for one block type's worker process
    sample_steps: int = 4  # denoiser calls per sampling run (time per token is reported)
    sample_max_length: int = 16384  # tokens: longest length at which sampling is timed
    scan_lengths: list[int] = field(default_factory=lambda: [1024, 2048, 4096, 8192, 16384])  # scan speed
    scan_d_inner: int = 128  # channels of the scan speed test (= expand * d_model)
    scan_batch: int = 1  # batch of the scan speed test
    scan_ref_budget: float = 10.0  # seconds: run the sequential reference only if predicted below

    def __post_init__(self) -> None:
        unknown = [b for b in self.blocks if b not in BLOCK_TYPES]
        if unknown:
            raise ValueError(f"blocks: unknown block type {unknown[0]!r}; choose from {', '.join(BLOCK_TYPES)}")
        if not self.lengths or min(self.lengths) < 1:
            raise ValueError("lengths must be a non-empty list of positive integers")
        if not self.scan_lengths or min(self.scan_lengths) < 1:
            raise ValueError("scan_lengths must be a non-empty list of positive integers")
        positive = ("d_model", "n_heads", "n_blocks", "stride", "d_state", "expand", "vocab_size",
                    "batch_size", "repeats", "sample_steps", "scan_d_inner", "scan_batch")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.threads < 0:
            raise ValueError("threads must be >= 0 (0 = torch default)")
        for name in ("time_budget", "memory_budget_gb", "row_timeout", "scan_ref_budget"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
