"""Structure: the Section Recurrence Score (SRS) of one piece (after the PhraseVAE/PhraseLDM paper).

A bar is described by its note onsets on a grid: a binary (positions x 128 pitches) matrix with
`POSITIONS_PER_BEAT` positions per beat, flattened. The bar-level self-similarity matrix holds the
cosine similarity of every pair of bars (an empty bar is similar to nothing). Cells at or above
`threshold` (0.5) are marked. In the upper triangle, a diagonal run of marked cells (i, i+k),
(i+1, i+k+1), ... is bars i.. recurring k bars later; runs of >= `MIN_LINE` (4) bars count.
A run is left out when it is clustered: when most of its cells have a marked neighbour on the
adjacent diagonal in the same row ((i, i+k-1) or (i, i+k+1); the main diagonal is always marked),
a block of similar consecutive bars (a held texture), not a recurring section.
SRS = summed length of the counted runs / number of bars. AABA of distinct 4-bar sections: lines
A1-A2, A1-A3 and A2-A3 of 4 bars each -> 12 / 16 = 0.75; no repeat -> 0.
"""

from __future__ import annotations

import numpy as np
import symusic

from smdim.metrics.features import bar_starts, in_ticks, merged_notes

POSITIONS_PER_BEAT = 4  # onset grid of a bar (16th notes)
MIN_LINE = 4  # shortest recurring section, in bars


def bar_vectors(score: symusic.Score) -> np.ndarray:
    """Binary onset-grid vector of every bar from bar 0 to the last onset -> (B, positions * 128)."""
    score = in_ticks(score)
    notes = merged_notes(score)
    if len(notes["time"]) == 0:
        return np.zeros((0, 0))
    tpq = float(score.ticks_per_quarter)
    starts = bar_starts(score, int(notes["time"][-1]))  # (B,) ticks
    bar = np.searchsorted(starts, notes["time"], side="right") - 1  # (n,)
    longest = max(np.diff(starts).max(initial=0.0), 4 * tpq)  # ticks in the longest bar
    n_pos = int(np.ceil(longest / tpq * POSITIONS_PER_BEAT))
    pos = np.floor((notes["time"] - starts[bar]) / tpq * POSITIONS_PER_BEAT).astype(np.int64)
    grid = np.zeros((len(starts), max(n_pos, 1), 128))
    grid[bar, np.clip(pos, 0, grid.shape[1] - 1), notes["pitch"]] = 1.0
    return grid.reshape(len(starts), -1)


def self_similarity(vectors: np.ndarray) -> np.ndarray:
    """Cosine similarity of every pair of rows (B, F) -> (B, B); an all-zero row scores 0."""
    norm = np.linalg.norm(vectors, axis=1)
    unit = vectors / np.where(norm > 0, norm, 1.0)[:, None]
    return unit @ unit.T


def _runs(cells: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of every run of True in a 1-d boolean array."""
    padded = np.concatenate([[False], cells, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def srs_from_matrix(sim: np.ndarray, threshold: float = 0.5, min_line: int = MIN_LINE) -> float:
    """SRS of a (B, B) bar self-similarity matrix (see the module docstring); 0 for B < 2."""
    n = len(sim)
    if n < 2:
        return 0.0
    marked = sim >= threshold
    np.fill_diagonal(marked, True)
    total = 0
    for k in range(1, n):
        rows = np.arange(n - k)
        diag = marked[rows, rows + k]  # (n - k,)
        below = marked[rows, rows + k - 1]
        above = np.zeros(n - k, dtype=bool)
        above[: n - k - 1] = marked[rows[:-1], rows[:-1] + k + 1]
        for start, stop in _runs(diag):
            if stop - start < min_line:
                continue
            clustered = (below[start:stop] | above[start:stop]).mean()
            if clustered <= 0.5:
                total += stop - start
    return total / n


def n_bars(score: symusic.Score) -> int:
    """Bars from bar 0 to the one holding the last onset (0 for an empty piece)."""
    return len(bar_vectors(score))


def srs(score: symusic.Score, threshold: float = 0.5) -> float:
    """Section Recurrence Score of one piece."""
    vectors = bar_vectors(score)
    return srs_from_matrix(self_similarity(vectors), threshold) if len(vectors) else 0.0
