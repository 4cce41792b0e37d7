"""Sample sets on disk: NNN.mid (+ piano rolls) per piece, their records, and the set's metrics.

The `sample` stage writes a main set (pieces/) and one set per length (by_length/<L>/) with
these functions; samples.json keeps one record per piece for the evaluation stage.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import torch

from smdim.render.pianoroll import save_pianoroll
from smdim.sampling.composer import Composer, constraints_for, count_bars, keep_bars
from smdim.sampling.config import SampleConfig
from smdim.sampling.cost import generation_cost
from smdim.tokenization.decode import write_midi
from smdim.tokenization.validity import token_error_rate


def write_set(composer: Composer, cfg: SampleConfig, out: Path, subdir: str, n: int, length: int,
              seed: int, *, bars: int | None, pianorolls: bool, collection: str | None = None) -> list[dict]:
    """Generate `n` pieces of `length` tokens (cut to `bars` bars) into out/subdir/NNN.mid;
    `collection`: ask a conditioned model for that collection ("prior": the train split's mix)."""
    generator = torch.Generator(device=composer.device).manual_seed(seed)
    collections = composer.collections_for(collection, n, seed)
    pieces = composer.generate(n, length, generator=generator, batch_size=cfg.batch_size, progress=True,
                               collection=collections, **sampler_kwargs(composer, cfg))
    records = []
    for i, (piece, asked) in enumerate(zip(pieces, collections, strict=True)):
        ids = keep_bars(piece.ids, composer.bar_ids, bars) if bars else piece.ids
        file = f"{subdir}/{i:03d}.mid"
        write_midi(composer.tokenizer, ids, out / file)
        if pianorolls:
            save_pianoroll(out / file, (out / file).with_suffix(".png"), title=f"{file} ({len(ids)} tokens)")
        records.append({
            "file": file,
            "n_tokens": len(ids),
            "n_slack": piece.n_slack,  # empty slots (diffusion.slack) the piece had before the cut
            "n_bars": count_bars(ids, composer.bar_ids),
            "token_error_rate": token_error_rate(composer.tokenizer, ids),
            "seconds": piece.seconds,
            "network_calls": piece.network_calls,
            "collection": asked,
        })
    return records


def sampler_kwargs(composer: Composer, cfg: SampleConfig) -> dict:
    """The `sample` section as Composer.generate's sampler options."""
    return dict(
        method=cfg.method, steps=cfg.steps, temperature=cfg.temperature,
        constraints=constraints_for(composer, cfg.pitch_range, cfg.max_polyphony, scale=cfg.scale,
                                    grammar=cfg.grammar, scale_notes=cfg.scale_notes),
        unmask_schedule=cfg.unmask_schedule, confidence_noise=cfg.confidence_noise, confidence=cfg.confidence,
        block_tokens=cfg.block_tokens,
        remask=cfg.remask, remask_eta=cfg.remask_eta, top_k=cfg.top_k, top_p=cfg.top_p,
        correct_rounds=cfg.correct_rounds, correct_share=cfg.correct_share,
        correct_temperature=cfg.correct_temperature, key=cfg.key,
    )


def cost_by_bars(composer: Composer, cfg: SampleConfig, records: list[dict], seed: int) -> dict[str, dict]:
    """Seconds and peak memory to generate one piece of each of `cfg.cost_bars` bars (batch 1).

    The token count for B bars is B times the main set's tokens per bar, the same rule for every
    model, so diffusion (which needs the length up front) and streaming compare on equal pieces.
    """
    bars = sum(r["n_bars"] for r in records)
    per_bar = sum(r["n_tokens"] for r in records) / max(bars, 1)
    return {f"generate_{b}_bars": generation_cost(composer, math.ceil(b * per_bar), seed + b,
                                                  **sampler_kwargs(composer, cfg))
            for b in cfg.cost_bars}


def collection_dir(name: str) -> str:
    """by_collection/ folder of a collection: 'embedded/han1' -> 'embedded__han1'."""
    return name.replace("/", "__")


def length_seed(seed: int, length: int) -> int:
    """The seed of the by_length/<length>/ set: adding lengths or pieces leaves the others unchanged."""
    return seed + 7919 * length


def set_metrics(records: list[dict]) -> dict[str, float]:
    """Token errors, speed and size of a set of piece records (results/samples/metrics.json)."""
    n_tok = sum(p["n_tokens"] for p in records)
    secs = sum(p["seconds"] for p in records)
    return {
        "token_error_rate": statistics.fmean(p["token_error_rate"] for p in records),
        "seconds_per_piece": secs / len(records),
        "seconds_per_token": secs / max(n_tok, 1),
        "network_calls_per_batch": statistics.fmean(p["network_calls"] for p in records),
        "tokens_per_piece": n_tok / len(records),
        "bars_per_piece": statistics.fmean(p["n_bars"] for p in records),
    }
