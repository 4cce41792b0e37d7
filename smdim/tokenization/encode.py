"""Encode one MIDI file into a single REMI token stream (all non-drum tracks merged)."""

from __future__ import annotations

import os

import miditok
from symusic import Score, Track


def merge_tracks(score: Score) -> Score:
    """A copy of `score` whose non-drum tracks are merged into one piano track (drums dropped)."""
    piano = Track(name="piano", program=0, is_drum=False, ttype="tick")
    for track in score.tracks:
        if not track.is_drum:
            piano.notes.extend(track.notes)
    piano.notes.sort()
    merged = score.copy()
    merged.tracks.clear()
    if len(piano.notes):
        merged.tracks.append(piano)
    return merged


def encode_score(tokenizer: miditok.REMI, score: Score, merge: bool = True) -> list[int]:
    """Token ids of one score as a single stream ([] when nothing is left to encode)."""
    if merge:
        score = merge_tracks(score)
    seqs = tokenizer.encode(score)
    if not isinstance(seqs, list):  # one_token_stream tokenizers (use_programs) give one sequence
        return list(seqs.ids)
    if len(seqs) > 1:
        raise ValueError(f"{len(seqs)} tracks give {len(seqs)} streams; encode with merge_tracks=True")
    return list(seqs[0].ids) if seqs else []


def encode_file(tokenizer: miditok.REMI, path: str | os.PathLike, merge_tracks: bool = True) -> list[int]:
    """Load a MIDI file with symusic and encode it into one token stream."""
    return encode_score(tokenizer, Score(str(path)), merge=merge_tracks)
