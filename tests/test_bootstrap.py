"""Honest headline and bootstrap intervals: junk pieces cost, intervals shrink and cover the truth."""

from __future__ import annotations

import numpy as np
import pytest

from smdim.data.manifest import midi_files
from smdim.metrics.bootstrap import bootstrap_oa, interval
from smdim.metrics.evaluate import evaluate
from smdim.metrics.oa import set_oa


def test_junk_pieces_lower_the_headline(shared_data):
    songs = midi_files(shared_data / "pop909")
    gen, ref = songs[0:40:2], songs[1:40:2]
    junk = [shared_data / "bad-midi" / "empty.mid", shared_data / "bad-midi" / "corrupted_control168.mid"]
    clean = evaluate(gen, ref, attributes=("used_pitch", "pitch_range"), bootstrap=200, seed=1)
    dirty = evaluate(gen + junk * 5, ref, attributes=("used_pitch", "pitch_range"), bootstrap=200, seed=1)
    assert clean["usable_rate"] == 1.0 and dirty["usable_rate"] == pytest.approx(20 / 30)
    assert dirty["oa"] == clean["oa"]  # the same usable pieces ...
    assert dirty["headline"] == pytest.approx(clean["headline"] * 20 / 30)  # ... but the junk costs
    assert dirty["headline"] < clean["headline"] - 0.1
    assert dirty["ci"]["headline"]["hi"] < clean["ci"]["headline"]["lo"]
    assert clean["ci"]["headline"] == pytest.approx(clean["ci"]["average"])  # nothing to lose without junk


def _synthetic(n_gen: int, seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).normal(0.3, 1.0, (n_gen, 1))}


@pytest.fixture(scope="module")
def reference():
    return {"x": np.random.default_rng(0).normal(0.0, 1.0, (60, 1))}


def test_intervals_shrink_as_n_grows(reference):
    widths = []
    for n in (20, 80, 320):
        ci = bootstrap_oa(_synthetic(n, 1), reference, 0, resamples=300, seed=2)["x"]
        widths.append(ci["hi"] - ci["lo"])
    assert widths[0] > widths[1] > widths[2], widths
    assert widths[2] < widths[0] / 2.5  # ~1/sqrt(n): 4x the pieces, half the width


def test_intervals_cover_the_true_value(reference):
    # The population value for this reference: OA of a very large generated set.
    truth = set_oa(_synthetic(20000, 99), reference)["x"]
    hits = 0
    for seed in range(10):
        ci = bootstrap_oa(_synthetic(150, 10 + seed), reference, 0, resamples=300, seed=seed)["x"]
        hits += ci["lo"] <= truth <= ci["hi"]
    assert hits >= 8, hits  # nominal 95%: 8 of 10 at the very least


def test_interval_is_a_percentile_interval():
    assert interval(np.arange(1001.0)) == pytest.approx({"lo": 25.0, "hi": 975.0})
    with pytest.raises(ValueError):
        bootstrap_oa({"x": np.zeros((0, 1))}, {"x": np.ones((5, 1))}, 0)
