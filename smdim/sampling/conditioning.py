"""Conditioning = which tokens are fixed: `fixed` (B, L) holds a token id to keep, or -1 (free).

Fixed tokens are never masked nor changed by the samplers, so continuation and infilling need no
special training (post-hoc infilling in token space, as in Mittal et al. 2021).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from torch import Tensor

from smdim.errors import SmdimError

FREE = -1


def prefix_fixed(prefix: Sequence[int], length: int, batch_size: int = 1) -> Tensor:
    """Continue `prefix`: its tokens fixed at the start, the rest of `length` free. (B, L)."""
    if len(prefix) > length:
        raise SmdimError(f"prefix has {len(prefix)} tokens, more than the requested length {length}")
    fixed = torch.full((batch_size, length), FREE, dtype=torch.long)
    fixed[:, : len(prefix)] = torch.as_tensor(list(prefix), dtype=torch.long)
    return fixed


def span_fixed(tokens: Sequence[int], start: int, end: int, batch_size: int = 1) -> Tensor:
    """Infill tokens[start:end]: everything outside the span fixed. (B, len(tokens))."""
    if not 0 <= start <= end <= len(tokens):
        raise SmdimError(f"infill span [{start}, {end}) is outside the {len(tokens)} tokens")
    fixed = torch.as_tensor(list(tokens), dtype=torch.long).repeat(batch_size, 1)
    fixed[:, start:end] = FREE
    return fixed


def bar_starts(tokens: Sequence[int], bar_ids: Collection[int]) -> list[int]:
    """Token indices of the Bar tokens (bar k, 1-based, starts at index [k - 1])."""
    return [i for i, tok in enumerate(tokens) if tok in bar_ids]


def bar_span(tokens: Sequence[int], bar_ids: Collection[int], first: int, last: int) -> tuple[int, int]:
    """Token span [start, end) of bars first..last (1-based, inclusive), Bar tokens included."""
    starts = bar_starts(tokens, bar_ids)
    if first < 1 or last < first:
        raise SmdimError(f"bars {first}-{last}: expected 1 <= first <= last")
    if last > len(starts):
        raise SmdimError(f"bars {first}-{last} requested but the piece has only {len(starts)} bars")
    end = starts[last] if last < len(starts) else len(tokens)
    return starts[first - 1], end


def bar_infill_fixed(
    tokens: Sequence[int], bar_ids: Collection[int], first: int, last: int, batch_size: int = 1
) -> tuple[Tensor, tuple[int, int]]:
    """Infill bars first..last: free their content but keep every Bar token, so bar count and the
    bars after the span stay in place. Returns (fixed (B, L), (start, end))."""
    start, end = bar_span(tokens, bar_ids, first, last)
    fixed = span_fixed(tokens, start, end, batch_size)
    ids = torch.as_tensor(list(tokens), dtype=torch.long)
    is_bar = torch.zeros(len(tokens), dtype=torch.bool)
    is_bar[bar_starts(tokens, bar_ids)] = True
    fixed[:, is_bar] = ids[is_bar]
    return fixed, (start, end)
