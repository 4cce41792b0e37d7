"""A DVC remote shares every artifact: clone A reproduces and pushes, clone B pulls and re-runs nothing.

Also the block-ablation and objectives sweeps, each a queue of DVC experiments (why they share
this file: the comment above the first).
"""

from __future__ import annotations

import json
import sys

import yaml
from conftest import BIN, ROOT, run
from test_end_to_end import tiny_params

from flows.dvc_runs import experiment_rev

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


# The sweeps' DVC tests live in this file on purpose: `make test` gives a whole file to one xdist
# worker, so they never run at the same time as each other (README, "Tests").
def test_block_ablation_is_one_command_at_equal_wall_clock_over_seeds(make_project, shared_data):
    """flows.ablations queues one DVC experiment per block and seed, runs the queue and tabulates
    them. --budget-s sets train.steps from each block's measured step time; --seeds K runs every
    block with base.seed, base.seed + 1, ... and summarises the seeds (mean, t-interval) per block.
    One block here: `plan` below covers several blocks without running them."""
    proj = make_project(tiny_params(shared_data), name="sweep")
    p = run([sys.executable, "-m", "flows.ablations", "--blocks", "mamba", "--seeds", "2", "--budget-s", "0.05",
             "--prefix", "w", "-S", "sample.n_per_length=0", "--project-dir", str(proj)], ROOT)
    out = json.loads((proj / "results/ablations/table.json").read_text())
    rows, summary = out["rows"], out["by_block"]
    seed = yaml.safe_load((proj / "params.yaml").read_text())["base"]["seed"]
    names = ["w-mamba-s0", "w-mamba-s1"]
    assert [r["experiment"] for r in rows] == names, p.stdout
    assert [r["block"] for r in rows] == ["mamba", "mamba"]
    assert [r["seed"] for r in rows] == [seed, seed + 1]
    a, b = rows
    assert a["steps"] == b["steps"] == out["arms"]["mamba-s0"]["train.steps"] >= 3  # warm-up + 1
    assert a["val_loss"] != b["val_loss"]  # the seed reached the model
    assert all(0 <= r["headline"] <= 1 and r["val_loss"] > 0 and r["train_s"] > 0 for r in rows)
    assert all(r["headline_ci"][0] <= r["headline"] <= r["headline_ci"][1] for r in rows)
    (s,) = summary
    heads = [r["headline"] for r in rows]
    assert s["block"] == "mamba" and s["seeds"] == 2 and abs(s["headline_mean"] - sum(heads) / 2) < 1e-12
    assert s["headline_ci"][0] <= min(heads) <= max(heads) <= s["headline_ci"][1]
    table = (proj / "results/ablations/table.md").read_text()
    assert "| mamba | w-mamba-s0 |" in table and "| mamba | w-mamba-s1 |" in table, table
    assert "95% CI over seeds" in table and "sample.n_per_length" in table
    assert (proj / "results/ablations/table.png").read_bytes()[:4] == b"\x89PNG"
    assert set(names) <= _experiment_names(json.loads(run([DVC, "exp", "show", "--json"], proj).stdout))
    # Every run was scored on the same test pieces: the split stays that of base.seed.
    assert out["arms"]["mamba-s1"]["tokenize.split_seed"] == seed
    tokens = [[o for o in yaml.safe_load(run(["git", "show", f"{experiment_rev(proj, name)}:dvc.lock"], proj).stdout)
               ["stages"]["tokenize"]["outs"] if o["path"] == "data/tokens"] for name in names]
    assert tokens[0] != [] and all(t == tokens[0] for t in tokens)
    params = yaml.safe_load((proj / "params.yaml").read_text())
    assert params["model"]["block"] == "mfa" and params["train"]["steps"] == 6  # workspace untouched


