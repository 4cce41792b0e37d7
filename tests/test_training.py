"""Training: LR schedule, optimizer groups, resume after SIGKILL, torchrun/DDP, NaN and corrupt
checkpoint errors. Tiny model, seq_len 64, real POP909 tokens, CPU."""

from __future__ import annotations

import csv
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run, tool_env
from torch import nn
from torch.distributed import TCPStore

from smdim.config import build
from smdim.errors import SmdimError
from smdim.runtime import BaseConfig
from smdim.training.config import TrainConfig
from smdim.training.ema import EMA
from smdim.training.optim import lr_factor, make_scheduler, param_groups

TINY_MODEL = {"d_model": 32, "n_heads": 2, "n_blocks": 1, "stride": 2, "d_state": 4,
              "expand": 1, "ffn_mult": 2, "dropout": 0.1}
TINY_TRAIN = {"seq_len": 64, "batch_size": 4, "steps": 40, "lr": 3e-3, "warmup_steps": 5,
              "eval_every": 10, "eval_batches": 2, "checkpoint_every": 5, "log_every": 5,
              "num_threads": 1, "progress": False, "ema": 0.9}
TINY = {"base": {"seed": 7, "device": "cpu"}, "model": TINY_MODEL, "train": TINY_TRAIN}


# ---------------------------------------------------------------- schedule, optimizer, EMA
def test_lr_schedule_warmup_then_cosine_to_floor():
    f = [lr_factor(s, 10, 100, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[:10], f[1:10], strict=False)), "linear warm-up rises"
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False)), "cosine decays"
    assert f[10] == pytest.approx(1.0) and f[-1] == pytest.approx(0.1)
    assert f[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 89)))
    # The scheduler applies it to the optimizer.
    p = nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.AdamW([p], lr=2.0)
    sched = make_scheduler(opt, TrainConfig(steps=100, warmup_steps=10, lr=2.0))
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([2.0 * lr_factor(s, 10, 100, 0.1) for s in range(100)])


def test_no_weight_decay_on_norms_biases_embeddings():
    model = nn.Sequential(nn.Embedding(10, 8), nn.LayerNorm(8), nn.Linear(8, 8), nn.Conv1d(8, 8, 3))
    a_log = nn.Parameter(torch.zeros(8, 4))
    a_log._no_weight_decay = True
    model.register_parameter("A_log", a_log)
    decay, no_decay = param_groups(model, 0.1)
    assert {id(p) for p in decay["params"]} == {id(model[2].weight), id(model[3].weight)}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert len(no_decay["params"]) == 6  # embedding, norm weight+bias, 2 biases, A_log


def test_train_config_range_checks():
    with pytest.raises(SmdimError, match=r"train: ema=1.0 must be in \[0, 1\)"):
        build(TrainConfig, {"ema": 1.0}, "train")
    with pytest.raises(SmdimError, match="train: seq_len=0 must be >= 1"):
        build(TrainConfig, {"seq_len": 0}, "train")
    assert build(TrainConfig, {"lr": "3e-4", "betas": [0.9, 0.95]}, "train").betas == (0.9, 0.95)


def test_ema_tracks_weights_and_roundtrips_weights_only(tmp_path):
    model = nn.Linear(3, 3)
    ema = EMA(model, 0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    before = ema.shadow["weight"].clone()
    ema.update(model)  # decay min(0.5, 2/11)
    d = 2 / 11
    assert torch.allclose(ema.shadow["weight"], d * before + (1 - d) * model.weight)
    torch.save(ema.state_dict(), tmp_path / "e.pt")
    other = EMA(nn.Linear(3, 3), 0.5)
    other.load_state_dict(torch.load(tmp_path / "e.pt", weights_only=True))
    assert other.updates == 1 and torch.equal(other.shadow["weight"], ema.shadow["weight"])
    w = model.weight.detach().clone()
    with ema.applied(model):
        assert torch.equal(model.weight, ema.shadow["weight"])
    assert torch.equal(model.weight, w)


def project(make_project, tokens_dir: Path, name: str, overrides: dict | None = None) -> Path:
    """A temporary project (this repo's code + params with TINY overrides) holding data/tokens."""
    from conftest import deep_merge

    proj = make_project(deep_merge(TINY, overrides or {}), name=name)
    shutil.copytree(tokens_dir, proj / "data" / "tokens")
    return proj


def train_cmd() -> list[str]:
    return [sys.executable, "-m", "pipeline.train"]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def loss_curve(proj: Path) -> list[tuple[int, float]]:
    with open(proj / "results/train/plots/metrics/loss.tsv", newline="") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f, delimiter="\t")]


