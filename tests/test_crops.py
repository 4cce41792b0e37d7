"""Training crops: deterministic from (seed, step), Bar-aligned, padded with a correct mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from smdim.errors import SmdimError
from smdim.training.crops import CropSampler, load_pieces, validation_batches

BAR, PAD = 4, 0


def piece(n_bars: int, bar_len: int, rng: np.random.Generator) -> np.ndarray:
    """A token stream of `n_bars` bars: Bar then `bar_len - 1` tokens in 5..99."""
    bars = [np.concatenate([[BAR], rng.integers(5, 100, bar_len - 1)]) for _ in range(n_bars)]
    return np.concatenate(bars)


@pytest.fixture
def pieces() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    long = [piece(int(rng.integers(8, 40)), int(rng.integers(6, 20)), rng) for _ in range(12)]
    short = [piece(2, 7, rng), piece(1, 5, rng)]  # 14 and 5 tokens: shorter than seq_len
    return long + short


def test_batch_is_pure_function_of_seed_and_step(pieces):
    a = CropSampler(pieces, seq_len=32, bar_id=BAR)
    b = CropSampler(list(pieces), seq_len=32, bar_id=BAR)
    # Different call histories, same (seed, step): same batch.
    for s in (0, 1, 2):
        a.batch(7, s, 8)
    x, y = a.batch(7, 5, 8), b.batch(7, 5, 8)
    assert torch.equal(x.tokens, y.tokens) and torch.equal(x.pad_mask, y.pad_mask)
    assert not torch.equal(a.batch(7, 6, 8).tokens, x.tokens)
    assert not torch.equal(a.batch(8, 5, 8).tokens, x.tokens)
    assert x.tokens.shape == (8, 32) and x.tokens.dtype == torch.int64
    assert x.pad_mask.dtype == torch.bool


def test_crops_are_bar_aligned_windows_of_the_pieces(pieces):
    s = CropSampler(pieces, seq_len=32, bar_id=BAR)
    texts = [",".join(map(str, p)) for p in pieces]
    for step in range(20):
        b = s.batch(1, step, 16)
        for row, m in zip(b.tokens, b.pad_mask, strict=True):
            real = row[m].tolist()
            assert real[0] == BAR, "every window of these pieces can start at a Bar"
            assert any(",".join(map(str, real)) in t for t in texts), "a contiguous piece window"


def test_short_pieces_are_padded_with_mask(pieces):
    short = pieces[-2:]
    s = CropSampler(short, seq_len=32, bar_id=BAR)
    b = s.batch(3, 0, 6)
    for row, m in zip(b.tokens, b.pad_mask, strict=True):
        n = int(m.sum())
        assert n in (len(short[0]), len(short[1]))
        assert m[:n].all() and not m[n:].any(), "real tokens first, then padding"
        assert (row[n:] == PAD).all()
        assert row[:n].tolist() in ([int(v) for v in short[0]], [int(v) for v in short[1]])


def test_long_bar_falls_back_to_any_offset():
    p = np.arange(5, 105)  # 100 tokens, no Bar at all
    s = CropSampler([p], seq_len=16, bar_id=BAR)
    b = s.batch(0, 0, 8)
    assert b.pad_mask.all()
    starts = (b.tokens[:, 0] - 5).tolist()
    assert all(0 <= st <= 84 for st in starts)
    assert all(torch.equal(r, torch.arange(st + 5, st + 21)) for r, st in zip(b.tokens, starts, strict=True))


def test_pieces_weighted_by_windows():
    rng = np.random.default_rng(0)
    long, short = piece(100, 10, rng), piece(1, 10, rng)  # 1000 vs 10 tokens
    s = CropSampler([long, short], seq_len=100, bar_id=BAR)
    full = torch.cat([s.batch(0, k, 64).pad_mask.all(1) for k in range(8)])
    # 10 windows vs 1: about 91% of rows come from the long piece (full windows).
    assert 0.8 < full.float().mean() < 0.98


def write_shard(directory: Path, rows: list[tuple[str, str, list[int]]]) -> None:
    """A Parquet shard with the contract's columns: (piece_id, split, tokens) per row."""
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.table({
        "dataset": pa.array(["test"] * len(rows), pa.string()),
        "piece_id": pa.array([r[0] for r in rows], pa.string()),
        "split": pa.array([r[1] for r in rows], pa.string()),
        "source_sha256": pa.array(["0" * 64] * len(rows), pa.string()),
        "n_tokens": pa.array([len(r[2]) for r in rows], pa.int32()),
        "n_bars": pa.array([r[2].count(BAR) for r in rows], pa.int32()),
        "tokens": pa.array([r[2] for r in rows], pa.list_(pa.int32())),
    })
    pq.write_table(table, directory / "shard-00000.parquet", compression="zstd")


def test_load_pieces_and_validation_batches(tmp_path, pieces):
    rows = [(f"p{i}", "valid" if i % 4 == 0 else "train", [int(v) for v in p]) for i, p in enumerate(pieces)]
    write_shard(tmp_path, rows)
    train = load_pieces(tmp_path, "train")
    valid = load_pieces(tmp_path, "valid")
    assert len(train) + len(valid) == len(pieces) and len(valid) == 4
    assert sorted(map(len, valid)) == sorted(len(p) for i, p in enumerate(pieces) if i % 4 == 0)
    s = CropSampler(valid, seq_len=32, bar_id=BAR)
    v1, v2 = validation_batches(s, 5, 3, 4), validation_batches(s, 5, 3, 4)
    assert all(torch.equal(a.tokens, b.tokens) for a, b in zip(v1, v2, strict=True))
    assert not torch.equal(v1[0].tokens, s.batch(5, 0, 4).tokens), "valid crops use their own stream"
    with pytest.raises(SmdimError, match="no pieces in split 'test'"):
        load_pieces(tmp_path, "test")


def test_slack_is_scattered_and_the_window_keeps_the_piece_in_order(pieces):
    SLACK = 3
    s = CropSampler(pieces, seq_len=32, bar_id=BAR, slack=0.2, slack_id=SLACK)
    texts = [",".join(map(str, p)) for p in pieces]
    n_slack = n_real = 0
    for step in range(20):
        b = s.batch(1, step, 16)
        for row, m in zip(b.tokens, b.pad_mask, strict=True):
            real = row[m]
            notes = real[real != SLACK].tolist()
            assert any(",".join(map(str, notes)) in t for t in texts), "the piece's tokens, in order"
            assert (row[~m] == PAD).all() and m[: int(m.sum())].all(), "slack only inside the real part"
            n_slack += int((real == SLACK).sum())
            n_real += len(real)
    assert 0.15 < n_slack / n_real < 0.25
    again = CropSampler(pieces, seq_len=32, bar_id=BAR, slack=0.2, slack_id=SLACK)
    assert torch.equal(again.batch(1, 4, 16).tokens, s.batch(1, 4, 16).tokens)
    with pytest.raises(SmdimError, match="SLACK"):
        CropSampler(pieces, seq_len=32, bar_id=BAR, slack=0.2)
