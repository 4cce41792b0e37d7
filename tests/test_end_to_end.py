"""The whole pipeline through real DVC in a temporary git repo: repro, up-to-date, experiments."""

from __future__ import annotations

import json

import pretty_midi
import pytest
from conftest import BIN, run

DVC = str(BIN / "dvc")


def tiny_params(shared_data) -> dict:
    """A pipeline small enough for a test: 24 POP909 songs, a 1-block model, a few steps."""
    return {
        "base": {"workers": 1},
        "download": {"datasets": ["pop909"], "pop909": {"mirror": str(shared_data / "pop909"), "limit": 24}},
        "tokenize": {"valid_fraction": 0.2, "test_fraction": 0.25},
        "model": {"d_model": 32, "n_heads": 2, "n_blocks": 1, "stride": 2, "d_state": 8},
        "train": {
            "seq_len": 64, "batch_size": 4, "steps": 6, "warmup_steps": 2, "eval_every": 3,
            "eval_batches": 1, "checkpoint_every": 3, "log_every": 2, "progress": False,
            "nll_draws": 1,  # the final ELBO over the valid split: one draw of t, not eight
        },
        "sample": {"n": 2, "n_tokens": 64, "steps": 8, "lengths": [64, 128], "n_per_length": 2, "batch_size": 2,
                   "cost_bars": [2, 4]},
        # 100 resamples: the intervals' code runs as in the default, at a tenth of its time.
        "evaluate": {"max_reference": 4, "bootstrap": 100},
        "report": {"test_pieces": 2, "by_length": False},
    }


def test_repro_then_an_experiment_compared_with_metrics_diff(make_project, shared_data):
    # One project for both halves: its `dvc repro` is the baseline the experiment is compared with.
    proj = make_project(tiny_params(shared_data))
    run([DVC, "repro", "report"], proj)
    pieces = sorted((proj / "results/samples/pieces").glob("*.mid"))
    assert len(pieces) == 2
    for p in pieces:
        # Another parser than ours must open what we write.
        # (A 6-step model may emit no notes yet; the file must still be valid MIDI.)
        pm = pretty_midi.PrettyMIDI(str(p))
        assert pm.resolution > 0
        assert p.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((proj / "results/evaluate/metrics.json").read_text())
    # The headline rule and the average hold exactly; a 6-step model cannot beat real music.
    assert metrics["usable_rate"] == pytest.approx(metrics["n_generated"] / metrics["n_files"])
    assert metrics["headline"] == pytest.approx(metrics["oa"]["average"] * metrics["usable_rate"])
    kept = [v for k, v in metrics["oa"].items() if k != "average" and metrics["in_average"][k]]
    assert metrics["oa"]["average"] == pytest.approx(sum(kept) / len(kept))
    assert metrics["headline_ci"]["lo"] <= metrics["headline"] <= metrics["headline_ci"]["hi"]
    assert metrics["headline"] < metrics["oa_ceiling"]["average"], metrics
    assert set(metrics["oa_vs_length"]) == {"64", "128"}
    assert (proj / "models/model.pt").is_file()
    assert "<audio controls" in (proj / "results/report/index.html").read_text()

    again = run([DVC, "repro", "report"], proj)
    assert "up to date" in again.stdout, again.stdout

    # An experiment on top of that run, compared with `dvc metrics diff`.
    run(["git", "add", "-A"], proj)
    run(["git", "commit", "-qm", "baseline mfa"], proj)
    base = json.loads((proj / "results/evaluate/metrics.json").read_text())["oa"]["average"]

    run([DVC, "exp", "run", "-S", "model.block=transformer", "evaluate"], proj)
    diff = run([DVC, "metrics", "diff", "--md"], proj).stdout
    exp = json.loads((proj / "results/evaluate/metrics.json").read_text())["oa"]["average"]
    row = next(line for line in diff.splitlines() if "oa.average" in line)
    # Both experiments' OA appear: HEAD (mfa) and the workspace (transformer).
    assert f"{base:.5g}"[:5] in row and f"{exp:.5g}"[:5] in row, diff
    # Intervals and muspy gaps reach `dvc metrics diff` (--all: a 6-step model may leave some unchanged).
    every = run([DVC, "metrics", "diff", "--all", "--md"], proj).stdout
    for key in ("headline", "oa_ci.average.lo", "oa_ci.average.hi", "usable_rate", "muspy.gap.pitch_class_entropy"):
        assert key in every, (key, every)
    assert "model.block" in run([DVC, "params", "diff"], proj).stdout
