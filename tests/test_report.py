"""The listening report: generic metric tables, the experiments table, the stage under DVC, the page."""

from __future__ import annotations

import json
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
import yaml
from conftest import deep_merge, run

from flows.report import workspace_report
from smdim.config import load_params
from smdim.data.manifest import midi_files
from smdim.data.shards import write_shards
from smdim.report.browser import check_page, find_browser, problems
from smdim.report.experiments import exp_show, experiments_table
from smdim.report.run import changed_params
from smdim.report.tables import Cell, tables
from smdim.tokenization.config import TokenizeConfig
from smdim.tokenization.decode import write_midi
from smdim.tokenization.encode import encode_file
from smdim.tokenization.tokenizer import build_tokenizer
from smdim.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).parent / "dvc")

# Ways an evaluation may spell a confidence interval; each must give the cell oa.average = 0.5 [0.4, 0.6].
CI_SPELLINGS = {
    "sibling-suffix": {"oa": {"average": 0.5, "average_ci_low": 0.4, "average_ci_high": 0.6}},
    "top-level-prefix": {"oa": {"average": 0.5}, "oa_ci_low": {"average": 0.4}, "oa_ci_high": {"average": 0.6}},
    "nested-value": {"oa": {"average": {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6}}},
    "nested-ci-dict": {"oa": {"average": {"mean": 0.5, "ci": {"low": 0.4, "high": 0.6}}}},
    "ci-list": {"oa": {"average": {"value": 0.5, "ci": [0.4, 0.6]}}},
}


@pytest.mark.parametrize("metrics", CI_SPELLINGS.values(), ids=CI_SPELLINGS.keys())
def test_confidence_intervals_found_in_any_spelling(metrics):
    [oa] = tables(metrics)
    assert oa.name == "oa" and oa.rows == [("average", [Cell(0.5, 0.4, 0.6)])]


def test_tables_follow_the_json_keys():
    metrics = {
        "oa": {"average": 0.6, "ioi": 0.5}, "oa_ceiling": {"average": 0.9, "ioi": 0.8},
        "oa_vs_length": {"128": 0.7}, "oa_ceiling_vs_length": {"128": 0.95},
        "muspy": {"generated": {"pitch_entropy": 2.5}, "test": {"pitch_entropy": 2.7}},
        "usable_rate": 0.75, "usable_rate_ci_low": 0.5, "usable_rate_ci_high": 0.9, "per_piece": [1, 2],
    }
    by_name = {t.name: t for t in tables(metrics)}
    assert list(by_name)[:2] == ["summary", "oa"]  # the headline scalars, then the OA table
    assert by_name["oa"].columns == ["generated vs test", "ceiling: train vs test"]  # the ceiling merged in
    assert by_name["oa"].rows[0] == ("average", [Cell(0.6), Cell(0.9)])
    assert by_name["oa_vs_length"].rows == [("128", [Cell(0.7), Cell(0.95)])]
    assert by_name["muspy"].columns == ["generated", "test"]
    assert by_name["muspy"].rows == [("pitch_entropy", [Cell(2.5), Cell(2.7)])]
    assert by_name["summary"].rows == [("usable_rate", [Cell(0.75, 0.5, 0.9)])]  # lists are left out


def test_tables_read_the_evaluations_layout():
    """evaluate's metrics.json: oa_ci {attr: {lo, hi}}, in_average beside oa, muspy mean ± sd."""
    metrics = {
        "headline": 0.6, "headline_ci": {"lo": 0.58, "hi": 0.61},
        "oa": {"average": 0.6, "velocity": 1.0}, "oa_ci": {"average": {"lo": 0.5, "hi": 0.7}},
        "in_average": {"velocity": False}, "oa_ceiling": {"average": 0.9, "velocity": 1.0},
        "muspy": {"generated": {"polyphony": {"mean": 3.0, "sd": 1.0, "n": 150}},
                  "test": {"polyphony": {"mean": 1.5, "sd": 0.5, "n": 81}}, "gap": {"polyphony": 1.5}},
    }
    by_name = {t.name: t for t in tables(metrics)}
    assert by_name["summary"].rows == [("headline", [Cell(0.6, 0.58, 0.61)])]
    assert by_name["oa"].columns == ["generated vs test", "in the average", "ceiling: train vs test"]
    assert by_name["oa"].rows == [("average", [Cell(0.6, 0.5, 0.7), None, Cell(0.9)]),
                                  ("velocity", [Cell(1.0), Cell(False), Cell(1.0)])]
    assert by_name["muspy"].columns == ["generated", "test", "gap"]
    assert by_name["muspy"].rows == [("polyphony", [Cell("3.000 ± 1.000"), Cell("1.500 ± 0.500"), Cell(1.5)])]


