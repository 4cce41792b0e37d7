"""Melodic-line statistics of a piece: is its top voice a melody, or a drone with stray notes?

OA and the muspy metrics summarise pitches and rhythm as distributions; none of them sees the
order of the notes. A piece that circles one reciting tone and one a fourth above can match the
corpus's used-pitch count and pitch-class histogram. These read the top line (the highest pitch
at each onset, i.e. the melody of a folk song and the soprano of a chorale):

- top_pitch_share: share of all notes on the piece's most frequent pitch (drones score high);
- step_share: share of successive top-line notes a semitone or a tone apart (stepwise motion);
- repeat_share: share of successive top-line notes on the same pitch;
- new_class_share: share of the top line's second-half notes whose pitch class its first half
  never used. A folk tune keeps to its mode, so in the corpus few late notes bring a new class; a
  model that loses the key as the piece goes on adds them, and OA's used-pitch count sees that
  only as "a pitch or two too many" (docs/sampling_study.md, thirty-eighth round).

Reported per set like the muspy metrics (mean, sd, gap to test); NaN for pieces with fewer than
two onsets.
"""

from __future__ import annotations

import numpy as np
import symusic

from smdim.metrics.features import merged_notes

LINE_METRICS = ("top_pitch_share", "step_share", "repeat_share", "new_class_share")


def top_line(time: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    """Highest pitch at each distinct onset, in time order: (n onsets,)."""
    order = np.lexsort((-pitch, time))  # by time, highest pitch first within an onset
    t, p = time[order], pitch[order]
    first = np.ones(len(t), dtype=bool)
    first[1:] = t[1:] != t[:-1]
    return p[first]


def piece_line_metrics(score: symusic.Score) -> dict[str, float]:
    """LINE_METRICS of one piece (all NaN with fewer than two onsets)."""
    notes = merged_notes(score)
    pitch = notes["pitch"].astype(np.int64)
    line = top_line(notes["time"].astype(np.int64), pitch)
    if len(line) < 2:
        return {m: float("nan") for m in LINE_METRICS}
    moves = np.abs(np.diff(line))
    half = len(line) // 2
    classes = line % 12
    return {
        "top_pitch_share": float(np.bincount(pitch).max() / len(pitch)),
        "step_share": float(((moves >= 1) & (moves <= 2)).mean()),
        "repeat_share": float((moves == 0).mean()),
        "new_class_share": float((~np.isin(classes[half:], classes[:half])).mean()),
    }
