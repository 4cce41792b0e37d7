"""Stage `evaluate`: OA (with intervals), muspy metrics and SRS of results/samples vs the test split
-> results/evaluate/ (metrics, report, plots)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from smdim.config import build, load_params
from smdim.data.shards import read_shards
from smdim.errors import run_stage
from smdim.io import write_json, write_text
from smdim.metrics.config import EvaluateConfig
from smdim.metrics.evaluate import evaluate_run
from smdim.metrics.report import length_records, markdown_report, plot_bars, plot_vs_length
from smdim.runtime import BaseConfig, seed_everything
from smdim.tokenization.bpe import bar_start_ids
from smdim.tokenization.decode import tokens_to_score
from smdim.tokenization.tokenizer import load_tokenizer

log = logging.getLogger("smdim.evaluate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--samples", default="results/samples", help="sample stage output directory")
    ap.add_argument("--tokens", default="data/tokens", help="token shards + tokenizer.json")
    ap.add_argument("--out", default="results/evaluate", help="output directory")
    args = ap.parse_args()

    params = load_params(args.params)
    base = build(BaseConfig, params.get("base"), "base")
    cfg = build(EvaluateConfig, params.get("evaluate"), "evaluate")
    seed_everything(base.seed)

    t0 = time.perf_counter()
    tokens = Path(args.tokens)
    tokenizer = load_tokenizer(tokens / "tokenizer.json")
    cols = ["dataset", "piece_id", "tokens"]
    result = evaluate_run(
        cfg,
        seed=base.seed,
        samples_dir=args.samples,
        test=read_shards(tokens, split="test", columns=cols),
        train=read_shards(tokens, split="train", columns=cols),
        decode=lambda ids: tokens_to_score(tokenizer, ids),
        bar_id=bar_start_ids(tokenizer),  # with BPE, every id that starts with a Bar
    )
    seconds = time.perf_counter() - t0

    out = Path(args.out)
    # Report-only details stay out of the dvc metrics file.
    metrics = {k: v for k, v in result.items() if k not in ("feature_means", "skipped_by_reason")}
    write_json(out / "metrics.json", metrics)
    write_text(out / "report.md", markdown_report(result, seconds))
    write_json(out / "plots" / "oa_vs_length.json", length_records(result))
    plot_bars(result, out / "plots" / "oa_bars.png")
    plot_vs_length(result, out / "plots" / "oa_vs_length.png")
    log.info("headline %.3f = average OA %.3f (ceiling %.3f) x usable rate %.3f, in %.1f s -> %s",
             result["headline"], result["oa"]["average"], result["oa_ceiling"]["average"],
             result["usable_rate"], seconds, out)


if __name__ == "__main__":
    run_stage(main)