# ---------------------------------------------------------------- resume after SIGKILL
def train_project_in_process(proj: Path, monkeypatch) -> object:
    """What `python -m pipeline.train` does in `proj`, inside this process (saves a startup)."""
    from smdim.config import load_params
    from smdim.diffusion.config import DiffusionConfig
    from smdim.model.config import ModelConfig
    from smdim.training.loop import TrainPaths, train

    monkeypatch.chdir(proj)
    params = load_params(proj / "params.yaml")
    return train(build(BaseConfig, params["base"], "base"), build(ModelConfig, params["model"], "model"),
                 build(DiffusionConfig, params["diffusion"], "diffusion"),
                 build(TrainConfig, params["train"], "train"),
                 TrainPaths(Path("data/tokens"), Path("models"), Path("results/train")))


def test_resume_after_sigkill_matches_uninterrupted_run(make_project, tokens_dir, monkeypatch):
    steps = TINY_TRAIN["steps"]
    ref = project(make_project, tokens_dir, "ref")
    assert train_project_in_process(ref, monkeypatch).ran

    proj = project(make_project, tokens_dir, "killed")
    last = proj / "models/checkpoints/last.pt"
    with open(proj / "killed.log", "w") as logf:
        p = subprocess.Popen(train_cmd(), cwd=proj, env=tool_env(), stdout=logf, stderr=logf)
        deadline = time.monotonic() + 120
        while not last.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert p.returncode == -signal.SIGKILL, (proj / "killed.log").read_text()[-2000:]
    killed_at = torch.load(last, weights_only=True)["step"]
    assert 0 < killed_at < steps and not (proj / "models/model.pt").exists()

    # Resume through DVC: `persist: true` keeps models/ and results/train/ for the stage.
    out = run([str(Path(sys.executable).parent / "dvc"), "repro", "--single-item", "train"], proj)
    assert f"resuming from models/checkpoints/last.pt at step {killed_at}" in out.stdout + out.stderr
    a, b = weights(ref / "models/model.pt"), weights(proj / "models/model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loss_curve(proj) == loss_curve(ref)
    assert [s for s, _ in loss_curve(ref)] == list(range(5, steps + 1, 5))
    extra = torch.load(proj / "models/model.pt", weights_only=True)["extra"]
    assert extra["step"] == steps and extra["weights"] == "ema" and extra["pad_id"] == 0
    assert extra["tokenizer"] == (tokens_dir / "tokenizer.json").read_text()
    assert {"mask_id", "diffusion", "train"} <= extra.keys()
    assert not list((proj / "models").rglob("*.tmp")), "temp files of the killed save are removed"

    # Finished: rerunning rewrites nothing.
    outs = [proj / "models/model.pt", last, proj / "results/train/metrics.json"]
    mtimes = [p.stat().st_mtime_ns for p in outs]
    assert not train_project_in_process(proj, monkeypatch).ran
    assert [p.stat().st_mtime_ns for p in outs] == mtimes


# ---------------------------------------------------------------- torchrun / DDP on CPU
_DUMP_EACH_RANK = """
import torch
import smdim.training.loop as loop
from pipeline.train import main

save_final = loop.save_final


def dump_then_save(run):
    torch.save(run.model.state_dict(), f"weights-rank{run.info.rank}.pt")
    save_final(run)


loop.save_final = dump_then_save
main()
"""


def _initial_head(proj: Path) -> torch.Tensor:
    """The head weights a fresh run starts from (seeded init), to prove training moved them."""
    from smdim.model.config import ModelConfig
    from smdim.model.denoiser import Denoiser
    from smdim.runtime import seed_everything

    saved = torch.load(proj / "models/model.pt", weights_only=True)
    seed_everything(TINY["base"]["seed"])
    return Denoiser(build(ModelConfig, saved["config"], "model")).state_dict()["head.weight"]


def test_torchrun_two_processes_gloo(make_project, tokens_dir):
    # Self-conditioned: its prev projection sits out some batches, which DDP must allow (the
    # default net trains on two machines in the next test).
    proj = project(make_project, tokens_dir, "ddp", {"train": {"steps": 4, "checkpoint_every": 2,
                                                              "eval_every": 2, "log_every": 1},
                                                    "model": {"self_cond": True}})
    # Each rank also dumps its own final weights (rank 0 alone writes model.pt), to compare them.
    (proj / "train_and_dump.py").write_text(_DUMP_EACH_RANK)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "train_and_dump.py"], proj)
    _assert_ranks_identical(proj, steps=4)
    curve = loss_curve(proj)
    assert [s for s, _ in curve] == [1, 2, 3, 4] and all(np.isfinite([v for _, v in curve]))


