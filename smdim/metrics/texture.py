"""Chord-texture statistics of a piece: do its voices hold, or start and stop?

A chorale keeps its four voices sounding: at almost every moment four notes sound. OA, the muspy
metrics and the top-line statistics (smdim/metrics/line.py) all pass a texture whose voices drop
in and out, because each of them summarises notes one at a time or the top line only. These read
the number of notes sounding on an eighth-note grid from the first onset to the last release:

- voice_steadiness: share of grid points where that number is the piece's most common one (1.0 =
  the same number of voices throughout, as in a chorale);
- thin_share: share of grid points where at most one note sounds (gaps in the texture).

Defined for chord textures only, pieces with on average at least CHORD_VOICES notes sounding; NaN
for the others (a folk melody is one voice by design), so a set's `n` counts its chord textures.
"""

from __future__ import annotations

import numpy as np
import symusic

from smdim.metrics.features import merged_notes

TEXTURE_METRICS = ("voice_steadiness", "thin_share")
CHORD_VOICES = 2.5  # mean notes sounding; the corpus's chorales average about 4, its folk songs 1


def sounding_counts(time: np.ndarray, duration: np.ndarray, step: int) -> np.ndarray:
    """Notes sounding at each grid point t0, t0 + step, ... before the last release: (n points,).
    A note sounds at g when time <= g < time + duration."""
    t0 = int(time.min())
    end = int((time + duration).max())
    n = -(-(end - t0) // step)
    first = -(-(time - t0) // step)  # first grid index at or after the onset
    stop = -(-(time + duration - t0) // step)  # first grid index at or after the release
    diff = np.zeros(n + 1, dtype=np.int64)
    np.add.at(diff, first, 1)
    np.add.at(diff, stop, -1)
    return np.cumsum(diff)[:n]


def piece_texture_metrics(score: symusic.Score) -> dict[str, float]:
    """TEXTURE_METRICS of one piece (NaN unless it is a chord texture)."""
    notes = merged_notes(score)
    nan = {m: float("nan") for m in TEXTURE_METRICS}
    if len(notes["time"]) < 2:
        return nan
    step = max(score.ticks_per_quarter // 2, 1)
    # Durations >= 1 tick: the last release is after the first onset, so there is a grid point.
    counts = sounding_counts(notes["time"], np.maximum(notes["duration"], 1), step)
    if counts.mean() < CHORD_VOICES:
        return nan
    usual = np.bincount(counts).argmax()
    return {"voice_steadiness": float((counts == usual).mean()), "thin_share": float((counts <= 1).mean())}
