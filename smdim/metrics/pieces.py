"""Feature sets: load pieces (Scores or MIDI paths), extract features, count what had to be skipped."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import symusic
from tqdm import tqdm

from smdim.metrics.features import ATTRIBUTES, UNREADABLE, NoFeatures, piece_features

# A Score object, or the path of a MIDI file (symusic.Score is a factory, not a type).
Piece = symusic.core.ScoreTick | symusic.core.ScoreQuarter | symusic.core.ScoreSecond | str | os.PathLike


@dataclass
class FeatureSet:
    """Features of the usable pieces of a set: attribute -> (N, D) array, plus skip counts."""

    features: dict[str, np.ndarray]
    n: int
    skipped: Counter = field(default_factory=Counter)
    scores: list[symusic.Score] = field(default_factory=list)  # the usable pieces, loaded

    @property
    def n_given(self) -> int:
        """Pieces given, usable or not."""
        return self.n + sum(self.skipped.values())

    def summary(self) -> dict[str, float]:
        """Mean of each scalar attribute (for the report); histograms are left out."""
        return {k: float(v.mean()) for k, v in self.features.items() if v.shape[1] == 1 and self.n}


def load_piece(piece: Piece) -> symusic.Score:
    """A Score as is, or a MIDI path loaded; raises NoFeatures(UNREADABLE) for a corrupt file."""
    if not isinstance(piece, (str, os.PathLike)):
        return piece
    try:
        return symusic.Score(str(Path(piece)))
    except Exception as e:  # symusic raises RuntimeError/ValueError on corrupt files
        raise NoFeatures(UNREADABLE) from e


def extract_features(pieces: Iterable[Piece], desc: str = "features") -> FeatureSet:
    """Features of every piece; empty, single-onset and unreadable pieces are skipped and counted."""
    rows: list[dict[str, np.ndarray]] = []
    scores: list[symusic.Score] = []
    skipped: Counter = Counter()
    items = list(pieces) if not isinstance(pieces, Sequence) else pieces
    for piece in tqdm(items, desc=desc, leave=False, disable=len(items) < 1000):
        try:
            score = load_piece(piece)
            rows.append(piece_features(score))
            scores.append(score)
        except NoFeatures as e:
            skipped[e.reason] += 1
    feats = {
        name: (np.stack([r[name] for r in rows]) if rows else np.zeros((0, dim)))  # (N, D)
        for name, dim in ATTRIBUTES.items()
    }
    return FeatureSet(feats, len(rows), skipped, scores)