def test_two_nodes_rendezvous_on_localhost(make_project, tokens_dir):
    """Two torchrun launchers ("machines", one process each) meet at a c10d rendezvous endpoint."""
    proj = project(make_project, tokens_dir, "nodes", {"train": {"steps": 3, "checkpoint_every": 3,
                                                                "eval_every": 3, "log_every": 1}})
    (proj / "train_and_dump.py").write_text(_DUMP_EACH_RANK)
    # The test hosts the rendezvous store, as the first machine's launcher would. With both
    # launchers on one host, each would try to host it; the one that did could exit while the other
    # still waited on it, and once (in a full suite run) the other hung for 300 s.
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    # The command the README gives for two machines, with both "machines" on 127.0.0.1.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{store.port}", "--rdzv-id", "smdim-test",
           "--rdzv-conf", "is_host=false", "train_and_dump.py"]
    nodes = [subprocess.Popen(cmd, cwd=proj, env=tool_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    try:
        outputs = [n.communicate(timeout=300)[0] for n in nodes]
    except subprocess.TimeoutExpired:  # say where each launcher stopped, not just that it did
        for n in nodes:
            n.kill()
        outputs = [n.communicate()[0] for n in nodes]
        pytest.fail("the two launchers did not finish in 300 s; their output:\n"
                    + "\n---\n".join(o[-3000:] for o in outputs))
    finally:
        for n in nodes:
            n.kill()
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    _assert_ranks_identical(proj, steps=3)


def _assert_ranks_identical(proj: Path, steps: int) -> None:
    """Both ranks end with the same raw weights, those rank 0 saved in last.pt, after training."""
    state = torch.load(proj / "models/checkpoints/last.pt", weights_only=True)
    assert state["step"] == steps
    assert torch.load(proj / "models/model.pt", weights_only=True)["extra"]["step"] == steps
    ranks = [torch.load(proj / f"weights-rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() == state["model"].keys()
    for name, w in state["model"].items():
        assert torch.equal(ranks[0][name], w) and torch.equal(ranks[1][name], w), name
    assert not torch.equal(state["model"]["head.weight"], _initial_head(proj)), "it trained"


# ---------------------------------------------------------------- one-line errors
def _train_in_process(tokens_dir: Path, root: Path, **train_overrides):
    from smdim.diffusion.config import DiffusionConfig
    from smdim.model.config import ModelConfig
    from smdim.training.loop import TrainPaths, train

    cfg = build(TrainConfig, {**TINY_TRAIN, **train_overrides}, "train")
    return train(BaseConfig(seed=7, device="cpu"), build(ModelConfig, TINY_MODEL, "model"),
                 DiffusionConfig(), cfg,
                 TrainPaths(tokens_dir, root / "models", root / "results" / "train"))


def test_nan_loss_stops_with_one_line_error(tokens_dir, tmp_path, monkeypatch):
    import smdim.training.objective as objective_mod

    real, calls = objective_mod.diffusion_loss, []

    def poisoned(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 3 else loss), stats

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(objective_mod, "diffusion_loss", poisoned)
    with pytest.raises(SmdimError) as e:
        _train_in_process(tokens_dir, tmp_path, steps=6)
    msg = str(e.value)
    assert msg.startswith("training diverged at step 3: loss is nan; lower train.lr (now ")
    assert "\n" not in msg


def test_corrupt_resume_checkpoint_is_a_one_line_error(tokens_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    last = tmp_path / "models/checkpoints/last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"PK\x03\x04 definitely not a torch checkpoint")
    with pytest.raises(SmdimError, match=r"last.pt: corrupt or unreadable resume checkpoint .*; "
                                         r"delete it to train from scratch$") as e:
        _train_in_process(tokens_dir, tmp_path, steps=2)
    assert "\n" not in str(e.value)


def test_changed_params_start_fresh(tokens_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = _train_in_process(tokens_dir, tmp_path, steps=4, checkpoint_every=2)
    assert r.ran and r.step == 4 and r.resumed_from is None
    # Same params (or only a logging field): a no-op. More steps or another lr: starts fresh, since
    # the lr schedule depends on train.steps (a longer run must not build on a shorter one).
    assert not _train_in_process(tokens_dir, tmp_path, steps=4, checkpoint_every=2).ran
    assert not _train_in_process(tokens_dir, tmp_path, steps=4, checkpoint_every=3).ran
    r = _train_in_process(tokens_dir, tmp_path, steps=6, checkpoint_every=2)
    assert r.ran and r.resumed_from is None
    r = _train_in_process(tokens_dir, tmp_path, steps=6, checkpoint_every=2, lr=1e-3)
    assert r.ran and r.resumed_from is None


def test_changed_training_code_starts_fresh(tokens_dir, tmp_path, monkeypatch):
    """DVC reruns the stage when smdim/model, diffusion, training or autoregressive change; the
    finished last.pt of the old code must not stand in for a model of the new one."""
    import smdim.training.run as run_module

    monkeypatch.chdir(tmp_path)
    assert _train_in_process(tokens_dir, tmp_path, steps=4, checkpoint_every=2).ran
    assert not _train_in_process(tokens_dir, tmp_path, steps=4, checkpoint_every=2).ran
    monkeypatch.setattr(run_module, "training_code_sha256", lambda: "0" * 64)
    r = _train_in_process(tokens_dir, tmp_path, steps=4, checkpoint_every=2)
    assert r.ran and r.resumed_from is None


def test_training_code_hash_follows_sources_only(tmp_path):
    from smdim.training.run import TRAINING_CODE, training_code_sha256

    src = Path(__file__).resolve().parents[1] / "smdim"
    for package in TRAINING_CODE:
        shutil.copytree(src / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    before = training_code_sha256(tmp_path)
    assert before == training_code_sha256(src)
    (tmp_path / "model" / "__pycache__").mkdir(exist_ok=True)
    (tmp_path / "model" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"compiled")
    (tmp_path / "training" / "notes.txt").write_text("not code")
    assert training_code_sha256(tmp_path) == before
    loss = tmp_path / "diffusion" / "loss.py"
    loss.write_text(loss.read_text() + "\n# a comment is a change too\n")
    assert training_code_sha256(tmp_path) != before


# ---------------------------------------------------------------- dvclive resume, presets
def test_live_resume_drops_points_logged_after_the_checkpoint(tmp_path, monkeypatch):
    from smdim.training.live import log_metrics, open_live

    monkeypatch.chdir(tmp_path)
    live = open_live(tmp_path / "train", None)
    for step in (5, 10, 15, 20):
        log_metrics(live, step, {"loss": 1.0 / step, "lr": 0.1})
    live = open_live(tmp_path / "train", 10)  # killed after logging 20, checkpoint at 10
    log_metrics(live, 15, {"loss": 0.5})
    with open(tmp_path / "train/plots/metrics/loss.tsv", newline="") as f:
        rows = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f, delimiter="\t")]
    assert rows == [(5, 0.2), (10, 0.1), (15, 0.5)]
    import json

    summary = json.loads((tmp_path / "train/metrics.json").read_text())
    assert summary == {"loss": 0.5, "lr": 0.1, "step": 15}


def test_preset_flags_for_dvc_exp_run(tmp_path):
    from smdim.preset_flags import preset_flags

    (tmp_path / "params.yaml").write_text(
        "base: {dtype: float32}\nmodel: {d_model: 64}\ntrain: {betas: [0.9, 0.98], ema: 0.0}\n")
    (tmp_path / "p.yaml").write_text(
        "base: {dtype: bfloat16}\nmodel: {d_model: 512}\ntrain: {betas: [0.9, 0.95], ema: null}\n")
    flags = preset_flags(tmp_path / "p.yaml", tmp_path / "params.yaml")
    assert flags == ["-S", "base.dtype=bfloat16", "-S", "model.d_model=512",
                     "-S", "train.betas=[0.9,0.95]", "-S", "train.ema=null"]
    (tmp_path / "bad.yaml").write_text("train: {lr_max: 1}\n")
    with pytest.raises(SmdimError, match="train.lr_max is not a parameter"):
        preset_flags(tmp_path / "bad.yaml", tmp_path / "params.yaml")


def test_paper_preset_matches_params_keys():
    from conftest import ROOT

    from smdim.preset_flags import preset_flags

    flags = preset_flags(ROOT / "configs/paper.yaml", ROOT / "params.yaml")
    assert "train.seq_len=2048" in flags and "model.d_model=512" in flags


# ---------------------------------------------------------------- slack tokens
def test_a_slack_model_trains_samples_and_its_pieces_hold_no_slack(shared_data, tokens_dir, tmp_path, monkeypatch):
    from conftest import write_tokens_dir

    from smdim.diffusion.config import DiffusionConfig
    from smdim.model.config import ModelConfig
    from smdim.sampling.composer import constraints_for, load_composer
    from smdim.tokenization.config import TokenizeConfig
    from smdim.training.loop import TrainPaths, train

    monkeypatch.chdir(tmp_path)
    cfg = build(TrainConfig, {**TINY_TRAIN, "steps": 6}, "train")
    model = build(ModelConfig, TINY_MODEL, "model")
    old = write_tokens_dir(shared_data, tmp_path / "old", TokenizeConfig(special_tokens=["PAD", "BOS", "EOS", "MASK"]))
    with pytest.raises(SmdimError, match=r"^diffusion.slack=0.1: .*add SLACK to tokenize.special_tokens$"):
        train(BaseConfig(seed=7, device="cpu"), model, DiffusionConfig(slack=0.1), cfg,
              TrainPaths(old, tmp_path / "a/models", tmp_path / "a/results"))
    tokens = tokens_dir  # the default special tokens hold SLACK
    train(BaseConfig(seed=7, device="cpu"), model, DiffusionConfig(slack=0.1), cfg,
          TrainPaths(tokens, tmp_path / "models", tmp_path / "results"))
    c = load_composer(str(tmp_path / "models/model.pt"))
    assert c.slack_id == c.tokenizer["SLACK_None"]
    kw = {"constraints": constraints_for(c, None, None), "steps": 8, "method": "confidence"}
    pieces = c.generate(3, 64, generator=torch.Generator().manual_seed(0), **kw)
    assert all(c.slack_id not in p.ids and len(p.ids) <= 64 for p in pieces)
    assert any(len(p.ids) < 64 for p in pieces), "a model trained with slack places some"
    # The same vocabulary without slack training: SLACK is never drawn.
    ar = build(ModelConfig, {**TINY_MODEL, "objective": "autoregressive"}, "model")
    train(BaseConfig(seed=7, device="cpu"), ar, DiffusionConfig(slack=0.1), cfg,
          TrainPaths(tokens, tmp_path / "ar/models", tmp_path / "ar/results"))
    assert load_composer(str(tmp_path / "ar/models/model.pt")).slack_id is None  # slack is diffusion's


# ---------------------------------------------------------------- keys
def test_model_pt_carries_the_train_keys_and_pieces_move_to_them(tokens_dir, tmp_path, monkeypatch):
    from smdim.diffusion.config import DiffusionConfig
    from smdim.model.config import ModelConfig
    from smdim.sampling.composer import constraints_for, load_composer
    from smdim.tokenization.keys import tonic_of
    from smdim.training.loop import TrainPaths, train

    monkeypatch.chdir(tmp_path)
    train(BaseConfig(seed=7, device="cpu"), build(ModelConfig, TINY_MODEL, "model"), DiffusionConfig(),
          build(TrainConfig, {**TINY_TRAIN, "steps": 4}, "train"),
          TrainPaths(tokens_dir, tmp_path / "models", tmp_path / "results"))
    c = load_composer(str(tmp_path / "models/model.pt"))
    assert len(c.key_shares) == len(c.collections) + 1  # all pieces, then one row per collection
    assert all(len(row) == 12 and sum(row) == pytest.approx(1) for row in c.key_shares)
    assert sum(s > 0 for s in c.key_shares[0]) >= 3  # 24 POP909 songs are not all in one key
    # An untrained model spreads notes over the whole vocabulary, where no shift fits (the piece then
    # stays where it is); a pitch range leaves room to move.
    kw = {"constraints": constraints_for(c, [48, 84], None), "steps": 6, "method": "confidence"}

    def pieces(key, seed=0):
        return c.generate(6, 96, generator=torch.Generator().manual_seed(seed), key=key, **kw)

    def tonics(key):
        return [tonic_of(c.pitch_classes[p.ids].sum(0)) for p in pieces(key)]

    def pitches(piece):
        return [int(c.tokenizer[i].split("_")[1]) for i in piece.ids if c.tokenizer[i].startswith("Pitch_")]

    # Every key gets the same sampled pieces, each moved by one shift: Eb sits 3 semitones above C.
    for in_c, in_eb in zip(pieces("C"), pieces("Eb"), strict=True):
        a, b = pitches(in_c), pitches(in_eb)
        assert a and len(a) == len(b) and len({y - x for x, y in zip(a, b, strict=True)}) == 1
        assert (b[0] - a[0]) % 12 == 3
    # The key finder reads the new key back (up to exact ties between two scales, which a
    # short piece of an untrained model can have).
    assert sum(t == 3 for t in tonics("Eb")) >= 5
    drawn = tonics("prior")
    assert drawn == tonics("prior") and sum(c.key_shares[0][t] > 0 for t in drawn if t is not None) >= 5
    # A prompt sets the key: its pieces are not moved.
    prompt = torch.full((96,), -1)
    prompt[:8] = torch.tensor(c.generate(1, 32, generator=torch.Generator().manual_seed(3), **kw)[0].ids[:8])
    for key in ("Eb", None):
        got = c.generate(2, 96, generator=torch.Generator().manual_seed(4), key=key, fixed=prompt, **kw)
        assert all(p.ids[:8] == prompt[:8].tolist() for p in got)
    # A checkpoint from before key shares: "prior" keeps the sampled keys, with a warning.
    c.key_shares = ()
    assert c.tonics_for("prior", [None], 0) is None


# ---------------------------------------------------------------- self-conditioning
def test_a_self_conditioned_model_trains_and_samples(tokens_dir, tmp_path, monkeypatch):
    from smdim.diffusion.config import DiffusionConfig
    from smdim.model.config import ModelConfig
    from smdim.sampling.composer import constraints_for, load_composer
    from smdim.training import speed
    from smdim.training.loop import TrainPaths, train
    from smdim.training.objective import self_cond_share

    monkeypatch.chdir(tmp_path)
    model = build(ModelConfig, {**TINY_MODEL, "self_cond": True}, "model")
    assert (self_cond_share(model, True), self_cond_share(model, False)) == (0.5, 1.0)
    assert self_cond_share(build(ModelConfig, TINY_MODEL, "model"), True) == 0.0
    train(BaseConfig(seed=7, device="cpu"), model, DiffusionConfig(), build(TrainConfig, {**TINY_TRAIN, "steps": 6},
          "train"), TrainPaths(tokens_dir, tmp_path / "models", tmp_path / "results"))
    c = load_composer(str(tmp_path / "models/model.pt"))
    assert c.model.cfg.self_cond and c.model.self_cond.weight.abs().sum() > 0  # it learned to read prev
    pieces = c.generate(2, 64, generator=torch.Generator().manual_seed(0), steps=8, method="cached",
                        constraints=constraints_for(c, None, None))
    assert len(pieces) == 2 and all(p.ids for p in pieces)
    # Equal-time budgets time both kinds of step, each weighted by its share of training.
    shares = []
    real = speed.objective_loss
    monkeypatch.setattr(speed, "objective_loss", lambda *a, **kw: shares.append(kw["self_cond_share"]) or real(*a, **kw))
    speed.step_seconds(c.model.cfg, build(TrainConfig, {**TINY_TRAIN, "num_threads": 1}, "train"), repeats=1, warmup=0)
    assert shares == [0.0, 1.0]
