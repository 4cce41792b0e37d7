"""Per-piece musical features for the Overlapping-Area evaluation (after mgeval, Yang & Lerch 2020).

All tracks of a score are merged into one note list; times are in beats (quarter notes, via the
score's ticks_per_quarter), so the features do not depend on tempo or on the MIDI resolution.

Where we follow or leave mgeval (RichardYang40148/mgeval, mgeval/core.py):
- used_pitch (`total_used_pitch`): number of distinct MIDI pitches. Same (mgeval reads a 100 Hz
  piano roll, which can miss notes shorter than 10 ms; we count every note).
- ioi (`avg_IOI`): mean gap between consecutive *distinct* onsets, in beats. mgeval sorts all note
  onsets without removing duplicates, so every chord adds zero gaps, and it measures in seconds.
  We drop the duplicates (the IOI of a chord progression is the chord spacing, not ~0) and use beats
  (generated pieces carry no meaningful tempo).
- pitch_class_histogram (`total_pitch_class_histogram`): 12 bins, sum 1, each note weighted by its
  duration in beats. mgeval weights by duration x velocity (a pretty_midi piano roll holds
  velocities); velocity is its own attribute here, so we keep it out of the histogram.
- pitch_range (`pitch_range`): highest minus lowest pitch, in semitones. Same.
- velocity: mean MIDI velocity of the notes. Not in mgeval; the SMDIM paper lists it, and the mean
  is the simplest per-piece summary (REMI quantises velocity, identically for generated pieces and
  for the decoded ground truth).
- note_duration: mean note duration in beats. mgeval has `note_length_hist` (12 note-value classes);
  the paper reports one scalar "note duration", so we use the mean.
- note_density: notes per bar, counted over the bars from the one holding the first onset to the
  one holding the last onset (inclusive), so leading silence and a crop's cut-off do not count as
  empty bars. Bars follow the score's time signatures; a score without any (or the part before the
  first one) uses 4/4, as mgeval's bar features do. Not in mgeval.
"""

from __future__ import annotations

import numpy as np
import symusic

# Feature name -> length of its vector (1 = scalar).
ATTRIBUTES: dict[str, int] = {
    "used_pitch": 1,
    "ioi": 1,
    "pitch_class_histogram": 12,
    "pitch_range": 1,
    "velocity": 1,
    "note_duration": 1,
    "note_density": 1,
}

# Why a piece yields no features (counted, never raised).
EMPTY = "empty"  # no notes
SINGLE_ONSET = "single_onset"  # fewer than two distinct onsets: IOI undefined
UNREADABLE = "unreadable"  # the MIDI file could not be parsed


class NoFeatures(Exception):
    """A piece has no usable features; `reason` is one of EMPTY, SINGLE_ONSET, UNREADABLE."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def in_ticks(score: symusic.Score) -> symusic.Score:
    """The score with tick times (converted if it is in quarters or seconds)."""
    return score if isinstance(score.ttype, symusic.core.Tick) else score.to("tick")


def merged_notes(score: symusic.Score) -> dict[str, np.ndarray]:
    """All tracks' notes as arrays (time, duration in ticks; pitch, velocity), sorted by onset."""
    score = in_ticks(score)
    parts = [t.notes.numpy() for t in score.tracks]
    keys = ("time", "duration", "pitch", "velocity")
    if not parts:
        return {k: np.zeros(0, dtype=np.int64) for k in keys}
    # int8 pitch/velocity in symusic: widen before any arithmetic.
    out = {k: np.concatenate([p[k] for p in parts]).astype(np.int64) for k in keys}
    order = np.argsort(out["time"], kind="stable")
    return {k: v[order] for k, v in out.items()}


def bar_starts(score: symusic.Score, until_tick: int) -> np.ndarray:
    """Tick positions of bar starts covering [0, until_tick], from the time signatures (4/4 default)."""
    tpq = score.ticks_per_quarter
    sigs: dict[int, tuple[int, int]] = {}
    for ts in score.time_signatures:  # a later signature at the same tick wins
        if ts.numerator > 0 and ts.denominator > 0:
            sigs[int(ts.time)] = (ts.numerator, ts.denominator)
    if 0 not in sigs:
        sigs[0] = (4, 4)
    times = sorted(sigs)
    starts = []
    for i, t0 in enumerate(times):
        t1 = times[i + 1] if i + 1 < len(times) else until_tick + 1
        if t0 > until_tick:
            break
        num, den = sigs[t0]
        bar = num * 4 / den * tpq  # ticks per bar
        starts.append(np.arange(t0, t1, bar, dtype=np.float64))
    return np.concatenate(starts)


def piece_features(score: symusic.Score) -> dict[str, np.ndarray]:
    """The 7 attributes of one piece, each a float vector (length per ATTRIBUTES); raises NoFeatures."""
    score = in_ticks(score)
    notes = merged_notes(score)
    n = len(notes["time"])
    if n == 0:
        raise NoFeatures(EMPTY)
    tpq = float(score.ticks_per_quarter)
    onsets = np.unique(notes["time"])  # sorted, distinct
    if len(onsets) < 2:
        raise NoFeatures(SINGLE_ONSET)
    pitch = notes["pitch"]
    dur_beats = notes["duration"] / tpq

    weights = np.clip(dur_beats, 0.0, None)
    if weights.sum() <= 0:  # only zero-length notes: fall back to counting them
        weights = np.ones(n)
    pch = np.bincount(pitch % 12, weights=weights, minlength=12)
    pch = pch / pch.sum()

    starts = bar_starts(score, int(onsets[-1]))
    bar_of = np.searchsorted(starts, notes["time"], side="right") - 1  # (n,)
    n_bars = int(bar_of.max() - bar_of.min() + 1)

    return {
        "used_pitch": np.array([len(np.unique(pitch))], dtype=np.float64),
        "ioi": np.array([np.diff(onsets).mean() / tpq]),
        "pitch_class_histogram": pch.astype(np.float64),
        "pitch_range": np.array([float(pitch.max() - pitch.min())]),
        "velocity": np.array([notes["velocity"].mean()], dtype=np.float64),
        "note_duration": np.array([dur_beats.mean()]),
        "note_density": np.array([n / n_bars]),
    }