def test_ablation_plan_crosses_blocks_and_seeds_on_one_split(make_project, shared_data):
    from flows.ablations import plan

    proj = make_project(tiny_params(shared_data), name="plan")
    seed = yaml.safe_load((proj / "params.yaml").read_text())["base"]["seed"]
    arms = plan(proj, ["mamba", "transformer"], 2, None, {})
    assert list(arms) == ["mamba-s0", "mamba-s1", "transformer-s0", "transformer-s1"]
    assert [a["model.block"] for a in arms.values()] == ["mamba", "mamba", "transformer", "transformer"]
    assert [a["base.seed"] for a in arms.values()] == [seed, seed + 1] * 2
    assert {a["tokenize.split_seed"] for a in arms.values()} == {seed}
    assert all("train.steps" not in a for a in arms.values())  # equal steps without a budget
    assert plan(proj, ["mfa"], 1, None, {}) == {"mfa": {"model.block": "mfa"}}


def test_seed_summary_is_a_t_interval():
    from flows.ablations import by_block

    rows = [{"block": "mfa", "headline": h, "steps": 10, "val_loss": 1.0, "train_s": 5.0, "token_error_rate": 0.0}
            for h in (0.80, 0.82, 0.84)] + [
           {"block": "mamba", "headline": 0.7, "steps": 12, "val_loss": None, "train_s": None, "token_error_rate": None}]
    mfa, mamba = by_block(rows)
    half = 4.302652729911275 * 0.02 / 3 ** 0.5  # t(0.975, 2 dof) * sd / sqrt(n)
    assert mfa["seeds"] == 3 and abs(mfa["headline_mean"] - 0.82) < 1e-12
    assert abs(mfa["headline_ci"][0] - (0.82 - half)) < 1e-9 and abs(mfa["headline_ci"][1] - (0.82 + half)) < 1e-9
    assert mfa["headline_range"] == [0.80, 0.84]
    assert mamba["seeds"] == 1 and mamba["headline_ci"] is None and mamba["val_loss_mean"] is None


def test_objectives_comparison_runs_both_objectives_through_dvc(make_project, shared_data):
    """flows.objectives: an autoregressive and a diffusion experiment at equal (tiny) training time,
    each the whole pipeline under `dvc exp run`, in one table with bits per note and generation cost."""
    proj = make_project(tiny_params(shared_data), name="objectives")
    p = run([sys.executable, "-m", "flows.objectives", "--arms", "diffusion-mfa", "ar-mamba", "--budget-s", "0.1",
             "-S", "sample.cost_bars=[2]", "-S", "sample.n_per_length=0", "--prefix", "o", "--project-dir", str(proj)],
            ROOT)
    rows = json.loads((proj / "results/objectives/table.json").read_text())["rows"]
    assert [r["arm"] for r in rows] == ["diffusion-mfa", "ar-mamba"], p.stdout
    for r in rows:
        assert r["steps"] >= 1 and r["val_bits_per_note"] > 0 and 0 <= r["oa_average"] <= 1
        assert r["generate"]["2_bars"]["seconds"] > 0 and r["generate"]["2_bars"]["tokens"] > 0
    assert "| ar-mamba |" in (proj / "results/objectives/table.md").read_text()
    assert (proj / "results/objectives/table.png").read_bytes()[:4] == b"\x89PNG"
    params = yaml.safe_load((proj / "params.yaml").read_text())
    assert params["model"]["objective"] == "diffusion"  # workspace untouched


def _experiment_names(node) -> set[str]:
    """Every "name" in `dvc exp show --json` (its nesting differs between DVC versions)."""
    if isinstance(node, dict):
        names = {node["name"]} if isinstance(node.get("name"), str) else set()
        return names.union(*(_experiment_names(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_experiment_names(v) for v in node))
    return set()



def test_objectives_budget_must_be_positive():
    p = run([sys.executable, "-m", "flows.objectives", "--budget-s", "0"], ROOT, check=False)
    assert p.returncode == 1 and p.stderr.startswith("error: --budget-s must be > 0") and p.stderr.count("\n") == 1
