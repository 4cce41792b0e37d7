"""Stage `report`: the pipeline's outputs -> results/report/ (index.html, pieces with audio, plots).

Open results/report/index.html in a browser (file:// works), or serve the folder with
`python -m http.server -d results/report`; every link in it is relative.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from smdim.config import build, load_params
from smdim.errors import run_stage
from smdim.io import atomic_dir
from smdim.report.build import Inputs, build_report
from smdim.report.config import ReportConfig
from smdim.runtime import BaseConfig

log = logging.getLogger("smdim.report")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="results/report", help="output directory")
    args = ap.parse_args()
    params = load_params(args.params)
    base = build(BaseConfig, params.get("base"), "base")
    cfg = build(ReportConfig, params.get("report"), "report")
    with atomic_dir(args.out) as out:
        summary = build_report(cfg, params, base.seed, Inputs(project=Path(args.params).resolve().parent), out,
                               workers=base.workers)
    for note in summary["notes"]:
        log.warning("%s", note)
    log.info("%d + %d test pieces, audio by %s, %d files, %.1f MB in %.1f s -> %s/index.html",
             summary["pieces"]["generated"] + summary["pieces"]["by_length"], summary["pieces"]["test"],
             summary["renderer"], summary["files"], summary["bytes"] / 1e6, summary["seconds"], args.out)


if __name__ == "__main__":
    run_stage(main)
