"""Piano-roll PNGs of MIDI files: time in beats (bar lines drawn) vs pitch, velocity as colour."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

from smdim.errors import SmdimError
from smdim.io import atomic_path
from smdim.metrics.features import NoFeatures, bar_starts
from smdim.metrics.pieces import load_piece

CMAP = "viridis"


def _load(score_or_path):
    try:
        return load_piece(score_or_path)
    except NoFeatures as e:  # an unreadable file: one line a user can act on
        raise SmdimError(f"{score_or_path}: cannot read MIDI ({e.__cause__}); check the file") from None


def _notes(score) -> np.ndarray:
    """All notes as an array (N, 4): start beat, duration in beats, pitch, velocity."""
    tpq = max(int(score.ticks_per_quarter), 1)
    rows = [
        (n.time / tpq, n.duration / tpq, n.pitch, n.velocity)
        for track in score.tracks
        for n in track.notes
    ]
    return np.asarray(rows, dtype=float).reshape(-1, 4)


def _bar_lines(score, end_beat: float) -> list[float]:
    """Bar starts in beats (quarter notes), following the time signatures (4/4 if none)."""
    tpq = max(int(score.ticks_per_quarter), 1)
    starts = bar_starts(score, int(end_beat * tpq)) / tpq
    return starts[starts < end_beat][:10_000].tolist()


def _draw(ax: Axes, score, *, small: bool = False) -> None:
    notes = _notes(score)
    if len(notes) == 0:
        ax.text(0.5, 0.5, "no notes", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    start, dur, pitch, vel = notes.T
    dur = np.maximum(dur, 1e-3)
    boxes = np.stack(
        [
            np.stack([start, pitch - 0.4], 1),
            np.stack([start + dur, pitch - 0.4], 1),
            np.stack([start + dur, pitch + 0.4], 1),
            np.stack([start, pitch + 0.4], 1),
        ],
        1,
    )  # (N, 4 corners, 2)
    bars = PolyCollection(boxes, array=vel, cmap=CMAP, clim=(0, 127), linewidths=0)
    ax.add_collection(bars)
    end = float((start + dur).max())
    for b in _bar_lines(score, end):
        ax.axvline(b, color="0.8", linewidth=0.3 if small else 0.6, zorder=0)
    ax.set_xlim(0, end)
    ax.set_ylim(pitch.min() - 2, pitch.max() + 2)
    if small:
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        ax.set_xlabel("time (beats)")
        ax.set_ylabel("MIDI pitch")
        ax.figure.colorbar(bars, ax=ax, label="velocity")


def save_pianoroll(score_or_midi_path, png_path: str | os.PathLike, title: str | None = None) -> None:
    """Write a piano-roll PNG of a symusic.Score or MIDI file (atomic)."""
    score = _load(score_or_midi_path)
    fig = Figure(figsize=(12, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    _draw(ax, score)
    if title:
        ax.set_title(title)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")


def save_contact_sheet(midi_paths: Sequence[str | os.PathLike], png_path: str | os.PathLike) -> None:
    """Write one PNG with a grid of small piano rolls, titled by file name (atomic)."""
    if not midi_paths:
        raise SmdimError(f"{png_path}: no MIDI files to put on the contact sheet")
    cols = math.ceil(math.sqrt(len(midi_paths)))
    rows = math.ceil(len(midi_paths) / cols)
    fig = Figure(figsize=(3 * cols, 2 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(midi_paths):]:
        ax.set_axis_off()
    for ax, path in zip(axes.flat, midi_paths, strict=False):  # extra cells stay blank
        _draw(ax, _load(path), small=True)
        ax.set_title(Path(path).name, fontsize=8)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
