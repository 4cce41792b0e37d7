"""A DVC remote shares every artifact: clone A reproduces and pushes, clone B pulls and re-runs nothing."""

from __future__ import annotations

import json

from conftest import BIN, run
from test_end_to_end import tiny_params

DVC = str(BIN / "dvc")


def test_second_clone_pulls_instead_of_retraining(make_project, shared_data, tmp_path):
    # The whole pipeline, benchmark included (at a toy size), as `dvc repro` runs it.
    benchmark = {"blocks": ["mfa"], "transformer_s1": False, "lengths": [64], "d_model": 16, "n_heads": 2,
                 "n_blocks": 1, "repeats": 1, "sample_steps": 1, "sample_max_length": 64,
                 "scan_lengths": [64], "scan_d_inner": 8}
    a = make_project({**tiny_params(shared_data), "benchmark": benchmark}, name="clone_a")
    remote = tmp_path / "remote"
    run([DVC, "remote", "add", "-d", "shared", str(remote)], a)
    run([DVC, "repro"], a)
    run(["git", "add", "-A"], a)
    run(["git", "commit", "-qm", "pipeline run"], a)
    run([DVC, "push"], a)

    b = tmp_path / "clone_b"
    run(["git", "clone", "-q", str(a), str(b)], tmp_path)
    assert not (b / "models/model.pt").exists()
    run([DVC, "pull"], b)
    assert (b / "models/model.pt").read_bytes() == (a / "models/model.pt").read_bytes()
    model_mtime = (b / "models/model.pt").stat().st_mtime_ns
    assert json.loads(run([DVC, "status", "--json"], b).stdout) == {}
    run([DVC, "repro"], b)  # the README's "pull what exists, then reproduce the rest"
    assert (b / "models/model.pt").stat().st_mtime_ns == model_mtime, "train ran again"
    assert run(["git", "status", "--porcelain"], b).stdout == ""  # nothing changed, not even dvc.lock
    assert json.loads(run([DVC, "status", "--cloud", "--json"], b).stdout) == {}
