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
from smdim.tokenization.corpus import (
    dataset_tokenizer,
    stage_metrics,
    tokenize_corpus,
    write_token_dataset,
)

log = logging.getLogger("tokenize")


def main() -> None:
    base = load_section(BaseConfig, "base")
    cfg = load_section(TokenizeConfig, "tokenize")
    t0 = time.perf_counter()
    rows, skipped = tokenize_corpus(cfg, cfg.split_seed_for(base.seed), base.workers)
    tokenizer, bpe_seconds = dataset_tokenizer(cfg, rows)
    seconds = time.perf_counter() - t0
    with atomic_dir(cfg.out_dir) as tmp:
        manifest = write_token_dataset(Path(tmp), cfg, rows, skipped, tokenizer)
    metrics = stage_metrics(manifest, len(rows) + len(skipped), seconds, bpe_seconds)
    write_json(cfg.metrics_path, metrics)
    log.info("%d pieces, %d tokens, %d skipped; %.1f files/s, %.0f tokens/s", metrics["pieces"],
             metrics["tokens"], metrics["skipped"], metrics["files_per_s"], metrics["tokens_per_s"])
    if cfg.bpe_vocab is not None:
        log.info("BPE: %d ids over %d REMI tokens; %d -> %d tokens (x%.2f), %.2f tokens per note; "
                 "learned in %.1f s", metrics["vocab_size"], metrics["base_vocab_size"], metrics["base_tokens"],
                 metrics["tokens"], metrics["compression"], metrics["tokens_per_note"], bpe_seconds)


if __name__ == "__main__":
    run_stage(main)