def test_changed_params_compare_with_the_dataclass_defaults():
    params = load_params(ROOT / "params.yaml")
    params["train"]["steps"] = 7
    params["report"]["renderer"] = "synth"
    params["other_tool"] = {"x": 1}  # a section without a config class is ignored
    changed = {k: (v, d) for k, v, d in changed_params(params)}
    assert changed["train.steps"] == (7, TrainConfig().steps)
    assert changed["report.renderer"] == ("synth", "auto")
    assert not any(k.startswith(("model.", "other_tool")) for k in changed)


def test_experiments_table_from_exp_show_json():
    def entry(rev, name, lr, oa):
        return {"rev": rev, "name": name, "data": {
            "params": {"params.yaml": {"data": {"train": {"lr": lr, "steps": 5}}}},
            "metrics": {"results/evaluate/metrics.json": {"data": {"oa": {"average": oa}}}}}}
    head = entry("abc1234def", "main", 0.002, 0.6)
    head["experiments"] = [{"revs": [entry("e1", "lr-high", 0.004, 0.55)]}, {"revs": [entry("e2", None, 0.001, 0.7)]}]
    exps = experiments_table([entry("workspace", None, 0.002, 0.6), head], ["oa.average", "val_loss"])
    assert exps.params == ["train.lr"] and exps.metrics == ["oa.average"]
    assert [(r["name"], r["kind"]) for r in exps.rows] == [
        ("workspace", "workspace"), ("main", "commit"), ("lr-high", "experiment"), ("e2", "experiment")]
    assert [r["metrics"]["oa.average"] for r in exps.rows] == [0.6, 0.6, 0.55, 0.7]


def test_no_dvc_repository_is_a_note_not_an_error(tmp_path):
    exps = experiments_table(exp_show(tmp_path), ["oa.average"])
    assert exps.rows == [] and "not inside of a DVC repository" in exps.note


@pytest.fixture(scope="module")
def report_inputs(shared_data, tmp_path_factory) -> Path:
    """The outputs of every upstream stage, small: 3 generated pieces (one empty), 2 by length, 4 test."""
    root = tmp_path_factory.mktemp("reportinputs")
    tok = build_tokenizer(TokenizeConfig())
    files = midi_files(shared_data / "pop909")
    rows = [{"dataset": "pop909", "piece_id": f.stem, "split": "test", "source_sha256": "0" * 64,
             "n_tokens": n, "n_bars": 0, "tokens": ids}
            for f in files[300:304] for ids in [encode_file(tok, f)] for n in [len(ids)]]
    tokens = root / "data" / "tokens"
    write_shards(rows, tokens, max_rows=20, max_mb=64.0, zstd_level=3)
    tok.save(tokens)
    (tokens / "manifest.json").write_text(json.dumps({"splits": {"test": 4}, "pieces": 4, "vocab_size": len(tok)}))

    samples = root / "results" / "samples"
    pieces, by_length = [], {"128": []}
    for k, f in enumerate(files[310:312]):
        ids = encode_file(tok, f)[:160]
        write_midi(tok, ids, samples / "pieces" / f"{k:03d}.mid")
        pieces.append({"file": f"pieces/{k:03d}.mid", "n_tokens": 160, "n_bars": 5, "token_error_rate": 0.0})
        write_midi(tok, ids[:128], samples / "by_length" / "128" / f"{k:03d}.mid")
        by_length["128"].append({"file": f"by_length/128/{k:03d}.mid", "n_tokens": 128, "n_bars": 4})
    shutil.copy(shared_data / "bad-midi" / "empty.mid", samples / "pieces" / "002.mid")
    pieces.append({"file": "pieces/002.mid", "n_tokens": 0, "n_bars": 0, "token_error_rate": 1.0})
    (samples / "samples.json").write_text(json.dumps(
        {"pieces": pieces, "by_length": by_length, "checkpoint": {"path": "models/model.pt", "step": 42}}))
    (samples / "metrics.json").write_text(json.dumps({"seconds_per_piece": 0.5, "token_error_rate": 0.3}))

    evaluate = root / "results" / "evaluate"
    (evaluate / "plots").mkdir(parents=True)
    shutil.copy(ROOT / "results" / "evaluate" / "plots" / "oa_bars.png", evaluate / "plots" / "oa_bars.png")
    (evaluate / "metrics.json").write_text(json.dumps(
        {**CI_SPELLINGS["nested-value"], "oa_ceiling": {"average": 0.9}, "n_generated": 3}))
    train = root / "results" / "train"
    (train / "plots" / "metrics").mkdir(parents=True)
    (train / "metrics.json").write_text(json.dumps({"loss": 1.5, "step": 42, "tokens_per_s": 1000.0}))
    (train / "plots" / "metrics" / "loss.tsv").write_text("step\tloss\n10\t4.0\n20\t2.5\n42\t1.5\n")
    (train / "plots" / "metrics" / "val_loss.tsv").write_text("step\tval_loss\n42\t1.7\n")
    (root / "results" / "tokenize").mkdir()
    (root / "results" / "tokenize" / "metrics.json").write_text(json.dumps({"seconds": 1.0, "pieces": 4}))
    return root


