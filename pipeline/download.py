"""Stage `download`: params.yaml `download` -> data/raw/<dataset>/ (MIDI files + manifest.json)."""

from __future__ import annotations

from pathlib import Path

from smdim.config import load_section
from smdim.data.config import DownloadConfig
from smdim.data.sources import fetch_dataset
from smdim.errors import run_stage
from smdim.io import atomic_dir
from smdim.runtime import BaseConfig


def main() -> None:
    base = load_section(BaseConfig, "base")
    cfg = load_section(DownloadConfig, "download")
    # Build every dataset in a temporary sibling, renamed over data/raw only when all succeeded.
    with atomic_dir(cfg.out_dir) as tmp:
        for name in cfg.datasets:
            fetch_dataset(name, cfg, Path(tmp) / name, base.workers)


if __name__ == "__main__":
    run_stage(main)
