"""Per-piece muspy metrics (Dong et al. 2020) and their set statistics (mean, sd, gap to test).

Each piece becomes a one-track `muspy.Music` at muspy's default resolution (24 ticks per beat):
all tracks merged, as for the OA features. Groove consistency compares neighbouring measures of
the first time signature's length (4/4 when there is none). muspy returns NaN where a metric is
undefined (e.g. groove consistency of a one-bar piece); set statistics skip those values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import muspy
import numpy as np
import symusic

from smdim.metrics.features import in_ticks, merged_notes

PieceMetrics = Callable[[symusic.Score], dict[str, float]]
RESOLUTION = muspy.DEFAULT_RESOLUTION  # ticks per beat of the muspy.Music
METRICS = (
    "pitch_class_entropy",
    "scale_consistency",
    "groove_consistency",
    "empty_beat_rate",
    "polyphony",
    "pitch_range",
    "n_pitches_used",
)


def to_muspy(score: symusic.Score) -> muspy.Music:
    """All notes of a Score in one muspy track at RESOLUTION ticks per beat (durations >= 1 tick)."""
    score = in_ticks(score)
    notes = merged_notes(score)
    scale = RESOLUTION / float(score.ticks_per_quarter)
    time = np.round(notes["time"] * scale).astype(np.int64)
    dur = np.maximum(np.round(notes["duration"] * scale).astype(np.int64), 1)
    track = muspy.Track(notes=[
        muspy.Note(time=int(t), pitch=int(p), duration=int(d), velocity=int(v))
        for t, p, d, v in zip(time, notes["pitch"], dur, notes["velocity"], strict=True)
    ])
    sigs = [muspy.TimeSignature(time=0, numerator=ts.numerator, denominator=ts.denominator)
            for ts in list(score.time_signatures)[:1] if ts.numerator > 0 and ts.denominator > 0]
    return muspy.Music(resolution=RESOLUTION, tracks=[track], time_signatures=sigs)


def piece_metrics(score: symusic.Score) -> dict[str, float]:
    """The METRICS of one piece (NaN where muspy leaves one undefined, all NaN without notes)."""
    music = to_muspy(score)
    if not music.tracks[0].notes:
        return {m: float("nan") for m in METRICS}
    ts = music.time_signatures[0] if music.time_signatures else None
    measure = RESOLUTION * 4 * ts.numerator // ts.denominator if ts else 4 * RESOLUTION
    return {
        "pitch_class_entropy": float(muspy.pitch_class_entropy(music)),
        "scale_consistency": float(muspy.scale_consistency(music)),
        "groove_consistency": float(muspy.groove_consistency(music, measure)),
        "empty_beat_rate": float(muspy.empty_beat_rate(music)),
        "polyphony": float(muspy.polyphony(music)),
        "pitch_range": float(muspy.pitch_range(music)),
        "n_pitches_used": float(muspy.n_pitches_used(music)),
    }


def set_metrics(scores: Iterable[symusic.Score], piece: PieceMetrics = piece_metrics,
                names: Sequence[str] = METRICS) -> dict[str, dict[str, float | None]]:
    """metric -> {"mean", "sd", "n"} over the pieces where it is defined (mean/sd None if none);
    `piece` computes the `names` of one piece (default: the muspy metrics)."""
    rows = [piece(s) for s in scores]
    out: dict[str, dict[str, float | None]] = {}
    for m in names:
        v = np.array([r[m] for r in rows], dtype=np.float64)
        v = v[np.isfinite(v)]
        out[m] = {"mean": float(v.mean()) if len(v) else None,
                  "sd": float(v.std(ddof=1)) if len(v) > 1 else None, "n": len(v)}
    return out


def set_summary(sets: Mapping[str, Sequence[symusic.Score]], piece: PieceMetrics = piece_metrics,
                names: Sequence[str] = METRICS) -> dict:
    """Statistics per set (e.g. generated, test, train) plus gap = generated mean - test mean, of
    the muspy metrics or of any other per-piece metrics (`piece`, `names`)."""
    out: dict = {name: set_metrics(scores, piece, names) for name, scores in sets.items()}
    gen, test = out.get("generated", {}), out.get("test", {})
    out["gap"] = {
        m: (gen[m]["mean"] - test[m]["mean"]
            if gen.get(m, {}).get("mean") is not None and test.get(m, {}).get("mean") is not None else None)
        for m in names
    }
    return out
