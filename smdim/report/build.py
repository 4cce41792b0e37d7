"""Assemble results/report/: read the stages' outputs, render the pieces, write index.html."""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smdim.data.shards import read_shards
from smdim.io import write_json, write_text
from smdim.render.audio import choose_renderer, compressed_formats, missing_tools_note
from smdim.report import html
from smdim.report.config import ReportConfig
from smdim.report.experiments import exp_show, experiments_table
from smdim.report.pieces import generated_items, pick_test, test_items
from smdim.report.run import changed_params, data_counts, loss_curves, plot_losses, timings
from smdim.report.tables import tables
from smdim.tokenization.tokenizer import load_tokenizer


@dataclass(frozen=True)
class Inputs:
    """Where the report reads the pipeline's outputs (paths as dvc.yaml declares them)."""

    project: Path = Path(".")  # the DVC project (for `dvc exp show`)
    samples: Path = Path("results/samples")
    evaluate: Path = Path("results/evaluate")
    train: Path = Path("results/train")
    tokenize: Path = Path("results/tokenize")
    tokens: Path = Path("data/tokens")


def _json(path: Path, notes: list[str]) -> Any:
    """Parsed JSON, or None with a note on the page when the file is missing or broken."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        notes.append(f"{path} is missing: run its stage (dvc repro); the page shows the rest")
    except (OSError, ValueError) as e:
        notes.append(f"{path} is unreadable ({type(e).__name__}); rerun its stage")
    return None


def _test_crop(cfg: ReportConfig, pieces: list[dict]) -> int | None:
    if cfg.test_tokens != "auto":
        return cfg.test_tokens
    lengths = [p["n_tokens"] for p in pieces if p.get("n_tokens")]
    return int(statistics.median(lengths)) if lengths else None


def build_report(cfg: ReportConfig, params: Mapping[str, Any], seed: int, inputs: Inputs,
                 out: Path, workers: int = 2) -> dict[str, Any]:
    """Write index.html and everything it links into the (empty) folder `out`; returns summary.json."""
    t0 = time.perf_counter()
    notes: list[str] = []
    renderer = choose_renderer(cfg.renderer)
    if cfg.renderer == "auto" and renderer == "synth":
        notes.append(missing_tools_note() or "FluidSynth unavailable: audio is a simple numpy synthesis")
    if cfg.audio_format != "wav" and f".{cfg.audio_format}" not in compressed_formats():
        notes.append(f"{cfg.audio_format} needs the soundfile package: audio written as WAV instead")
        cfg = dataclasses.replace(cfg, audio_format="wav")

    samples = _json(inputs.samples / "samples.json", notes) or {}
    by_length: dict[str, list] = {}
    test = []
    # Piano rolls here, audio in `workers` threads beside them (each FluidSynth run is a process).
    with ThreadPoolExecutor(max(workers, 1)) as pool:
        generated = generated_items(inputs.samples, samples.get("pieces") or [], out, "pieces/generated",
                                    cfg, pool)
        if cfg.test_pieces:
            tokenizer = load_tokenizer(inputs.tokens / "tokenizer.json")
            rows = read_shards(inputs.tokens, split="test", columns=["dataset", "piece_id", "tokens"])
            test = test_items(pick_test(rows, cfg.test_pieces, seed), tokenizer,
                              _test_crop(cfg, samples.get("pieces") or []), out, "pieces/test", cfg, pool)
        if cfg.by_length:
            for length, records in (samples.get("by_length") or {}).items():
                by_length[length] = generated_items(inputs.samples, records, out, f"pieces/by_length/{length}",
                                                    cfg, pool)
        for item in [*generated, *test, *(x for v in by_length.values() for x in v)]:
            item.finish()

    plots = []
    (out / "plots").mkdir(parents=True, exist_ok=True)
    curves = loss_curves(inputs.train / "plots" / "metrics")
    if curves:
        plot_losses(curves, out / "plots" / "loss.png")
        plots.append(("plots/loss.png", "training loss and validation loss"))
    for png in sorted((inputs.evaluate / "plots").glob("*.png")):
        shutil.copyfile(png, out / "plots" / png.name)
        plots.append((f"plots/{png.name}", f"evaluation: {png.stem.replace('_', ' ')}"))

    metrics = _json(inputs.evaluate / "metrics.json", notes)
    stage_metrics = {stage: m for stage, path in (("tokenize", inputs.tokenize), ("train", inputs.train),
                                                  ("sample", inputs.samples))
                     if isinstance(m := _json(path / "metrics.json", notes), Mapping)}
    manifest = _json(inputs.tokens / "manifest.json", notes) or {}
    exps = experiments_table(exp_show(inputs.project), cfg.headline_metrics) if cfg.experiments else None

    renderers = sorted({i.renderer for i in [*generated, *test, *(x for v in by_length.values() for x in v)]})
    renderer_text = (", ".join(renderers) or renderer) + (
        " (FluidSynth, TimGM6mb.sf2 General MIDI soundfont)" if renderers == ["fluidsynth"] else
        " (numpy: decaying harmonics)" if renderers == ["synth"] else "")
    renderer_text += f", {cfg.audio_format.upper()} {cfg.sample_rate} Hz mono, peak {cfg.peak_dbfs:g} dBFS"
    run = {
        "step": (samples.get("checkpoint") or {}).get("step", "?"),
        "changed_params": changed_params(params),
        "counts": data_counts(manifest),
        "timings": timings(stage_metrics),
        "renderer_text": renderer_text,
    }
    run["seconds"] = time.perf_counter() - t0
    write_text(out / "index.html", html.page(
        run=run, tables=tables(metrics) if isinstance(metrics, Mapping) else [], plots=plots,
        generated=generated, test=test, by_length=by_length, experiments=exps, notes=notes))
    files = [p for p in out.rglob("*") if p.is_file()]
    summary = {
        "renderer": renderers[0] if len(renderers) == 1 else renderers or renderer,
        "audio_format": cfg.audio_format,
        "pieces": {"generated": len(generated), "test": len(test),
                   "by_length": sum(len(v) for v in by_length.values())},
        "audio_seconds": round(sum(i.seconds for i in [*generated, *test]), 2),
        "files": len(files) + 1,
        "bytes": sum(p.stat().st_size for p in files),
        "seconds": round(time.perf_counter() - t0, 2),
        "experiments": len(exps.rows) if exps else 0,
        "notes": notes,
    }
    write_json(out / "summary.json", summary)
    return summary
