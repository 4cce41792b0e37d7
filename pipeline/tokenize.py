"""Stage `tokenize`: data/raw -> data/tokens/ (Parquet shards, tokenizer.json, manifest.json)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from smdim.config import load_section
from smdim.errors import run_stage
from smdim.io import atomic_dir, write_json
from smdim.runtime import BaseConfig
from smdim.tokenization.config import TokenizeConfig
from smdim.tokenization.corpus import stage_metrics, tokenize_corpus, write_token_dataset

log = logging.getLogger("tokenize")


def main() -> None:
    base = load_section(BaseConfig, "base")
    cfg = load_section(TokenizeConfig, "tokenize")
    t0 = time.perf_counter()
    rows, skipped = tokenize_corpus(cfg, base.seed, base.workers)
    seconds = time.perf_counter() - t0
    with atomic_dir(cfg.out_dir) as tmp:
        manifest = write_token_dataset(Path(tmp), cfg, rows, skipped)
    metrics = stage_metrics(manifest, len(rows) + len(skipped), seconds)
    write_json(cfg.metrics_path, metrics)
    log.info("%d pieces, %d tokens, %d skipped; %.1f files/s, %.0f tokens/s", metrics["pieces"],
             metrics["tokens"], metrics["skipped"], metrics["files_per_s"], metrics["tokens_per_s"])


if __name__ == "__main__":
    run_stage(main)
