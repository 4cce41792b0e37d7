"""The offline `embedded` dataset: music21's bundled Han folk songs and Bach chorales -> MIDI."""

from __future__ import annotations

import copy
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from music21 import clef, common, converter, corpus, environment, key, meter, midi
from music21.corpus import chorales
from tqdm import tqdm

from smdim.data.config import EmbeddedConfig
from smdim.data.parallel import ordered_map

log = logging.getLogger(__name__)
SCRATCH_ENV = "MUSIC21_SCRATCH"  # where music21 may write temp files (default /tmp/music21)
_TUNE_START = re.compile(r"(?m)^(?=X:)")


@dataclass(frozen=True)
class Task:
    rel: str  # output path inside the dataset directory, e.g. "han1/0007.mid"
    kind: str  # "abc" (text holds one tune) | "corpus" (text is a music21 corpus name)
    text: str


def configure_music21() -> None:
    """Point music21's scratch directory at $MUSIC21_SCRATCH (or /tmp/music21), never $HOME."""
    scratch = Path(os.environ.get(SCRATCH_ENV, "/tmp/music21"))
    scratch.mkdir(parents=True, exist_ok=True)
    environment.Environment()["directoryScratch"] = str(scratch)  # in memory, not ~/.music21rc


def abc_tunes(text: str) -> list[str]:
    """Split an ABC opus into its tunes (each starts at an `X:` header), so each parses alone."""
    return [t for t in _TUNE_START.split(text) if t.startswith("X:")]


def plan(cfg: EmbeddedConfig) -> list[Task]:
    """The conversion tasks for the chosen collections, in a fixed order, `limit` per collection."""
    tasks: list[Task] = []
    for coll in cfg.collections:
        if coll in ("han1", "han2"):
            path = common.getCorpusFilePath() / "essenFolksong" / f"{coll}.abc"
            tunes = abc_tunes(path.read_text(encoding="latin-1"))[: cfg.limit]
            tasks += [Task(f"{coll}/{i:04d}.mid", "abc", t) for i, t in enumerate(tunes, 1)]
        else:
            names = list(chorales.Iterator(returnType="filename"))[: cfg.limit]
            tasks += [Task(f"chorales/{n.split('/')[-1]}.mid", "corpus", n) for n in names]
    return tasks


def convert(task: Task) -> tuple[str, bytes | None, str]:
    """Parse one piece and render MIDI bytes; on failure return (rel, None, reason)."""
    try:
        if task.kind == "abc":
            score = converter.parse(task.text, format="abc")
        else:
            score = corpus.parse(task.text, forceSource=True)  # forceSource: no pickle cache
        _unshare(score)
        data = midi.translate.music21ObjectToMidiFile(score).writestr()
    except Exception as e:  # music21 raises many unrelated types on odd input: skip the piece
        return task.rel, None, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    if not data:
        return task.rel, None, "empty MIDI output"
    return task.rel, data, ""


def build(cfg: EmbeddedConfig, out: Path, workers: int) -> list[dict]:
    """Convert the embedded corpus into `out`; return the skipped pieces with reasons."""
    configure_music21()
    t0 = time.perf_counter()
    tasks = plan(cfg)
    # Interleave collections so slow chorales and quick folk tunes share the workers evenly.
    order = sorted(range(len(tasks)), key=lambda i: (i % 7, i))
    todo = [tasks[i] for i in order]
    skipped = []
    seen: set[str] = set()
    with ordered_map(workers, initializer=configure_music21) as imap:
        for rel, data, reason in tqdm(imap(convert, todo), total=len(todo), desc="embedded", unit="piece"):
            if data is None:
                skipped.append({"item": rel, "reason": reason})
                continue
            if rel in seen:
                skipped.append({"item": rel, "reason": "listed twice in the chorale catalogue (same file)"})
                continue
            seen.add(rel)
            dest = out / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
    log.info("embedded: %d pieces converted, %d skipped in %.1f s with %d workers",
             len(seen), len(skipped), time.perf_counter() - t0, workers)
    return sorted(skipped, key=lambda s: s["item"])


def _unshare(score) -> None:
    """Deep-copy meter/key/clef objects the ABC importer shares between measures.

    music21's MIDI export raises StreamException ("already found in this Stream") otherwise.
    """
    shared = (meter.TimeSignature, key.KeySignature, clef.Clef)
    seen: set[int] = set()
    for container in score.recurse(streamsOnly=True, includeSelf=True):
        for el in list(container.getElementsByClass(shared)):  # direct children only
            if id(el) in seen:
                container.replace(el, copy.deepcopy(el))
            else:
                seen.add(id(el))
