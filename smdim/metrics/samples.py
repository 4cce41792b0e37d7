"""Reading the sample stage's output: the main set, the by-length sets and the crop length."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from smdim.data.manifest import midi_files
from smdim.errors import SmdimError
from smdim.io import read_json


def main_pieces(samples_dir: str | Path) -> list[Path]:
    """The MIDI files of results/samples/pieces/ (one-line error when the sample stage has not run)."""
    pieces_dir = Path(samples_dir) / "pieces"
    if not pieces_dir.is_dir():
        raise SmdimError(f"{pieces_dir}: not found; run the sample stage first (dvc repro sample)")
    files = midi_files(pieces_dir)
    if not files:
        raise SmdimError(f"{pieces_dir}: no .mid files; run the sample stage first (dvc repro sample)")
    return files


def resolve_crop(crop_tokens: int | str | None, samples_dir: str | Path) -> int | None:
    """evaluate.crop_tokens -> a token count or None; "auto" = median n_tokens in samples.json."""
    if crop_tokens != "auto":
        return crop_tokens  # type: ignore[return-value]
    path = Path(samples_dir) / "samples.json"
    data = read_json(path)
    rows = data.get("pieces", data) if isinstance(data, dict) else data
    try:
        lengths = [int(r["n_tokens"]) for r in rows if isinstance(r, dict)]
    except (KeyError, TypeError, ValueError):
        lengths = []
    if not lengths:
        raise SmdimError(
            f"{path}: no per-piece n_tokens to set evaluate.crop_tokens=auto; "
            "set evaluate.crop_tokens to a token count (or null for whole pieces)"
        )
    return int(statistics.median(lengths))


def length_sets(samples_dir: str | Path) -> dict[int, list[Path]]:
    """MIDI files of each results/samples/by_length/<L>/ directory, keyed by the integer L, ascending."""
    root = Path(samples_dir) / "by_length"
    if not root.is_dir():
        return {}
    dirs = {int(p.name): p for p in root.iterdir() if p.is_dir() and p.name.isdigit()}
    return {length: midi_files(dirs[length]) for length in sorted(dirs)}


def collection_sets(samples_dir: str | Path) -> dict[str, list[Path]]:
    """MIDI files of each by_collection/ set, keyed by collection name (from samples.json)."""
    index = Path(samples_dir) / "samples.json"
    if not index.is_file():
        return {}
    sets = json.loads(index.read_text(encoding="utf-8")).get("by_collection") or {}
    return {name: [Path(samples_dir) / r["file"] for r in records] for name, records in sets.items() if records}
