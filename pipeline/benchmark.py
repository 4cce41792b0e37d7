"""DVC stage `benchmark`: efficiency per block type and length, and the scan speed-up."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from smdim.benchmarks.config import BenchmarkConfig
from smdim.benchmarks.efficiency import machine_info, run_efficiency
from smdim.benchmarks.report import write_reports
from smdim.benchmarks.scan_speed import run_scan_speed
from smdim.config import build, load_params, to_dict
from smdim.errors import run_stage
from smdim.runtime import BaseConfig, resolve_device, seed_everything


def main() -> None:
    """Parse params, run both benchmarks, write results/benchmark/."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="results/benchmark")
    args = parser.parse_args()
    params = load_params(args.params)
    base = build(BaseConfig, params.get("base"), "base")
    cfg = build(BenchmarkConfig, params.get("benchmark"), "benchmark")
    seed_everything(base.seed)
    device = resolve_device(base.device)
    load_before = os.getloadavg()[0]
    rows = run_efficiency(cfg, device)
    scan = run_scan_speed(cfg)
    result = {
        "config": to_dict(cfg), "device": device, "machine": machine_info(), "rows": rows,
        "load_before": load_before, "load_after": os.getloadavg()[0],
    }
    write_reports(Path(args.out), result, scan)


if __name__ == "__main__":
    run_stage(main)
