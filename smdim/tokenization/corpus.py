"""Tokenize the downloaded corpus in parallel: one row per piece; bad files skipped and listed.

With `tokenize.bpe_vocab` set, every piece is first encoded to base REMI ids as without BPE, then
BPE is learned on the train split only (valid/test stay unseen) and every split is re-encoded
from those ids (no second MIDI parse).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import miditok
import numpy as np
from symusic import Score
from tqdm import tqdm

from smdim.data.manifest import read_manifest
from smdim.data.parallel import ordered_map
from smdim.data.shards import write_shards
from smdim.data.split import SPLITS, assign_split
from smdim.errors import SmdimError
from smdim.io import write_json
from smdim.tokenization.bpe import encode_bpe, note_counts, train_bpe
from smdim.tokenization.config import TokenizeConfig
from smdim.tokenization.encode import encode_score
from smdim.tokenization.tokenizer import build_tokenizer

PERCENTILES = (0, 5, 25, 50, 75, 95, 99, 100)
BPE_BATCH = 64  # pieces per batched BPE encode call (one progress-bar tick each)

log = logging.getLogger("tokenize")


@dataclass(frozen=True)
class Piece:
    dataset: str
    rel: str  # path inside data/raw/<dataset>/
    path: str

    @property
    def piece_id(self) -> str:
        return self.rel.rsplit(".", 1)[0]


def list_pieces(raw_dir: str | os.PathLike) -> list[Piece]:
    """Every MIDI file listed in data/raw/<dataset>/manifest.json, sorted by dataset and path."""
    raw = Path(raw_dir)
    datasets = sorted(p.name for p in raw.iterdir() if p.is_dir()) if raw.is_dir() else []
    if not datasets:
        raise SmdimError(f"{raw}: no datasets; run `dvc repro download` first")
    pieces = []
    for ds in datasets:
        for f in read_manifest(raw / ds)["files"]:
            pieces.append(Piece(ds, f["path"], str(raw / ds / f["path"])))
    return pieces


_STATE: dict[str, Any] = {}  # per worker process: the tokenizer and config


def _init(cfg: TokenizeConfig) -> None:
    tok = build_tokenizer(cfg)
    _STATE.update(cfg=cfg, tok=tok, bar=tok.vocab["Bar_None"], notes=note_counts(tok))


def encode_piece(piece: Piece) -> dict[str, Any]:
    """One row (without split) for `piece`, or {"skip": reason} when it cannot be used."""
    cfg, tok = _STATE["cfg"], _STATE["tok"]
    data = Path(piece.path).read_bytes()
    row: dict[str, Any] = {"dataset": piece.dataset, "piece_id": piece.piece_id,
                           "source_sha256": hashlib.sha256(data).hexdigest()}
    try:
        ids = encode_score(tok, Score.from_midi(data), merge=cfg.merge_tracks)
    except Exception as e:  # symusic/miditok raise RuntimeError, ValueError, ... on corrupt files
        return {**row, "skip": f"unreadable MIDI ({type(e).__name__}: {str(e)[:120]})"}
    tokens = np.asarray(ids, dtype=np.int32)
    n_notes = int(_STATE["notes"][tokens].sum())
    if n_notes < max(cfg.min_notes, 1):
        return {**row, "skip": f"{n_notes} notes after preprocessing (min_notes={cfg.min_notes})"}
    return {**row, "n_tokens": len(tokens), "n_bars": int((tokens == _STATE["bar"]).sum()),
            "n_notes": n_notes, "n_base_tokens": len(tokens), "tokens": tokens}


def tokenize_corpus(cfg: TokenizeConfig, seed: int, workers: int) -> tuple[list[dict], list[dict]]:
    """Encode every downloaded piece; return (rows in (dataset, piece_id) order, skipped)."""
    pieces = list_pieces(cfg.raw_dir)
    rows, skipped = [], []
    with ordered_map(workers, initializer=_init, initargs=(cfg,), chunksize=4) as imap:
        for piece, out in zip(pieces, tqdm(imap(encode_piece, pieces), total=len(pieces),
                                           desc="tokenize", unit="file"), strict=True):
            if "skip" in out:
                skipped.append({"dataset": piece.dataset, "path": piece.rel, "reason": out["skip"]})
                continue
            out["split"] = assign_split(piece.dataset, piece.piece_id, seed,
                                        cfg.valid_fraction, cfg.test_fraction)
            rows.append(out)
    if not rows:
        raise SmdimError(f"{cfg.raw_dir}: none of the {len(pieces)} MIDI files could be tokenized; "
                         "check the download stage's output")
    rows.sort(key=lambda r: (r["dataset"], r["piece_id"]))
    return rows, skipped


def dataset_tokenizer(cfg: TokenizeConfig, rows: list[dict]) -> tuple[miditok.REMI, float]:
    """The tokenizer of the dataset and its BPE training seconds (0 without BPE).

    With `cfg.bpe_vocab`, BPE is trained on the train rows and every row's `tokens` and
    `n_tokens` are replaced by BPE ids in place (`n_base_tokens` keeps the REMI length).
    """
    tok = build_tokenizer(cfg)
    if cfg.bpe_vocab is None:
        return tok, 0.0
    train = [r["tokens"] for r in rows if r["split"] == "train"]
    log.info("learning BPE (%d ids) on %d train pieces", cfg.bpe_vocab, len(train))
    t0 = time.perf_counter()
    train_bpe(tok, train, cfg.bpe_vocab)
    seconds = time.perf_counter() - t0
    if len(tok) < cfg.bpe_vocab:  # the corpus ran out of pairs to merge
        log.warning("tokenize.bpe_vocab=%d: the train split only gave %d ids", cfg.bpe_vocab, len(tok))
    with tqdm(total=len(rows), desc="BPE encode", unit="piece") as bar:
        for a in range(0, len(rows), BPE_BATCH):
            batch = rows[a : a + BPE_BATCH]
            for r, ids in zip(batch, encode_bpe(tok, [r["tokens"] for r in batch]), strict=True):
                r["tokens"] = np.asarray(ids, dtype=np.int32)
                r["n_tokens"] = len(ids)
            bar.update(len(batch))
    return tok, seconds


def write_token_dataset(out: Path, cfg: TokenizeConfig, rows: list[dict], skipped: list[dict],
                        tokenizer: miditok.REMI | None = None) -> dict:
    """Write shards, tokenizer.json and manifest.json into `out`; return the manifest.

    `tokenizer` is the one the rows were encoded with (dataset_tokenizer); None = plain REMI.
    """
    tok = tokenizer if tokenizer is not None else build_tokenizer(cfg)
    shards = write_shards(rows, out, max_rows=cfg.shard_rows, max_mb=cfg.shard_mb,
                          zstd_level=cfg.zstd_level)
    tok.save(out / "tokenizer.json")
    lengths = np.array([r["n_tokens"] for r in rows], dtype=np.int64)
    per_dataset: dict[str, dict[str, int]] = {}
    for r in rows:
        counts = per_dataset.setdefault(r["dataset"], {s: 0 for s in (*SPLITS, "skipped")})
        counts[r["split"]] += 1
    for s in skipped:
        per_dataset.setdefault(s["dataset"], {k: 0 for k in (*SPLITS, "skipped")})["skipped"] += 1
    base_tokens = sum(r["n_base_tokens"] for r in rows)
    notes = sum(r["n_notes"] for r in rows)
    manifest = {
        "pieces": len(rows),
        "tokens": int(lengths.sum()),
        "vocab_size": len(tok),
        "bpe_vocab": cfg.bpe_vocab,  # null = plain REMI
        "base_vocab_size": len(tok.vocab),  # REMI tokens (BPE ids above them are merges)
        "base_tokens": base_tokens,  # tokens before BPE
        "notes": notes,
        "compression": round(base_tokens / max(int(lengths.sum()), 1), 4),  # base tokens per stored token
        "tokens_per_note": round(int(lengths.sum()) / max(notes, 1), 4),
        "splits": {s: sum(r["split"] == s for r in rows) for s in SPLITS},
        "datasets": per_dataset,
        "n_tokens_percentiles": _percentiles(lengths),
        "shards": shards,
        "skipped": skipped,
    }
    write_json(out / "manifest.json", manifest)
    return manifest


def _percentiles(lengths: np.ndarray) -> dict[str, float]:
    if not len(lengths):
        return {}
    values = np.percentile(lengths, PERCENTILES)
    out = {f"p{p}": round(float(v), 1) for p, v in zip(PERCENTILES, values, strict=True)}
    out["mean"] = round(float(lengths.mean()), 1)
    return out


def stage_metrics(manifest: dict, files: int, seconds: float, bpe_seconds: float = 0.0) -> dict[str, float | int]:
    """The DVC metrics of the tokenize stage: data statistics and throughput (`seconds` in all,
    `bpe_seconds` of them learning BPE)."""
    pct = manifest["n_tokens_percentiles"]
    return {
        "pieces": manifest["pieces"],
        "tokens": manifest["tokens"],
        "vocab_size": manifest["vocab_size"],
        "base_vocab_size": manifest["base_vocab_size"],
        "base_tokens": manifest["base_tokens"],
        "compression": manifest["compression"],
        "tokens_per_note": manifest["tokens_per_note"],
        "bpe_train_seconds": round(bpe_seconds, 2),
        "skipped": len(manifest["skipped"]),
        **{f"pieces_{s}": n for s, n in manifest["splits"].items()},
        "n_tokens_mean": pct["mean"],
        "n_tokens_p50": pct["p50"],
        "n_tokens_p95": pct["p95"],
        "seconds": round(seconds, 2),
        "files_per_s": round(files / seconds, 2),
        "tokens_per_s": round(manifest["tokens"] / seconds, 1),
    }
