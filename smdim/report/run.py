"""What the report says about the run: params that differ from the defaults, data counts, timings, loss."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from smdim.config import build, to_dict
from smdim.errors import ConfigError
from smdim.io import atomic_path
from smdim.report.tables import flatten
from smdim.sections import SECTIONS

# Metric keys that are timings or throughputs (the run's "how long").
TIMING_HINTS = ("seconds", "_per_s")


def changed_params(params: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(section.key, value, default) for every parameter whose value is not its dataclass default."""
    rows: list[tuple[str, Any, Any]] = []
    for section, data in params.items():
        cls = SECTIONS.get(section)
        if cls is None:  # a section another tool reads; nothing to compare with
            continue
        try:
            value = flatten(to_dict(build(cls, data, section)), section)
        except ConfigError as e:
            rows.append((section, f"invalid: {e}", ""))
            continue
        default = flatten(to_dict(cls()), section)
        rows += [(k, v, default.get(k, "")) for k, v in value.items() if v != default.get(k)]
    return rows


def timings(stage_metrics: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str, Any]]:
    """(stage, metric, value) of every timing or throughput among the stages' metrics."""
    return [
        (stage, key, v)
        for stage, metrics in stage_metrics.items()
        for key, v in flatten(metrics).items()
        if any(h in key for h in TIMING_HINTS) and isinstance(v, (int, float))
    ]


def data_counts(manifest: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(what, count) from data/tokens/manifest.json: pieces per split and dataset, tokens, vocabulary."""
    rows: list[tuple[str, Any]] = [(f"{split} pieces", n) for split, n in (manifest.get("splits") or {}).items()]
    for name, counts in (manifest.get("datasets") or {}).items():
        if isinstance(counts, Mapping):
            rows.append((f"dataset {name}", ", ".join(f"{k} {v}" for k, v in counts.items())))
    rows += [(k, manifest[k]) for k in ("pieces", "tokens", "vocab_size") if k in manifest]
    return rows


def read_tsv(path: str | os.PathLike) -> tuple[list[float], list[float]]:
    """A dvclive plot file (step<TAB>value) as (steps, values)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if not rows:
        return [], []
    xi, yi = 0, len(rows[0]) - 1  # dvclive writes step first, the value last
    data = [(float(r[xi]), float(r[yi])) for r in rows[1:] if len(r) > yi]
    return [x for x, _ in data], [y for _, y in data]


def plot_losses(curves: Mapping[str, tuple[list[float], list[float]]], png: str | os.PathLike) -> None:
    """Training curves (name -> (steps, values)) on one log-scale axis, as a PNG (atomic)."""
    fig = Figure(figsize=(8, 3.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, (x, y) in curves.items():
        ax.plot(x, y, marker="o" if len(x) < 20 else None, markersize=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (masked-token CE)")
    ax.grid(alpha=0.3)
    ax.legend()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")


def loss_curves(plots_dir: str | os.PathLike) -> dict[str, tuple[list[float], list[float]]]:
    """The loss and val_loss curves dvclive wrote under results/train/plots/metrics (those present)."""
    plots_dir = Path(plots_dir)
    out = {}
    for name in ("loss", "val_loss"):
        path = plots_dir / f"{name}.tsv"
        if path.is_file():
            x, y = read_tsv(path)
            if x:
                out[name] = (x, y)
    return out
