"""Deterministic train/valid/test assignment from a hash of the piece id and the seed."""

from __future__ import annotations

import hashlib

SPLITS = ("train", "valid", "test")


def assign_split(dataset: str, piece_id: str, seed: int, valid_fraction: float, test_fraction: float) -> str:
    """'train' | 'valid' | 'test' for one piece; independent of every other piece and of order."""
    digest = hashlib.sha256(f"{seed}\x00{dataset}\x00{piece_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    if u < test_fraction:
        return "test"
    if u < test_fraction + valid_fraction:
        return "valid"
    return "train"
