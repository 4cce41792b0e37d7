"""Decode token ids back to a symusic Score / MIDI file, tolerating ill-formed sequences."""

from __future__ import annotations

import os

import miditok
from symusic import Score

from smdim.io import atomic_path
from smdim.tokenization.bpe import expand_ids


def musical_ids(tokenizer: miditok.REMI, ids: list[int]) -> list[int]:
    """`ids` without special tokens (PAD, BOS, EOS, MASK) and out-of-vocabulary values."""
    special = set(tokenizer.special_tokens_ids)
    n = len(tokenizer)
    return [int(i) for i in ids if 0 <= int(i) < n and int(i) not in special]


def tokens_to_score(tokenizer: miditok.REMI, ids: list[int]) -> Score:
    """Decode what is valid in `ids` into a Score (special and unknown ids are dropped; BPE ids
    are expanded to their base tokens first)."""
    clean = expand_ids(tokenizer, musical_ids(tokenizer, ids))
    if not clean:
        return Score(tokenizer.time_division)
    # Per-track REMI takes one list per track; a one-stream tokenizer takes the list itself.
    return tokenizer.decode(clean if tokenizer.one_token_stream else [clean])


def write_midi(tokenizer: miditok.REMI, ids: list[int], path: str | os.PathLike) -> None:
    """Decode `ids` and write a MIDI file atomically."""
    score = tokens_to_score(tokenizer, ids)
    with atomic_path(path) as tmp:
        score.dump_midi(str(tmp))
