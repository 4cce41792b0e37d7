"""A tiny efficiency benchmark run writes its json/md/png files; budgets skip cells with a reason."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run

from smdim.benchmarks.config import BenchmarkConfig
from smdim.benchmarks.efficiency import run_row

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "blocks": ["mfa", "transformer"],
    "transformer_s1": False,
    "lengths": [32, 48],
    "d_model": 16,
    "n_heads": 2,
    "n_blocks": 1,
    "d_state": 4,
    "vocab_size": 20,
    "repeats": 1,
    "sample_steps": 2,
    "scan_lengths": [40, 80],
    "scan_d_inner": 8,
}


def test_tiny_benchmark_stage_writes_reports(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"base": {"seed": 1, "device": "cpu"}, "benchmark": TINY}))
    out = tmp_path / "bench"
    run([sys.executable, "-m", "pipeline.benchmark", "--params", str(params), "--out", str(out)], cwd=ROOT)
    assert sorted(p.name for p in out.iterdir()) == [
        "metrics.json", "scan.json", "scan.md", "scan.png", "table.md", "time_memory.png",
    ]
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("mfa", "transformer"):
        for length in ("32", "48"):
            cell = metrics["rows"][name]["cells"][length]
            assert cell["status"] == "ok", cell
            assert cell["step_s"] > 0 and cell["gflops"] > 0 and cell["sample_ms_per_token"] > 0
    # mfa's Mamba scans are added analytically on top of what FlopCounterMode sees.
    assert metrics["rows"]["mfa"]["cells"]["32"]["gflops_scan"] > 0
    assert metrics["rows"]["transformer"]["cells"]["32"]["gflops_scan"] == 0
    assert set(metrics["ratios"]["mfa_vs_transformer"]) == {"32", "48"}
    table = (out / "table.md").read_text()
    assert "| mfa | 4 |" in table and "| transformer | 4 |" in table
    scan = json.loads((out / "scan.json").read_text())
    assert scan["lengths"]["80"]["ref_status"] == "measured" and scan["lengths"]["80"]["speedup"] > 0
    assert (out / "time_memory.png").read_bytes()[:4] == b"\x89PNG"


def test_budget_skips_longer_cells_with_reason():
    cfg = BenchmarkConfig(**{**TINY, "lengths": [16, 32, 64], "time_budget": 1e-9, "sample_max_length": 8})
    cells = dict(run_row(cfg, {"name": "mfa", "block": "mfa", "stride": 4}, "cpu"))
    assert cells[16]["status"] == "ok" and "sample_ms_per_token" not in cells[16]
    for length in (32, 64):
        assert cells[length]["status"] == "skipped"
        assert "time_budget" in cells[length]["reason"]


def test_reference_scan_extrapolates_at_least_quadratically():
    from smdim.benchmarks.scan_speed import predict_reference

    assert predict_reference([], 1024) == (None, 2.0)
    # One measurement: quadratic.
    assert predict_reference([(1024, 1.0)], 4096) == (16.0, 2.0)
    # Two: the measured growth (x8 per doubling = L^3), never below L^2.
    seconds, power = predict_reference([(1024, 1.0), (2048, 8.0)], 4096)
    assert power == pytest.approx(3.0) and seconds == pytest.approx(64.0)
    assert predict_reference([(1024, 1.0), (2048, 2.0)], 4096) == (8.0, 2.0)
