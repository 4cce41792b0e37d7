"""Stage `sample`: models/model.pt -> results/samples/ (MIDI, piano rolls, samples.json, metrics.json).

Pieces are `sample.n_tokens` tokens long; with `sample.bars` set, each is then cut to its first
`bars` bars (we generate tokens, not bars: a piece with fewer bars keeps all of them).
"""

from __future__ import annotations

import argparse
import logging
import time

from smdim.config import build, load_params, to_dict
from smdim.errors import run_stage
from smdim.io import atomic_dir, write_json
from smdim.render.pianoroll import save_contact_sheet
from smdim.runtime import BaseConfig, resolve_device, seed_everything
from smdim.sampling.composer import load_composer
from smdim.sampling.config import SampleConfig
from smdim.sampling.sets import collection_dir, cost_by_bars, length_seed, set_metrics, write_set

log = logging.getLogger("smdim.sample")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    params = load_params(args.params)
    base = build(BaseConfig, params.get("base"), "base")
    cfg = build(SampleConfig, params.get("sample"), "sample")
    seed = base.seed + cfg.seed_offset
    seed_everything(seed)
    composer = load_composer(cfg.checkpoint, resolve_device(base.device))

    t0 = time.perf_counter()
    with atomic_dir(cfg.out_dir) as out:
        pieces = write_set(composer, cfg, out, "pieces", cfg.n, cfg.n_tokens, seed,
                           bars=cfg.bars, pianorolls=cfg.pianorolls, collection=cfg.collection)
        save_contact_sheet([out / p["file"] for p in pieces], out / "contact_sheet.png")
        (out / "by_length").mkdir()  # a declared dvc out, even when n_per_length is 0
        # These sets are never cut to `bars`: the curve is OA vs generated tokens.
        by_length = {
            str(length): write_set(composer, cfg, out, f"by_length/{length}", cfg.n_per_length, length,
                                   length_seed(seed, length), bars=None, pianorolls=False,
                                   collection=cfg.collection)
            for length in (cfg.lengths if cfg.n_per_length else [])
        }
        # One set per collection of a conditioned model, scored against that collection's test pieces.
        by_collection = {
            name: write_set(composer, cfg, out, f"by_collection/{collection_dir(name)}", cfg.per_collection,
                            cfg.n_tokens, seed + 104729 * (i + 1), bars=cfg.bars, pianorolls=cfg.pianorolls,
                            collection=name)
            for i, name in enumerate(composer.collections if cfg.per_collection else ())
        }
        write_json(out / "samples.json", {
            "pieces": pieces,
            "by_length": by_length,
            "by_collection": by_collection,
            "checkpoint": {"path": cfg.checkpoint, "step": composer.step},
            "params": to_dict(cfg),
            "seed": seed,
        })
        write_json(out / "metrics.json", {**set_metrics(pieces), **cost_by_bars(composer, cfg, pieces, seed)})
    log.info("%d pieces (+%d by length) in %.1f s -> %s", len(pieces),
             sum(len(v) for v in by_length.values()), time.perf_counter() - t0, cfg.out_dir)


if __name__ == "__main__":
    run_stage(main)
