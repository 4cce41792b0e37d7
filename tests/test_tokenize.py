"""Tokenization: REMI round trip on real MIDI, bad files reported, reproducible shards, splits."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from symusic import Score

from smdim.config import build
from smdim.data.config import DownloadConfig
from smdim.data.shards import SCHEMA, plan_shards, read_shards
from smdim.data.sources import fetch_dataset
from smdim.data.split import assign_split
from smdim.errors import SmdimError
from smdim.tokenization.config import TokenizeConfig
from smdim.tokenization.corpus import tokenize_corpus, write_token_dataset
from smdim.tokenization.decode import tokens_to_score, write_midi
from smdim.tokenization.encode import encode_file, merge_tracks
from smdim.tokenization.tokenizer import build_tokenizer, load_tokenizer
from smdim.tokenization.validity import token_error_rate

CFG = TokenizeConfig()
STEP = 1 / 8  # finest position step in beats for beat_res {"0_4": 8, "4_12": 4}


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(CFG)


def _notes(score: Score) -> np.ndarray:
    """(onset beats, duration beats, pitch) of the merged track, pitches in the tokenizer range."""
    tpq = score.ticks_per_quarter
    tracks = merge_tracks(score).tracks
    notes = tracks[0].notes if len(tracks) else []
    lo, hi = CFG.pitch_range
    return np.array([(n.time / tpq, n.duration / tpq, n.pitch) for n in notes if lo <= n.pitch < hi])


def _sample_files(shared: Path) -> list[Path]:
    return sorted((shared / "maestro-sample").glob("*.mid"))[:2] + sorted((shared / "pop909").glob("*.mid"))[:3]


@pytest.mark.parametrize("index", range(5), ids=["maestro_1", "maestro_10", "pop001", "pop002", "pop003"])
def test_round_trip_within_quantisation(tok, shared_data, index):
    path = _sample_files(shared_data)[index]
    ids = encode_file(tok, path)
    orig, dec = _notes(Score(str(path))), _notes(tokens_to_score(tok, ids))
    assert len(orig) > 100 and len(orig) == len(dec)
    for pitch in np.unique(orig[:, 2]):  # same pitches, note for note
        a, b = orig[orig[:, 2] == pitch], dec[dec[:, 2] == pitch]
        assert len(a) == len(b), f"pitch {pitch}"
        assert _unmatched(a[np.argsort(a[:, 0])], b[np.argsort(b[:, 0])]) == 0, f"pitch {pitch}"


def _unmatched(a: np.ndarray, b: np.ndarray) -> int:
    """Original notes `a` with no decoded note in `b` within the quantisation (greedy, 1:1).

    Onset within one step; duration within one step of its range (1/8 beat up to 4 beats,
    1/4 beyond), original durations clipped at the 12-beat maximum.
    """
    free = np.ones(len(b), dtype=bool)
    missing = 0
    for onset, dur, _ in a:
        tol = (STEP if dur <= 4 else 2 * STEP) + 1e-6
        ok = free & (np.abs(b[:, 0] - onset) <= STEP + 1e-6) & (np.abs(b[:, 1] - min(dur, 12)) <= tol)
        if not ok.any():
            missing += 1
            continue
        cand = np.flatnonzero(ok)
        best = cand[np.argmin(np.abs(b[cand, 0] - onset) + np.abs(b[cand, 1] - min(dur, 12)))]
        free[best] = False
    return missing


def test_without_velocities_notes_are_pitch_then_duration(tok, shared_data):
    """tokenize.use_velocities: false: no Velocity tokens, a quarter fewer tokens per note, and the
    same notes (onset, duration, pitch) after decoding."""
    plain = build_tokenizer(dataclasses.replace(CFG, use_velocities=False))
    path = sorted((shared_data / "pop909").glob("*.mid"))[0]
    ids, with_velocity = encode_file(plain, path), encode_file(tok, path)
    names = [plain[i] for i in ids]
    assert not any(n.startswith("Velocity") for n in names)
    assert all(b.startswith("Duration") for a, b in zip(names, names[1:], strict=False) if a.startswith("Pitch"))
    n_notes = sum(n.startswith("Pitch") for n in names)
    assert len(with_velocity) - len(ids) == n_notes > 100
    np.testing.assert_array_equal(_notes(tokens_to_score(plain, ids)), _notes(tokens_to_score(tok, with_velocity)))


def test_special_tokens_and_reload(tok, tmp_path):
    assert tok["PAD_None"] == 0 and "MASK_None" in tok.vocab
    tok.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert len(again) == len(tok) and again.vocab == tok.vocab
    with pytest.raises(SmdimError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")


def test_error_rate_and_robust_decoding(tok, shared_data, tmp_path):
    ids = encode_file(tok, sorted((shared_data / "pop909").glob("*.mid"))[0])
    assert token_error_rate(tok, ids) == 0.0
    masked = ids[:100] + [tok["MASK_None"]] * 100
    assert token_error_rate(tok, masked) == pytest.approx(0.5)
    assert token_error_rate(tok, [tok["PAD_None"]] * 5 + ids[:50]) == 0.0
    rng = np.random.default_rng(0)
    garbage = rng.integers(-5, len(tok) + 5, 2000).tolist()
    assert token_error_rate(tok, garbage) > 0.3
    tokens_to_score(tok, garbage)  # never raises on ill-formed input
    assert tokens_to_score(tok, [tok["MASK_None"]] * 10).note_num() == 0
    write_midi(tok, ids, tmp_path / "out.mid")
    assert Score(str(tmp_path / "out.mid")).note_num() == tokens_to_score(tok, ids).note_num()


def _raw(tmp_path: Path, shared: Path) -> Path:
    cfg = build(DownloadConfig, {"pop909": {"mirror": str(shared / "pop909"), "limit": 4},
                                 "maestro": {"mirror": str(shared / "maestro-sample"), "limit": 1},
                                 "local": {"path": str(shared / "bad-midi")}}, "download")
    raw = tmp_path / "raw"
    for name in ("pop909", "maestro", "local"):
        fetch_dataset(name, cfg, raw / name, workers=1)
    return raw


def test_corpus_shards_reproducible_and_bad_files_reported(tmp_path, shared_data):
    raw = _raw(tmp_path, shared_data)
    cfg = build(TokenizeConfig, {"raw_dir": str(raw), "shard_rows": 2}, "tokenize")
    outs = []
    for run, workers in enumerate((2, 1)):  # also: the worker count does not change the bytes
        rows, skipped = tokenize_corpus(cfg, seed=7, workers=workers)
        out = tmp_path / f"tokens{run}"
        out.mkdir()
        manifest = write_token_dataset(out, cfg, rows, skipped)
        outs.append(out)
    files = sorted(p.name for p in outs[0].iterdir())
    assert files == ["manifest.json", "shard-00000.parquet", "shard-00001.parquet",
                     "shard-00002.parquet", "tokenizer.json"]
    for name in files:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    assert {(s["path"], s["reason"].split(" ")[0]) for s in manifest["skipped"]} == {
        ("corrupted_control168.mid", "unreadable"), ("empty.mid", "0")}
    assert manifest["pieces"] == 5 and manifest["datasets"]["local"]["skipped"] == 2
    assert manifest["vocab_size"] == len(build_tokenizer(cfg))
    assert pq.read_schema(outs[0] / "shard-00000.parquet").remove_metadata() == SCHEMA
    assert pq.read_metadata(outs[0] / "shard-00000.parquet").num_rows == 2

    df = read_shards(outs[0])
    assert list(df["dataset"]) == ["maestro", "pop909", "pop909", "pop909", "pop909"]
    assert list(df["piece_id"]) == ["maestro_1", "001", "002", "003", "004"]
    assert all(len(t) == n for t, n in zip(df["tokens"], df["n_tokens"], strict=True))
    assert (df["n_bars"] > 0).all() and df["tokens"][0].dtype == np.int32
    for split in ("train", "valid", "test"):
        part = read_shards(outs[0], split=split, columns=["piece_id"])
        assert list(part.columns) == ["piece_id"] and len(part) == (df["split"] == split).sum()
    first = tmp_path / "raw" / "pop909" / "001.mid"
    assert list(df["tokens"][1]) == encode_file(build_tokenizer(cfg), first)


def test_split_is_deterministic_and_proportional():
    ids = [f"{i:05d}" for i in range(20000)]
    a = [assign_split("pop909", p, 1234, 0.1, 0.05) for p in ids]
    assert a == [assign_split("pop909", p, 1234, 0.1, 0.05) for p in reversed(ids)][::-1]
    counts = Counter(a)
    assert abs(counts["valid"] / len(ids) - 0.1) < 0.01 and abs(counts["test"] / len(ids) - 0.05) < 0.01
    b = [assign_split("pop909", p, 99, 0.1, 0.05) for p in ids]
    assert a != b  # the seed matters
    # Growing the valid fraction only moves train pieces into valid: test stays put.
    c = [assign_split("pop909", p, 1234, 0.2, 0.05) for p in ids]
    assert all((x == "test") == (y == "test") for x, y in zip(a, c, strict=True))


def test_shard_plan_bounds():
    assert plan_shards([10] * 7, max_rows=3, max_mb=1) == [(0, 3), (3, 6), (6, 7)]
    assert plan_shards([250_000] * 3, max_rows=100, max_mb=1.5) == [(0, 1), (1, 2), (2, 3)]
    assert plan_shards([], max_rows=3, max_mb=1) == []


def test_config_rejects_missing_mask():
    with pytest.raises(SmdimError, match="MASK"):
        build(TokenizeConfig, {"special_tokens": ["PAD", "BOS"]}, "tokenize")
    assert dataclasses.replace(CFG).special_tokens[0] == "PAD"
