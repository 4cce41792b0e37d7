"""Metrics: per-piece features (hand-checked), the OA procedure, and OA on real POP909 songs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import symusic
from scipy import stats

from smdim.config import build, load_section
from smdim.data.manifest import midi_files
from smdim.errors import ConfigError
from smdim.metrics.config import EvaluateConfig
from smdim.metrics.evaluate import evaluate
from smdim.metrics.features import ATTRIBUTES, EMPTY, SINGLE_ONSET, NoFeatures, piece_features
from smdim.metrics.oa import (
    attribute_oa,
    inter_set_distances,
    intra_set_distances,
    is_constant,
    mean_oa,
    overlap_area,
    set_oa,
)
from smdim.metrics.pieces import extract_features
from smdim.metrics.reference import crop_ids, select_pieces

ROOT = Path(__file__).resolve().parents[1]


def make_score(tracks: list[list[tuple[int, int, int, int]]], tpq: int = 480, time_sig=None):
    """A Score from (time, duration, pitch, velocity) tuples per track, in ticks at `tpq`."""
    s = symusic.Score(tpq)
    for i, notes in enumerate(tracks):
        t = symusic.Track(f"t{i}")
        for time, dur, pitch, vel in notes:
            t.notes.append(symusic.Note(time * tpq // 480, dur * tpq // 480, pitch, vel))
        s.tracks.append(t)
    if time_sig:
        s.time_signatures.append(symusic.TimeSignature(0, *time_sig))
    return s


# Two tracks, merged: onsets 0, 480, 960, 3840 ticks (480 = one beat).
HAND = [
    [(0, 480, 60, 100), (480, 240, 64, 80), (960, 960, 67, 60)],
    [(0, 960, 48, 40), (3840, 480, 72, 120)],
]


@pytest.mark.parametrize("tpq", [480, 96], ids=["tpq480", "tpq96"])
def test_features_by_hand(tpq):
    f = piece_features(make_score(HAND, tpq))
    assert f["used_pitch"][0] == 5  # 48 60 64 67 72
    assert f["ioi"][0] == pytest.approx((1 + 1 + 6) / 3)  # distinct onsets 0, 1, 2, 8 beats
    assert f["pitch_range"][0] == 24
    assert f["velocity"][0] == pytest.approx(80)
    assert f["note_duration"][0] == pytest.approx((1 + 0.5 + 2 + 2 + 1) / 5)
    assert f["note_density"][0] == pytest.approx(5 / 3)  # 4/4 default: bars 0, 0, 0, 0, 2
    pch = np.zeros(12)
    pch[0], pch[4], pch[7] = 1 + 2 + 1, 0.5, 2  # duration-weighted pitch classes C, E, G
    np.testing.assert_allclose(f["pitch_class_histogram"], pch / 6.5)
    assert {k: v.shape[0] for k, v in f.items()} == ATTRIBUTES


def test_note_density_uses_time_signature():
    # 2/4: a bar is 2 beats, so onsets at beats 0, 1, 2, 8 fall in bars 0, 0, 1, 4 -> 5 bars.
    f = piece_features(make_score(HAND, time_sig=(2, 4)))
    assert f["note_density"][0] == pytest.approx(5 / 5)
    # Leading silence does not count: the same piece shifted by 3 bars has the same density.
    shifted = [[(t + 3 * 1920, d, p, v) for t, d, p, v in tr] for tr in HAND]
    assert piece_features(make_score(shifted))["note_density"][0] == pytest.approx(5 / 3)


def test_pieces_without_features_are_skipped_and_counted(shared_data):
    chord = make_score([[(0, 480, 60, 90), (0, 480, 64, 90)]])
    with pytest.raises(NoFeatures) as e:
        piece_features(chord)
    assert e.value.reason == SINGLE_ONSET
    with pytest.raises(NoFeatures) as e:
        piece_features(symusic.Score(str(shared_data / "bad-midi" / "empty.mid")))
    assert e.value.reason == EMPTY
    good = midi_files(shared_data / "pop909")[0]
    fs = extract_features(
        [shared_data / "bad-midi" / "empty.mid", shared_data / "bad-midi" / "corrupted_control168.mid",
         chord, good, str(good)]
    )
    assert fs.n == 2
    assert dict(fs.skipped) == {"empty": 1, "unreadable": 1, "single_onset": 1}
    assert fs.features["pitch_class_histogram"].shape == (2, 12)
    np.testing.assert_allclose(fs.features["pitch_class_histogram"].sum(1), 1.0)


def test_distances():
    x = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    np.testing.assert_allclose(np.sort(intra_set_distances(x)), [5, 5, 5, 5, 10, 10])
    np.testing.assert_allclose(inter_set_distances(np.array([1.0]), np.array([0.0, 4.0])), [1, 3])


def test_overlap_area_known_values():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 4000)
    assert overlap_area(a, a) == pytest.approx(1.0, abs=1e-3)
    # Two unit normals one apart overlap by 2 * Phi(-1/2) = 0.617; KDE smoothing widens both a bit.
    b = rng.normal(1, 1, 4000)
    assert overlap_area(a, b) == pytest.approx(2 * stats.norm.cdf(-0.5), abs=0.03)
    assert overlap_area(a, b) == overlap_area(b, a)  # symmetric by construction
    assert overlap_area(a, a + 50) < 1e-6
    # mgeval's integration range [min, max] cuts the tails off: lower than the full integral.
    assert overlap_area(a, a, support="data") < overlap_area(a, a, support="kde")


@pytest.mark.parametrize("support", ["data", "kde"])
def test_identical_sets_score_one(support):
    # Continuous values: the KDE mass outside [min, max] is tiny, so both integrations give 1.
    a = np.random.default_rng(5).normal(0, 1, 4000)
    assert overlap_area(a, a, support=support) == pytest.approx(1.0, abs=2e-3)
    const = np.full(30, 3.0)
    assert overlap_area(const, const, support=support) == 1.0


def test_data_support_is_the_kde_mass_inside_min_max():
    # Known answer for identical samples under mgeval's range: the KDE's own mass on [min, max].
    a = np.abs(np.random.default_rng(6).normal(0, 1, 3000))  # distance-like, piled up at 0
    h = np.sqrt(stats.gaussian_kde(a).covariance[0, 0])
    mass = np.mean(stats.norm.cdf((a.max() - a) / h) - stats.norm.cdf((a.min() - a) / h))
    assert mass < 0.99  # a real cut, not a rounding
    assert overlap_area(a, a, support="data") == pytest.approx(mass, abs=2e-3)
    assert overlap_area(a, a, support="kde") == pytest.approx(1.0, abs=2e-3)


def test_constant_attribute_is_reported_but_not_averaged():
    rng = np.random.default_rng(4)
    ref = {"used_pitch": rng.integers(20, 40, (40, 1)).astype(float), "velocity": np.full((40, 1), 64.0)}
    gen = {"used_pitch": rng.integers(20, 40, (30, 1)).astype(float), "velocity": np.full((30, 1), 64.0)}
    assert is_constant(ref["velocity"]) and not is_constant(ref["used_pitch"])
    oa = set_oa(gen, ref)
    assert oa["velocity"] == 1.0  # a free point: reported ...
    assert oa["average"] == pytest.approx(oa["used_pitch"])  # ... but not averaged
    assert mean_oa({"a": 0.2, "b": 1.0}, ["b"]) == 0.2 and mean_oa({"a": 0.2, "b": 1.0}, ["a", "b"]) == 0.6


def test_overlap_area_degenerate_inputs():
    const = np.full(50, 2.0)
    assert overlap_area(const, const) == 1.0
    assert overlap_area(const, const + 1) == 0.0
    assert overlap_area(np.array([2.0]), const) == 1.0  # a single value is a point mass too
    rng = np.random.default_rng(1)
    spread = rng.normal(2.0, 1.0, 500)
    mid = overlap_area(const, spread)
    assert 0.1 < mid < 1.0  # the point mass, smoothed at the other side's bandwidth, sits inside
    assert overlap_area(const + 40, spread) < 1e-6
    with pytest.raises(ValueError):
        overlap_area(np.array([]), spread)
    with pytest.raises(ValueError):
        overlap_area(np.array([np.nan, 1.0]), spread)


def test_oa_identical_and_disjoint_sets():
    rng = np.random.default_rng(2)
    ref = {
        "used_pitch": rng.integers(20, 40, (40, 1)).astype(float),
        "pitch_class_histogram": rng.dirichlet(np.ones(12), 40),
        "velocity": rng.normal(80, 8, (40, 1)),
    }
    same = set_oa(ref, ref)
    assert all(v > 0.9 for v in same.values()), same
    far = {
        "used_pitch": ref["used_pitch"] + 1000,
        "pitch_class_histogram": np.eye(12)[rng.integers(0, 12, 40)] * 50,
        "velocity": ref["velocity"] - 1000,
    }
    apart = set_oa(far, ref)
    assert all(v < 0.05 for v in apart.values()), apart
    assert apart["average"] == pytest.approx(np.mean([apart[k] for k in ref]))
    with pytest.raises(ValueError):
        attribute_oa(ref["velocity"], ref["velocity"][:1])


@pytest.fixture(scope="module")
def pop_halves(shared_data):
    files = midi_files(shared_data / "pop909")
    return files[0:120:2], files[1:120:2]  # 60 + 60 songs, interleaved by name


def test_pop909_half_vs_half_is_high(pop_halves):
    a, b = pop_halves
    res = evaluate(a, b)
    assert res["n_generated"] == res["n_reference"] == 60
    assert res["oa"]["average"] > 0.85, res["oa"]
    assert min(res["oa"].values()) > 0.75, res["oa"]
    # Roughly symmetric: swapping which half is the reference changes little.
    swapped = evaluate(b, a)
    assert abs(swapped["oa"]["average"] - res["oa"]["average"]) < 0.05


def test_pop909_vs_distorted_is_lower(pop_halves):
    a, b = pop_halves
    # The same songs at a quarter of their durations and velocities: rhythm/dynamics drift away.
    distorted = []
    for p in a:
        s = symusic.Score(str(p))
        for t in s.tracks:
            for n in t.notes:
                n.duration = max(1, n.duration // 4)
                n.velocity = max(1, n.velocity // 4)
        distorted.append(s)
    res = evaluate(distorted, b, attributes=("velocity", "note_duration", "used_pitch"))
    assert res["oa"]["velocity"] < 0.05 and res["oa"]["note_duration"] < 0.3, res["oa"]
    assert res["oa"]["used_pitch"] > 0.8  # pitches untouched


def test_crop_and_select_are_deterministic():
    bar = 4
    ids = [bar, 10, 11, bar, 12, 13, 14, bar, 15, 16, bar, 17]
    rng = np.random.default_rng(0)
    crops = {tuple(crop_ids(ids, 4, rng, bar_id=bar)) for _ in range(50)}
    assert all(len(c) == 4 and c[0] == bar for c in crops) and len(crops) == 3
    assert crop_ids(ids, 4, rng, start="start") == ids[:4]
    assert crop_ids(ids, None, rng) == ids and crop_ids(ids, 99, rng) == ids
    import pandas as pd

    df = pd.DataFrame({"dataset": ["x"] * 10, "piece_id": [f"p{i}" for i in range(10)], "tokens": [[i] for i in range(10)]})
    one = select_pieces(df, 4, seed=7)
    two = select_pieces(df.iloc[::-1], 4, seed=7)
    assert list(one["piece_id"]) == list(two["piece_id"]) and len(one) == 4
    assert len(select_pieces(df, None, 7)) == 10


def test_config_validation():
    cfg = build(EvaluateConfig, {"crop_tokens": 512, "attributes": ["velocity", "ioi"]}, "evaluate")
    assert cfg.crop_tokens == 512 and cfg.attributes == ("velocity", "ioi")
    assert build(EvaluateConfig, {"crop_tokens": None}, "evaluate").crop_tokens is None
    assert build(EvaluateConfig, {}, "evaluate").crop_tokens == "auto"
    with pytest.raises(ConfigError, match="attributes"):
        build(EvaluateConfig, {"attributes": ["loudness"]}, "evaluate")
    with pytest.raises(ConfigError, match="max_reference"):
        build(EvaluateConfig, {"max_reference": 1}, "evaluate")
    for bad in ({"bootstrap": -1}, {"srs_threshold": 0.0}, {"srs_min_bars": 3}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            build(EvaluateConfig, bad, "evaluate")
    # params.yaml and the dataclass agree on every default.
    assert load_section(EvaluateConfig, "evaluate", ROOT / "params.yaml") == EvaluateConfig()


@pytest.mark.parametrize("shift", [0.0, 0.7, 3.0], ids=["same", "near", "far"])
def test_binned_kde_matches_exact(shift):
    rng = np.random.default_rng(3)
    a = np.abs(rng.normal(0, 1, 600))  # distance-like: non-negative, piled up at 0
    b = rng.gamma(2.0, 1.0, 900) + shift
    fast = overlap_area(a, b)
    exact = overlap_area(a, b, exact=True)
    assert fast == pytest.approx(exact, abs=2e-3)
    assert overlap_area(a, b, support="data") == pytest.approx(overlap_area(a, b, support="data", exact=True), abs=2e-3)


def test_melody_memorisation_on_real_songs(shared_data):
    from smdim.metrics.memorisation import melody_ngrams, memorisation

    files = midi_files(shared_data / "pop909")[300:340]
    train = [melody_ngrams(symusic.Score(str(f))) for f in files[:30]]
    # Copies: the middle third of training songs, transposed up a tone (intervals are unchanged).
    copies = []
    for f in files[:10]:
        s = symusic.Score(str(f))
        third = s.end() // 3
        copies.append(melody_ngrams(s.clip(third, 2 * third).shift_pitch(2)))
    fresh = [melody_ngrams(symusic.Score(str(f))) for f in files[30:40]]
    copied, new = memorisation(copies, train), memorisation(fresh, train)
    assert copied["rate"] >= 0.9 and copied["max_similarity"] > 0.9, copied
    assert new["rate"] <= 0.1 and new["max_similarity"] < 0.6, new
    top = melody_ngrams(make_score(HAND), n=2)  # top line 60 64 67 72 -> intervals 4 3 5
    assert top == {(4, 3), (3, 5)}


def test_generated_set_without_usable_pieces_scores_zero(shared_data):
    refs = sorted((shared_data / "pop909").glob("*.mid"))[:4]
    res = evaluate([shared_data / "bad-midi" / "empty.mid"], refs)
    assert res["n_generated"] == 0
    assert res["oa"]["average"] == 0.0
    assert res["skipped"]["generated"]["empty"] == 1


def test_line_metrics_tell_a_drone_from_a_melody(shared_data):
    """The top line of a chord progression is its highest voice; a drone scores a high top-pitch
    share and many repeats, a stepwise tune many steps; real folk-song-like POP909 melodies neither."""
    from smdim.metrics.line import piece_line_metrics, top_line

    # Two voices: the lower one (48) must not enter the line; onsets 0, 480, 960, 1440.
    chords = make_score([[(0, 480, 67, 90), (480, 480, 69, 90), (960, 480, 67, 90), (1440, 480, 72, 90)],
                         [(t, 480, 48, 90) for t in (0, 480, 960, 1440)]])
    assert top_line(np.array([0, 0, 480, 480, 960, 1440]), np.array([48, 67, 48, 69, 67, 72])).tolist() == [67, 69, 67, 72]
    m = piece_line_metrics(chords)
    # Line halves 67 69 | 67 72: of the second half, only 72's class is new.
    assert m == {"top_pitch_share": 0.5, "step_share": 2 / 3, "repeat_share": 0.0, "new_class_share": 0.5}
    drone = piece_line_metrics(make_score([[(i * 240, 240, 69 if i % 4 else 74, 90) for i in range(16)]]))
    assert drone["top_pitch_share"] == 12 / 16 and drone["repeat_share"] == pytest.approx(8 / 15)
    assert drone["step_share"] == 0.0 and drone["new_class_share"] == 0.0
    scale = piece_line_metrics(make_score([[(i * 240, 240, p, 90) for i, p in enumerate([60, 62, 64, 65, 67, 69, 71, 72])]]))
    # 60 62 64 65 | 67 69 71 72: the octave (72) repeats a class, the other three are new.
    assert scale == {"top_pitch_share": 1 / 8, "step_share": 1.0, "repeat_share": 0.0, "new_class_share": 3 / 4}
    assert all(np.isnan(v) for v in piece_line_metrics(make_score([[(0, 480, 60, 90)]])).values())
    song = piece_line_metrics(symusic.Score(str(sorted((shared_data / "pop909").glob("*.mid"))[0])))
    assert song["top_pitch_share"] < 0.3 and song["repeat_share"] < 0.5
    assert song["new_class_share"] < 0.1  # a pop song's tune stays in its key


def test_texture_metrics_tell_held_voices_from_voices_that_come_and_go():
    """Four held voices are steady with no gaps; the same chords with voices dropping out and a
    silent bar are not; a melody is no chord texture (NaN)."""
    from smdim.metrics.texture import piece_texture_metrics, sounding_counts

    # Eighth-note grid (240 ticks): a half note from 0 and a quarter from 480 -> 1, 1, 2, 2.
    assert sounding_counts(np.array([0, 480]), np.array([960, 480]), 240).tolist() == [1, 1, 2, 2]
    chorale = make_score([[(t, 480, p + d, 90) for t in range(0, 3840, 480)] for p, d in
                          ((67, 0), (64, 0), (60, 0), (48, 0))])
    assert piece_texture_metrics(chorale) == {"voice_steadiness": 1.0, "thin_share": 0.0}
    # Bar 1: five voices; bar 2: two; then half a bar of silence and two voices again. Two is the
    # usual count (12 of 24 eighths), and the silence is the gap.
    broken = make_score([[(t, 480, 67, 90) for t in range(0, 1920, 480)], [(t, 480, 64, 90) for t in range(0, 1920, 480)],
                         [(t, 480, 60, 90) for t in range(0, 5760, 480) if not 3840 <= t < 5760 - 960],
                         [(t, 480, 48, 90) for t in range(0, 5760, 480) if not 3840 <= t < 5760 - 960],
                         [(t, 240, 72, 90) for t in range(0, 1920, 240)]])
    m = piece_texture_metrics(broken)
    assert m["voice_steadiness"] == pytest.approx(12 / 24) and m["thin_share"] == pytest.approx(4 / 24)
    melody = make_score([[(i * 240, 240, p, 90) for i, p in enumerate([60, 62, 64, 65, 67, 69, 71, 72])]])
    assert all(np.isnan(v) for v in piece_texture_metrics(melody).values())
