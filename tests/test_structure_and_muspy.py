"""SRS on constructed repeats and muspy metrics on a hand-built MIDI file, both with known answers."""

from __future__ import annotations

import math

import numpy as np
import pretty_midi
import pytest
import symusic

from smdim.metrics.muspy_metrics import METRICS, piece_metrics, set_summary
from smdim.metrics.structure import bar_vectors, n_bars, self_similarity, srs, srs_from_matrix

TPQ = 480


def sections_piece(bars: list[int]) -> symusic.Score:
    """4/4 bars of four quarter notes; bar content k = a pitch pattern unique to k (cosine 0 to others)."""
    s = symusic.Score(TPQ)
    t = symusic.Track("p")
    for b, k in enumerate(bars):
        for beat in range(4):
            t.notes.append(symusic.Note(b * 4 * TPQ + beat * TPQ, TPQ, 24 + 4 * k + beat, 80))
    s.tracks.append(t)
    return s


A, B, C, D = [0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]


@pytest.mark.parametrize(
    "bars, expected",
    [
        (A + A + B + A, 12 / 16),  # A1-A2, A1-A3, A2-A3: three 4-bar lines
        (A + B + C + D, 0.0),  # no repeat
        ([0] * 16, 0.0),  # one bar held: a block of similar consecutive bars, not a section
        (A + B + A + B, 8 / 16),  # AB recurs: one 8-bar line
        (A[:3] + B + A[:3] + C + D[:2], 0.0),  # a 3-bar repeat is too short
    ],
    ids=["AABA", "ABCD", "held", "ABAB", "short"],
)
def test_srs_on_constructed_repeats(bars, expected):
    piece = sections_piece(bars)
    assert n_bars(piece) == len(bars)
    assert srs(piece) == pytest.approx(expected)
    assert srs(piece.to("quarter")) == pytest.approx(expected)  # any time unit


def test_similarity_threshold_and_matrix():
    vecs = bar_vectors(sections_piece([0, 1, 0]))
    sim = self_similarity(vecs)
    np.testing.assert_allclose(sim, [[1, 0, 1], [0, 1, 0], [1, 0, 1]])
    # Half-matching bars: cosine 0.5 counts at threshold 0.5, not at 0.6.
    half = np.eye(10) + 0.5 * (np.eye(10, k=5) + np.eye(10, k=-5))
    assert srs_from_matrix(half, 0.5, min_line=4) == pytest.approx(5 / 10)
    assert srs_from_matrix(half, 0.6, min_line=4) == 0.0
    assert srs(symusic.Score(TPQ)) == 0.0  # no notes


@pytest.fixture
def tiny_midi(tmp_path):
    """pretty_midi at 120 bpm (a beat = 0.5 s): eighth notes on beats 0 1 2 (+ a chord) 4 5 6.5."""
    pm = pretty_midi.PrettyMIDI(resolution=TPQ, initial_tempo=120.0)
    inst = pretty_midi.Instrument(0)
    for beat, pitch in [(0, 60), (1, 64), (2, 67), (2, 72), (4, 62), (5, 65), (6.5, 61)]:
        inst.notes.append(pretty_midi.Note(velocity=90, pitch=pitch, start=beat * 0.5, end=beat * 0.5 + 0.25))
    pm.instruments.append(inst)
    path = tmp_path / "tiny.mid"
    pm.write(str(path))
    return path


def test_muspy_metrics_by_hand(tiny_midi):
    m = piece_metrics(symusic.Score(str(tiny_midi)))
    assert set(m) == set(METRICS)
    p = np.array([2, 1, 1, 1, 1, 1]) / 7  # pitch classes C C# D E F G, note counts
    assert m["pitch_class_entropy"] == pytest.approx(-(p * np.log2(p)).sum())
    assert m["scale_consistency"] == pytest.approx(6 / 7)  # C major holds all but C#
    # Onsets at 24 ticks/beat, 96 per 4/4 bar: bar 0 at 0 24 48, bar 1 at 0 24 60 -> 2 of 96 differ.
    assert m["groove_consistency"] == pytest.approx(1 - 2 / 96)
    # muspy counts the beats from each note's start to its end (inclusive): 8 beats, beat 3 empty.
    assert m["empty_beat_rate"] == pytest.approx(1 / 8)
    assert m["polyphony"] == pytest.approx(7 / 6)  # 7 notes x 12 ticks over 6 x 12 sounding ticks
    assert m["pitch_range"] == 12 and m["n_pitches_used"] == 7
    assert piece_metrics(symusic.Score(str(tiny_midi)).to("quarter")) == pytest.approx(m)


def test_muspy_summary_gap(tiny_midi):
    tiny = symusic.Score(str(tiny_midi))
    higher = symusic.Score(str(tiny_midi)).shift_pitch(12)
    out = set_summary({"generated": [tiny, tiny], "test": [tiny, higher], "train": [symusic.Score(TPQ)]})
    assert out["generated"]["pitch_range"] == {"mean": 12.0, "sd": 0.0, "n": 2}
    assert out["gap"]["scale_consistency"] == pytest.approx(0.0)
    assert out["train"]["polyphony"] == {"mean": None, "sd": None, "n": 0}  # no notes: undefined
    assert math.isclose(out["gap"]["n_pitches_used"], 0.0)
