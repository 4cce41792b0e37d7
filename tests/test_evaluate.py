"""The evaluate stage on real data: POP909 songs tokenized into shards, real songs standing in for samples."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import run

from smdim.config import build
from smdim.data.manifest import midi_files
from smdim.data.shards import read_shards, write_shards
from smdim.errors import SmdimError
from smdim.metrics.config import EvaluateConfig
from smdim.metrics.evaluate import evaluate_run
from smdim.tokenization.config import TokenizeConfig
from smdim.tokenization.decode import tokens_to_score, write_midi
from smdim.tokenization.encode import encode_file
from smdim.tokenization.tokenizer import build_tokenizer, load_tokenizer

GEN_LEN = 512
LENGTHS = (128, 256)


@pytest.fixture(scope="module")
def fake_project(shared_data, tmp_path_factory) -> Path:
    """data/tokens (16 test + 16 train POP909 songs) and results/samples (real crops as 'generated')."""
    root = tmp_path_factory.mktemp("evalproj")
    tok = build_tokenizer(TokenizeConfig())
    files = midi_files(shared_data / "pop909")
    rows = []
    for i, f in enumerate(files[200:234]):
        ids = encode_file(tok, f)
        split = ("test", "train")[i % 2] if i < 32 else "valid"
        rows.append({"dataset": "pop909", "piece_id": f.stem, "split": split, "source_sha256": "0" * 64,
                     "n_tokens": len(ids), "n_bars": 0, "tokens": ids})
    tokens = root / "data" / "tokens"
    write_shards(rows, tokens, max_rows=20, max_mb=64.0, zstd_level=3)
    tok.save(tokens)

    # Generated stand-ins: GEN_LEN-token windows of other real songs, plus one empty MIDI file.
    samples = root / "results" / "samples"
    rng = np.random.default_rng(0)
    entries = []
    for k, f in enumerate(files[400:410]):
        ids = encode_file(tok, f)
        start = int(rng.integers(0, len(ids) - GEN_LEN))
        write_midi(tok, ids[start : start + GEN_LEN], samples / "pieces" / f"{k:03d}.mid")
        entries.append({"file": f"pieces/{k:03d}.mid", "n_tokens": GEN_LEN})
        for length in LENGTHS:
            write_midi(tok, ids[start : start + length], samples / "by_length" / str(length) / f"{k:03d}.mid")
    shutil.copy(shared_data / "bad-midi" / "empty.mid", samples / "pieces" / "010.mid")
    entries.append({"file": "pieces/010.mid", "n_tokens": GEN_LEN})
    (samples / "samples.json").write_text(json.dumps({"pieces": entries}))
    return root


def _run(root: Path, samples_dir: Path | None = None, test_split: str = "test", **params) -> dict:
    tokens = root / "data" / "tokens"
    tok = load_tokenizer(tokens / "tokenizer.json")
    cols = ["dataset", "piece_id", "tokens"]
    return evaluate_run(
        build(EvaluateConfig, params, "evaluate"),
        seed=1234,
        samples_dir=samples_dir or root / "results" / "samples",
        test=read_shards(tokens, test_split, cols),
        train=read_shards(tokens, "train", cols),
        decode=lambda ids: tokens_to_score(tok, ids),
        bar_id=tok.vocab["Bar_None"],
    )


def test_evaluate_run_on_real_pieces(fake_project):
    res = _run(fake_project, max_reference=12)
    assert res["crop_tokens"] == GEN_LEN  # auto: from samples.json
    assert (res["n_generated"], res["n_reference"], res["n_ceiling"]) == (10, 12, 12)
    assert res["skipped"]["generated"] == 1 and res["skipped_by_reason"]["generated"]["empty"] == 1
    assert set(res["oa"]) == set(EvaluateConfig().attributes) | {"average"}
    assert list(res["oa_vs_length"]) == [str(n) for n in LENGTHS]
    # Real music against real music, at matched lengths: close to the ceiling, both high.
    assert res["oa_ceiling"]["average"] > 0.8, res["oa_ceiling"]
    assert res["oa"]["average"] > 0.75, res["oa"]
    assert all(v > 0.6 for v in res["oa_vs_length"].values()), res["oa_vs_length"]
    # Other songs than the training ones: nothing memorised, as for the test pieces.
    assert res["memorisation"]["generated"] == 0.0 and res["memorisation"]["test"] == 0.0
    # The empty file counts against the headline; every interval holds its estimate.
    assert res["usable_rate"] == pytest.approx(10 / 11)
    assert res["headline"] == pytest.approx(res["oa"]["average"] * 10 / 11)
    for name, ci in res["oa_ci"].items():
        assert ci["lo"] <= res["oa"][name] <= ci["hi"], (name, ci)
    assert res["headline_ci"]["lo"] <= res["headline"] <= res["headline_ci"]["hi"]
    # L-token samples only meet test pieces of >= L tokens; all 16 test songs are longer than 256.
    assert res["short_left_out_vs_length"] == {"128": 0, "256": 0}
    assert res["n_reference_vs_length"] == {"128": 12, "256": 12}
    # Real songs: the muspy gap to the test set is small next to the spread of the test set.
    for name, gap in res["muspy"]["gap"].items():
        assert abs(gap) <= 3 * res["muspy"]["test"][name]["sd"] + 1e-9, (name, gap)
    # SRS: whole test songs (POP909 ~0.6 in PhraseVAE); 512-token windows are under 16 bars: left out.
    assert res["srs"]["n_test"] == 12 and 0.3 < res["srs"]["test"] < 0.9, res["srs"]
    assert res["srs"]["n_generated"] == 0 and res["srs"]["generated"] is None
    assert res == _run(fake_project, max_reference=12)  # deterministic


def test_cropping_matters(fake_project):
    # 512-token pieces vs whole songs: length-dependent features (pitch range, used pitches) diverge.
    attrs = ["used_pitch", "pitch_range"]
    cropped = _run(fake_project, attributes=attrs)
    whole = _run(fake_project, attributes=attrs, crop_tokens=None)
    assert "crop_tokens" not in whole
    assert whole["oa"]["average"] < cropped["oa"]["average"] - 0.05, (whole["oa"], cropped["oa"])


def test_stage_writes_outputs_and_runs_under_dvc(fake_project, make_project):
    proj = make_project({"evaluate": {"max_reference": 12, "attributes": ["used_pitch", "velocity", "ioi"]}})
    for d in ("data", "results"):
        shutil.copytree(fake_project / d, proj / d)
    # Only this stage: its inputs are hand-made here, not outputs of the upstream stages.
    stages = yaml.safe_load((proj / "dvc.yaml").read_text())["stages"]
    (proj / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"evaluate": stages["evaluate"]}}))
    run([str(Path(sys.executable).parent / "dvc"), "repro", "--single-item", "evaluate"], proj)
    out = proj / "results" / "evaluate"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["oa"]) == {"used_pitch", "velocity", "ioi", "average"}
    assert set(metrics["oa_vs_length"]) == {"128", "256"}
    assert metrics["n_reference"] == 12 and metrics["skipped"]["generated"] == 1
    assert metrics["usable_rate"] == pytest.approx(10 / 11)
    assert metrics["headline"] == pytest.approx(metrics["oa"]["average"] * 10 / 11)
    assert set(metrics["oa_ci"]) == set(metrics["oa"]) and set(metrics["headline_ci"]) == {"lo", "hi"}
    assert set(metrics["muspy"]) == set(metrics["line"]) == set(metrics["texture"]) == {"generated", "test", "train", "gap"}
    assert set(metrics["line"]["gap"]) == {"top_pitch_share", "step_share", "repeat_share", "new_class_share"}
    assert set(metrics["texture"]["gap"]) == {"voice_steadiness", "thin_share"}
    report = (out / "report.md").read_text()
    assert "| attribute | generated vs test | 95% CI | train vs test (ceiling) | in average |" in report
    ci = metrics["oa_ci"]["average"]
    assert (f"| **average** | {metrics['oa']['average']:.3f} | [{ci['lo']:.3f}, {ci['hi']:.3f}] "
            f"| {metrics['oa_ceiling']['average']:.3f} |") in report
    assert f"**Headline {metrics['headline']:.3f}**" in report
    for section in ("## muspy metrics", "## Melodic line", "## Chord textures", "## Structure: Section Recurrence Score", "## Memorisation"):
        assert section in report
    for png in ("oa_bars.png", "oa_vs_length.png"):
        assert (out / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    recs = json.loads((out / "plots" / "oa_vs_length.json").read_text())
    assert [r["length"] for r in recs] == list(LENGTHS)
    assert "generated: empty 1, single_onset 0, unreadable 0" in report
    shown = run([str(Path(sys.executable).parent / "dvc"), "metrics", "show", "--json"], proj)
    assert "oa_ceiling" in shown.stdout and "headline_ci" in shown.stdout and "pitch_class_entropy" in shown.stdout
    plots = run([str(Path(sys.executable).parent / "dvc"), "plots", "show", "--json",
                 "results/evaluate/plots/oa_vs_length.json"], proj)
    assert '"length": 128' in plots.stdout


def test_missing_inputs_are_one_line_errors(fake_project, tmp_path):
    with pytest.raises(SmdimError, match=r"results/samples/pieces: not found; run the sample stage"):
        _run(fake_project, samples_dir=tmp_path / "results" / "samples")
    (tmp_path / "pieces").mkdir()
    shutil.copy(fake_project / "results" / "samples" / "pieces" / "000.mid", tmp_path / "pieces")
    with pytest.raises(SmdimError, match=r"samples.json: not found"):  # crop_tokens=auto needs it
        _run(fake_project, samples_dir=tmp_path)
    with pytest.raises(SmdimError, match="test split of data/tokens has 0 piece"):
        _run(fake_project, crop_tokens=64, test_split="nonexistent")
