"""Stage `sample`: models/model.pt -> results/samples/ (MIDI, piano rolls, samples.json, metrics.json).

Pieces are `sample.n_tokens` tokens long; with `sample.bars` set, each is then cut to its first
`bars` bars (we generate tokens, not bars: a piece with fewer bars keeps all of them).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

import torch

from smdim.base import BaseConfig
from smdim.config import build, load_params, to_dict
from smdim.io import atomic_dir, write_json
from smdim.render.pianoroll import save_contact_sheet, save_pianoroll
from smdim.sampling.composer import Composer, constraints_for, count_bars, keep_bars, load_composer
from smdim.sampling.config import SampleConfig
from smdim.stage import resolve_device, run_stage, seed_everything
from smdim.tokenization.decode import write_midi
from smdim.tokenization.validity import token_error_rate

log = logging.getLogger("smdim.sample")


def write_set(composer: Composer, cfg: SampleConfig, out: Path, subdir: str, n: int, length: int,
              seed: int, *, bars: int | None, pianorolls: bool) -> list[dict]:
    """Generate `n` pieces of `length` tokens (cut to `bars` bars) into out/subdir/NNN.mid."""
    generator = torch.Generator(device=composer.device).manual_seed(seed)
    pieces = composer.generate(
        n, length, generator=generator, batch_size=cfg.batch_size, method=cfg.method, steps=cfg.steps,
        temperature=cfg.temperature, constraints=constraints_for(composer, cfg.pitch_range, cfg.max_polyphony),
        unmask_schedule=cfg.unmask_schedule, confidence_noise=cfg.confidence_noise, progress=True,
    )
    records = []
    for i, piece in enumerate(pieces):
        ids = keep_bars(piece.ids, composer.bar_ids, bars) if bars else piece.ids
        file = f"{subdir}/{i:03d}.mid"
        write_midi(composer.tokenizer, ids, out / file)
        if pianorolls:
            save_pianoroll(out / file, (out / file).with_suffix(".png"), title=f"{file} ({len(ids)} tokens)")
        records.append({
            "file": file,
            "n_tokens": len(ids),
            "n_bars": count_bars(ids, composer.bar_ids),
            "token_error_rate": token_error_rate(composer.tokenizer, ids),
            "seconds": piece.seconds,
            "network_calls": piece.network_calls,
        })
    return records


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
                           bars=cfg.bars, pianorolls=cfg.pianorolls)
        save_contact_sheet([out / p["file"] for p in pieces], out / "contact_sheet.png")
        (out / "by_length").mkdir()  # a declared dvc out, even when n_per_length is 0
        # Each length has its own seed so adding lengths or pieces leaves the others unchanged;
        # these sets are never cut to `bars` (the curve is OA vs generated tokens).
        by_length = {
            str(length): write_set(composer, cfg, out, f"by_length/{length}", cfg.n_per_length, length,
                                   seed + 7919 * length, bars=None, pianorolls=False)
            for length in (cfg.lengths if cfg.n_per_length else [])
        }
        write_json(out / "samples.json", {
            "pieces": pieces,
            "by_length": by_length,
            "checkpoint": {"path": cfg.checkpoint, "step": composer.step},
            "params": to_dict(cfg),
            "seed": seed,
        })
        n_tok = sum(p["n_tokens"] for p in pieces)
        secs = sum(p["seconds"] for p in pieces)
        write_json(out / "metrics.json", {
            "token_error_rate": statistics.fmean(p["token_error_rate"] for p in pieces),
            "seconds_per_piece": secs / len(pieces),
            "seconds_per_token": secs / max(n_tok, 1),
            "network_calls_per_batch": statistics.fmean(p["network_calls"] for p in pieces),
            "tokens_per_piece": n_tok / len(pieces),
            "bars_per_piece": statistics.fmean(p["n_bars"] for p in pieces),
        })
    log.info("%d pieces (+%d by length) in %.1f s -> %s", len(pieces),
             sum(len(v) for v in by_length.values()), time.perf_counter() - t0, cfg.out_dir)


if __name__ == "__main__":
    run_stage(main)