@pytest.fixture(scope="module")
def report_dir(report_inputs, tmp_path_factory) -> Path:
    """`dvc repro --single-item report` in a temporary git+DVC repo holding those outputs."""
    proj = tmp_path_factory.mktemp("reportproj")
    for item in ("dvc.yaml", "smdim", "pipeline"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, proj / item)
    params = deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()),
                        {"report": {"test_pieces": 2, "test_tokens": 200}})
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for d in ("data", "results"):
        shutil.copytree(report_inputs / d, proj / d)
    # Only this stage: its inputs are hand-made here, not outputs of the upstream stages.
    stages = yaml.safe_load((proj / "dvc.yaml").read_text())["stages"]
    (proj / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"report": stages["report"]}}))
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@example.com"],
                ["git", "config", "user.name", "test"], [DVC, "init", "-q"]):
        run(cmd, proj)
    run([DVC, "repro", "--single-item", "report"], proj)
    return proj / "results" / "report"


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ("src", "href") and v is not None]


def test_stage_writes_a_page_whose_links_all_exist(report_dir):
    html = (report_dir / "index.html").read_text()
    parser = _Links()
    parser.feed(html)
    assert len(parser.links) >= 3 * (2 + 1 + 2)  # midi + png + audio for 3 + 2 + 2 pieces, plus plots
    for link in parser.links:
        parts = urlsplit(link)
        assert not parts.scheme and not parts.netloc, f"network or absolute URL: {link}"
        path = unquote(parts.path)
        assert not path.startswith("/") and ".." not in Path(path).parts, link
        assert (report_dir / path).is_file(), f"broken link: {link}"
    assert "http://" not in html and "https://" not in html and str(report_dir.parent) not in html
    summary = json.loads((report_dir / "summary.json").read_text())
    assert summary["pieces"] == {"generated": 3, "test": 2, "by_length": 2}
    assert summary["experiments"] == 0  # no commit yet: dvc exp show has nothing, the page says so
    for text in ("Checkpoint step 42", "0.500 <span class=\"ci\">[0.400, 0.600]</span>",
                 "report.test_pieces", "plots/loss.png", "plots/oa_bars.png", "test pop909/"):
        assert text in html, text


def test_report_audio_is_audible_except_the_empty_piece(report_dir):
    import soundfile

    clips = sorted(report_dir.glob("pieces/**/*.ogg"))
    assert len(clips) == 7
    for clip in clips:
        x, _ = soundfile.read(str(clip), dtype="float32")
        rms, peak = float(np.sqrt(np.mean(x**2))), float(np.abs(x).max())
        assert peak < 0.99, clip
        assert (rms == 0.0) == (clip.name == "002.ogg" and clip.parent.name == "generated"), clip


@pytest.mark.skipif(find_browser() is None, reason="no Chromium on PATH (apt-get install chromium)")
def test_page_in_headless_chromium(report_dir, tmp_path):
    shot = tmp_path / "report.png"
    result = check_page(report_dir / "index.html", shot)
    assert problems(result) == []
    assert len(result["images"]) == 3 + 2 + 2 + 2  # piano rolls + loss and OA plots
    assert len(result["audios"]) == 7 and all(a["duration"] > 0 for a in result["audios"])
    assert result["overflow_px"] <= 0  # nothing makes the page scroll sideways
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(find_browser() is None, reason="no Chromium on PATH (apt-get install chromium)")
def test_browser_check_reports_broken_files(report_dir, tmp_path):
    page = tmp_path / "page"
    shutil.copytree(report_dir, page)
    next(page.glob("pieces/generated/000.png")).write_bytes(b"not a png")
    next(page.glob("pieces/generated/001.ogg")).unlink()
    found = problems(check_page(page / "index.html"))
    assert any("image not decoded: pieces/generated/000.png" in p for p in found), found
    assert any("audio without duration: pieces/generated/001.ogg" in p for p in found), found


def test_flow_report_links_the_page(report_dir, tmp_path):
    _, missing, _ = workspace_report(tmp_path, [])
    assert "results/report/index.html: missing (written by the report stage)" in missing
    project = report_dir.parent.parent
    md, missing, plots = workspace_report(project, [])
    assert f"[results/report/index.html]({(report_dir / 'index.html').as_uri()})" in md
    assert "3 generated and 2 test pieces, audio by " in md
    assert not any("results/report" in m for m in missing)
    assert all("results/report" not in p.as_posix() for p in plots)  # its copies are not listed twice
