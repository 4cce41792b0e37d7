"""Per-dataset manifest: every file with its sha256 and size, counts, skipped items, source."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from smdim.data.fetch import sha256_file
from smdim.io import read_json, write_json

MANIFEST = "manifest.json"
MIDI_SUFFIXES = (".mid", ".midi")


def midi_files(root: str | os.PathLike) -> list[Path]:
    """The MIDI files (.mid/.midi) under `root`, recursively, sorted by their '/'-separated relative path."""
    root = Path(root)
    found = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MIDI_SUFFIXES]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def write_manifest(
    directory: str | os.PathLike, dataset: str, source: dict[str, Any], skipped: list[dict]
) -> dict[str, Any]:
    """Describe the MIDI files now in `directory` and write `directory`/manifest.json."""
    directory = Path(directory)
    files = [
        {"path": p.relative_to(directory).as_posix(), "sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in midi_files(directory)
    ]
    manifest = {
        "dataset": dataset,
        "source": source,
        "counts": {
            "files": len(files),
            "bytes": sum(f["bytes"] for f in files),
            "skipped": len(skipped),
        },
        "files": files,
        "skipped": skipped,
    }
    write_json(directory / MANIFEST, manifest)
    return manifest


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """Read `directory`/manifest.json (one-line error when missing)."""
    return read_json(Path(directory) / MANIFEST)
