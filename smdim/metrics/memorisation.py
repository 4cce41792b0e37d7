"""Melody memorisation: does a generated piece copy one training song? (after PhraseVAE/PhraseLDM).

The melody of a piece is its top line (highest pitch at each distinct onset), taken as pitch
intervals so a transposed copy still counts. A piece is summarised by its set of interval n-grams.
Distance to a training song = 1 - the share of the piece's n-grams found in that song
(containment, not Jaccard: a generated crop fully inside a long song is a copy).
A piece is memorised when its closest training song is much closer than the runner-up:
d1 / d2 < 1/3 (PhraseLDM's rule) — one specific song, not a common idiom shared by many.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import symusic

from smdim.metrics.features import merged_notes

RATIO = 1.0 / 3.0


def melody_ngrams(score: symusic.Score, n: int = 4) -> frozenset[tuple[int, ...]]:
    """Interval n-grams of the top line (highest pitch per distinct onset); empty if too short."""
    notes = merged_notes(score)
    if len(notes["time"]) == 0:
        return frozenset()
    onsets, first = np.unique(notes["time"], return_index=True)
    top = np.maximum.reduceat(notes["pitch"], first)  # notes are sorted by onset
    iv = np.diff(top)
    return frozenset(tuple(int(v) for v in iv[i : i + n]) for i in range(len(iv) - n + 1))


def memorisation(
    generated: Iterable[frozenset], training: Sequence[frozenset], ratio: float = RATIO
) -> dict[str, float | int]:
    """Share of generated pieces memorised (d1/d2 < ratio) and their mean best containment."""
    train = [t for t in training if t]
    if len(train) < 2:
        raise ValueError("memorisation needs at least two training pieces with a melody")
    flags, best = [], []
    for g in generated:
        if not g:
            continue
        d = np.sort([1.0 - len(g & t) / len(g) for t in train])
        d1, d2 = d[0], d[1]
        flags.append(bool(d2 > 0 and d1 / d2 < ratio))
        best.append(1.0 - d1)
    if not flags:
        return {"rate": 0.0, "max_similarity": 0.0, "n": 0}
    return {"rate": float(np.mean(flags)), "max_similarity": float(np.mean(best)), "n": len(flags)}
