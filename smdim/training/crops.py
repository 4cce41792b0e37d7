"""Training windows: deterministic, Bar-aligned random crops of `seq_len` tokens from the shards.

The batch at step k is a pure function of (seed, k): resuming at step k reproduces the exact data
order, and every DDP rank can rebuild the same global batch and keep its own slice of rows.

Short pieces are padded with PAD (id 0) and a `pad_mask` (True = real token) instead of being
packed: the denoiser is bidirectional, so packing would let attention and the Mamba scans mix
unrelated pieces inside one window.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from smdim.data.collections import collection_of
from smdim.data.shards import read_shards
from smdim.errors import SmdimError

# Streams keep train crops, validation crops and other per-step randomness independent.
TRAIN_STREAM = 0
VALID_STREAM = 1


@dataclass(frozen=True)
class Batch:
    """One batch of windows: `tokens` (B, L) int64, `pad_mask` (B, L) bool (True = real token),
    `collection` (B,) int64: each window's collection index (0 = none)."""

    tokens: torch.Tensor
    pad_mask: torch.Tensor
    collection: torch.Tensor

    def rows(self, start: int, stop: int) -> Batch:
        """Rows [start, stop) of the batch (a DDP rank's share)."""
        return Batch(self.tokens[start:stop], self.pad_mask[start:stop], self.collection[start:stop])


def step_rng(seed: int, step: int, stream: int) -> np.random.Generator:
    """A numpy Generator that depends only on (seed, step, stream), never on history."""
    return np.random.default_rng(np.random.SeedSequence([seed % 2**63, step, stream]))


class CropSampler:
    """Random `seq_len` windows from a set of token streams, starting at a Bar token when possible.

    `bar_id` is the Bar token's id, or the set of ids a bar starts with: with BPE, a Bar may be
    merged into longer tokens (smdim.tokenization.bpe.bar_start_ids).

    Pieces are drawn with probability proportional to the number of windows they hold
    (ceil(n_tokens / seq_len)), so every token is seen about equally often whether it sits in a
    short folk tune or a long chorale. A window starts at a uniformly chosen Bar token among
    those that leave a full window; a piece with no such Bar (shorter than `seq_len`, or a
    very long bar) starts at token 0 when short and at a uniform offset otherwise.
    """

    def __init__(self, pieces: list[np.ndarray], seq_len: int, bar_id: int | Collection[int], pad_id: int = 0,
                 labels: Sequence[int] | None = None, slack: float = 0.0, slack_id: int | None = None):
        if seq_len < 1:
            raise SmdimError(f"train.seq_len={seq_len}: must be >= 1")
        if labels is not None and len(labels) != len(pieces):
            raise SmdimError(f"{len(labels)} collection labels for {len(pieces)} pieces")
        keep = [i for i, p in enumerate(pieces) if len(p) > 0]
        self.labels = np.array([labels[i] if labels is not None else 0 for i in keep], dtype=np.int64)
        pieces = [np.asarray(pieces[i], dtype=np.int64) for i in keep]
        if not pieces:
            raise SmdimError("no non-empty pieces to crop from; check data/tokens (dvc repro tokenize)")
        if slack > 0 and slack_id is None:
            raise SmdimError("diffusion.slack > 0 needs a SLACK token; add SLACK to tokenize.special_tokens")
        self.seq_len = seq_len
        self.pad_id = pad_id
        self.slack, self.slack_id = slack, slack_id
        # One flat array + offsets: compact even for 10^8 tokens.
        self.lengths = np.array([len(p) for p in pieces], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        self.flat = np.concatenate(pieces)
        windows = np.ceil(self.lengths / seq_len)
        self.probs = windows / windows.sum()
        # Per piece: Bar positions that leave a full window after them.
        bar_ids = np.asarray(sorted(bar_id) if isinstance(bar_id, Collection) else [bar_id], dtype=np.int64)
        self.bar_starts = []
        for p, n in zip(pieces, self.lengths, strict=True):
            bars = np.flatnonzero(np.isin(p, bar_ids))
            self.bar_starts.append(bars[bars <= n - seq_len])

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def n_tokens(self) -> int:
        """Total number of tokens in the pieces."""
        return int(self.lengths.sum())

    def batch(self, seed: int, step: int, batch_size: int, stream: int = TRAIN_STREAM) -> Batch:
        """The global batch at `step`: a pure function of (seed, step, stream, batch_size)."""
        rng = step_rng(seed, step, stream)
        L = self.seq_len
        tokens = np.full((batch_size, L), self.pad_id, dtype=np.int64)  # (B, L)
        mask = np.zeros((batch_size, L), dtype=bool)  # (B, L)
        picks = rng.choice(len(self.lengths), size=batch_size, p=self.probs)
        for row, i in enumerate(picks):
            n = int(self.lengths[i])
            bars = self.bar_starts[i]
            if len(bars):
                start = int(bars[rng.integers(len(bars))])
            elif n > L:
                start = int(rng.integers(n - L + 1))
            else:
                start = 0
            k = min(L, n - start)
            o = int(self.offsets[i]) + start
            if self.slack > 0:
                self._scatter_slack(rng, tokens[row], mask[row], self.flat[o : o + k])
                continue
            tokens[row, :k] = self.flat[o : o + k]
            mask[row, :k] = True
        return Batch(torch.from_numpy(tokens), torch.from_numpy(mask), torch.from_numpy(self.labels[picks]))


    def _scatter_slack(self, rng: np.random.Generator, out: np.ndarray, real: np.ndarray, src: np.ndarray) -> None:
        """Fill one row: each slot is SLACK with probability `slack`, the others take `src` in order
        (the window holds fewer of the piece's tokens); slack after the piece's end becomes PAD."""
        is_slack = rng.random(len(out)) < self.slack  # (L,)
        slots = np.flatnonzero(~is_slack)[: len(src)]
        end = slots[-1] + 1 if len(slots) else 0
        out[:end] = self.slack_id
        out[slots] = src[: len(slots)]
        real[:end] = True


def load_pieces(tokens_dir: str | Path, split: str) -> list[np.ndarray]:
    """Token streams of one split of the Parquet shards in `tokens_dir`."""
    return load_split(tokens_dir, split)[0]


def load_split(tokens_dir: str | Path, split: str) -> tuple[list[np.ndarray], list[str]]:
    """Token streams of one split and each one's collection (smdim.data.collections)."""
    df = read_shards(tokens_dir, split=split, columns=["tokens", "dataset", "piece_id"])
    rows = [(np.asarray(t, dtype=np.int64), collection_of(d, p))
            for t, d, p in zip(df["tokens"], df["dataset"], df["piece_id"], strict=True) if len(t)]
    pieces, labels = [r[0] for r in rows], [r[1] for r in rows]
    if not pieces:
        raise SmdimError(
            f"{tokens_dir}: no pieces in split '{split}'; use a larger corpus or check the "
            "tokenize split parameters"
        )
    return pieces, labels


def validation_batches(
    sampler: CropSampler, seed: int, n_batches: int, batch_size: int
) -> list[Batch]:
    """A fixed list of validation batches (the same at every evaluation and after resume)."""
    return [sampler.batch(seed, i, batch_size, stream=VALID_STREAM) for i in range(n_batches)]
