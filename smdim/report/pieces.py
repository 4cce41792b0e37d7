"""Pieces on the page: each MIDI file copied next to its piano roll and its audio clip."""

from __future__ import annotations

import os
import shutil
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from smdim.render.audio import AudioInfo, render_audio
from smdim.render.pianoroll import save_pianoroll
from smdim.report.config import ReportConfig
from smdim.tokenization.bpe import bar_start_ids
from smdim.tokenization.decode import write_midi


@dataclass
class PageItem:
    """One piece as the page shows it; paths are relative to the report folder."""

    title: str
    midi: str
    png: str
    audio: str
    n_tokens: int | None
    n_bars: int | None
    seconds: float = 0.0  # audio duration
    renderer: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. token_error_rate, source piece
    pending: Future | None = None  # the audio render, until finish() fills seconds and renderer

    def finish(self) -> PageItem:
        """Wait for the audio render and record its duration and renderer."""
        if self.pending is not None:
            audio: AudioInfo = self.pending.result()
            self.seconds, self.renderer, self.pending = audio.seconds, audio.renderer, None
        return self


def render_piece(midi_src: str | os.PathLike, out: Path, rel: str, cfg: ReportConfig, pool: Executor, *,
                 title: str,
                 png_src: str | os.PathLike | None = None, n_tokens: int | None = None,
                 n_bars: int | None = None, extra: dict[str, Any] | None = None) -> PageItem:
    """Copy `midi_src` to out/rel.mid with rel.png (copied from `png_src` or drawn) and rel.<audio>.

    The audio renders in `pool` (FluidSynth is another process: it runs beside the piano rolls);
    call `finish()` on the item for its duration.
    """
    midi = out / f"{rel}.mid"
    midi.parent.mkdir(parents=True, exist_ok=True)
    if Path(midi_src) != midi:
        shutil.copyfile(midi_src, midi)
    png = out / f"{rel}.png"
    if png_src is not None and Path(png_src).is_file():
        shutil.copyfile(png_src, png)
    else:
        save_pianoroll(midi, png, title=title)
    audio = pool.submit(render_audio, midi, out / f"{rel}.{cfg.audio_format}", renderer=cfg.renderer,
                        sample_rate=cfg.sample_rate, peak_dbfs=cfg.peak_dbfs)
    return PageItem(title, f"{rel}.mid", f"{rel}.png", f"{rel}.{cfg.audio_format}", n_tokens, n_bars,
                    extra=dict(extra or {}), pending=audio)


def generated_items(samples_dir: Path, records: list[dict], out: Path, sub: str,
                    cfg: ReportConfig, pool: Executor) -> list[PageItem]:
    """The generated pieces listed in samples.json (`records`), rendered under out/sub/."""
    items = []
    for r in records:
        src = samples_dir / r["file"]
        stem = Path(r["file"]).stem
        extra = {k: r[k] for k in ("token_error_rate",) if k in r}
        items.append(render_piece(src, out, f"{sub}/{stem}", cfg, pool, title=r["file"],
                                  png_src=src.with_suffix(".png"), n_tokens=r.get("n_tokens"),
                                  n_bars=r.get("n_bars"), extra=extra))
    return items


def pick_test(test: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """`n` test pieces drawn with `seed` from a stable order (same split, same seed: same pieces)."""
    if n <= 0 or test.empty:
        return test.iloc[:0]
    ordered = test.sort_values(["dataset", "piece_id"]).reset_index(drop=True)
    idx = np.random.default_rng(seed).choice(len(ordered), size=min(n, len(ordered)), replace=False)
    return ordered.iloc[np.sort(idx)]


def test_items(test: pd.DataFrame, tokenizer, crop: int | None, out: Path, sub: str,
               cfg: ReportConfig, pool: Executor) -> list[PageItem]:
    """Test-split pieces (rows with dataset, piece_id, tokens), their first `crop` tokens, rendered."""
    bar_ids = bar_start_ids(tokenizer)  # with BPE, every id that starts with a Bar
    items = []
    for i, row in enumerate(test.itertuples(index=False)):
        ids = [int(t) for t in (row.tokens[:crop] if crop else row.tokens)]
        rel = f"{sub}/{i:03d}"
        midi = out / f"{rel}.mid"
        write_midi(tokenizer, ids, midi)
        title = f"test {row.dataset}/{row.piece_id}"
        items.append(render_piece(midi, out, rel, cfg, pool, title=title, n_tokens=len(ids),
                                  n_bars=sum(i in bar_ids for i in ids),
                                  extra={"source": f"{row.dataset}/{row.piece_id}"}))
    return items
