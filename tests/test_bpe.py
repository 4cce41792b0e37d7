"""BPE over REMI on real MIDI: round trip, ids kept, bars and notes seen through BPE ids, the
tokenize stage with `bpe_vocab`, crops, validity and sampling constraints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from symusic import Score
from test_sampling import Toy, gen
from test_tokenize import _raw

from smdim.config import build
from smdim.data.shards import read_shards
from smdim.errors import ConfigError, SmdimError
from smdim.sampling.composer import count_bars, keep_bars
from smdim.sampling.constraints import make_constraints
from smdim.sampling.samplers import sample
from smdim.tokenization.bpe import (
    bar_counts,
    bar_start_ids,
    base_tokens,
    encode_bpe,
    expand_ids,
    is_bpe,
    note_counts,
    train_bpe,
)
from smdim.tokenization.config import TokenizeConfig
from smdim.tokenization.corpus import dataset_tokenizer, tokenize_corpus, write_token_dataset
from smdim.tokenization.decode import tokens_to_score
from smdim.tokenization.encode import encode_file
from smdim.tokenization.tokenizer import build_tokenizer, load_tokenizer, tokenizer_from_text
from smdim.tokenization.validity import token_error_rate
from smdim.training.crops import CropSampler

CFG = TokenizeConfig()
VOCAB = 600


def _files(shared: Path) -> list[Path]:
    return sorted((shared / "pop909").glob("*.mid"))[:4] + sorted((shared / "maestro-sample").glob("*.mid"))[:1]


@pytest.fixture(scope="module")
def plain():
    return build_tokenizer(CFG)


@pytest.fixture(scope="module")
def base_pieces(plain, shared_data) -> list[list[int]]:
    """Plain REMI ids of four POP909 songs and one MAESTRO piece."""
    return [encode_file(plain, f) for f in _files(shared_data)]


@pytest.fixture(scope="module")
def bpe(base_pieces):
    """A REMI tokenizer with BPE learned on the first three pieces (the other two are unseen)."""
    tok = build_tokenizer(CFG)
    train_bpe(tok, base_pieces[:3], VOCAB)
    return tok


def _notes(score: Score) -> list[tuple[int, int, int, int]]:
    return sorted((n.time, n.duration, n.pitch, n.velocity) for t in score.tracks for n in t.notes)


@pytest.mark.parametrize("index", range(5), ids=["pop001", "pop002", "pop003", "pop004_unseen", "maestro_unseen"])
def test_bpe_round_trip_gives_the_same_notes(plain, bpe, base_pieces, shared_data, index, tmp_path):
    base = base_pieces[index]
    [ids] = encode_bpe(bpe, [base])
    assert len(ids) < len(base) and max(ids) >= len(plain), "BPE compresses with learned ids"
    assert expand_ids(bpe, ids) == base
    # Encoding from base ids (the tokenize stage: no second MIDI parse) = miditok's own encoding.
    assert encode_file(bpe, _files(shared_data)[index]) == ids
    notes = _notes(tokens_to_score(bpe, ids))
    assert len(notes) > 100 and notes == _notes(tokens_to_score(plain, base))
    # The tokenizer file carries the BPE model: reloaded, it encodes and decodes the same.
    bpe.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert is_bpe(again) and len(again) == len(bpe) == VOCAB
    assert encode_bpe(again, [base]) == [ids] and _notes(tokens_to_score(again, ids)) == notes
    text = tokenizer_from_text((tmp_path / "tokenizer.json").read_text())
    assert encode_bpe(text, [base]) == [ids]


def test_bpe_keeps_base_and_special_ids(plain, bpe, base_pieces):
    for name in ("PAD_None", "BOS_None", "EOS_None", "MASK_None", "Bar_None", "Pitch_60"):
        assert bpe[name] == plain[name]
    assert bpe["PAD_None"] == 0
    assert len(bpe) == VOCAB == max(bpe.vocab_model.values()) + 1  # the embedding size
    table = base_tokens(bpe)
    assert table[: len(plain)] == [(plain[i],) for i in range(len(plain))]
    assert all(len(names) >= 2 for names in table[len(plain):]), "learned ids are merges"
    # A bar line is never inside a BPE token: a Bar only ever comes first.
    assert not any(n.startswith("Bar_") for names in table for n in names[1:])
    starts = bar_start_ids(bpe)
    assert bar_start_ids(plain) == {plain["Bar_None"]} and len(starts) > 1
    assert set(np.flatnonzero(bar_counts(bpe))) == starts


def test_bpe_training_is_deterministic(bpe, base_pieces):
    again = build_tokenizer(CFG)
    train_bpe(again, base_pieces[:3], VOCAB)
    assert again.vocab_model == bpe.vocab_model
    assert encode_bpe(again, base_pieces[3:]) == encode_bpe(bpe, base_pieces[3:])


def test_note_counts(plain, bpe, base_pieces):
    counts = note_counts(plain)
    assert counts.shape == (len(plain),) and set(np.unique(counts)) == {0, 1}
    assert counts[plain["Pitch_60"]] == 1 and counts[plain["Bar_None"]] == counts[plain["PAD_None"]] == 0
    per_id = note_counts(bpe)
    assert per_id.shape == (VOCAB,) and per_id.max() >= 2  # some merges hold whole chords
    for base, ids in zip(base_pieces, encode_bpe(bpe, base_pieces), strict=True):
        n_pitch = sum(plain[i].startswith("Pitch_") for i in base)
        assert counts[base].sum() == per_id[ids].sum() == n_pitch


def test_bars_counted_and_kept_through_bpe(plain, bpe, base_pieces):
    bar = {plain["Bar_None"]}
    for base, ids in zip(base_pieces, encode_bpe(bpe, base_pieces), strict=True):
        assert count_bars(ids, bar_start_ids(bpe)) == count_bars(base, bar) > 10
        for bars in (1, 4, 9):
            kept = keep_bars(ids, bar_start_ids(bpe), bars)
            assert expand_ids(bpe, kept) == keep_bars(base, bar, bars)


def test_crops_start_at_bar_starting_ids(bpe, base_pieces):
    pieces = [np.asarray(p) for p in encode_bpe(bpe, base_pieces)]
    starts = bar_start_ids(bpe)
    crops = CropSampler(pieces, seq_len=128, bar_id=starts)
    assert all(len(b) > 1 for b in crops.bar_starts)
    for step in range(5):
        for row in crops.batch(3, step, 8).tokens:
            assert int(row[0]) in starts
    # Only the Bar id: the merged bar starts are missed (this is why crops take the set).
    only_bar = CropSampler(pieces, seq_len=128, bar_id=bpe["Bar_None"])
    assert sum(map(len, only_bar.bar_starts)) < sum(map(len, crops.bar_starts))


def test_token_error_rate_through_bpe(bpe, base_pieces):
    [ids] = encode_bpe(bpe, base_pieces[3:4])
    assert token_error_rate(bpe, ids) == 0.0
    head = ids[:100]
    n_base = len(expand_ids(bpe, head))
    assert token_error_rate(bpe, head + [bpe["MASK_None"]] * 100) == pytest.approx(100 / (100 + n_base))
    garbage = np.random.default_rng(0).integers(0, len(bpe), 2000).tolist()
    assert token_error_rate(bpe, garbage) > 0.3


def test_constraints_ban_every_bpe_token_holding_a_banned_pitch(bpe):
    c = make_constraints(bpe, pitch_range=[60, 72], grammar=False)
    assert c.banned.shape == (VOCAB,)
    for i, names in enumerate(base_tokens(bpe)):
        pitches = [int(n.split("_")[1]) for n in names if n.startswith("Pitch_")]
        special = i in bpe.special_tokens_ids
        assert bool(c.banned[i]) == (special or any(not 60 <= p <= 72 for p in pitches)), names
        assert bool(c.is_pitch[i]) == bool(pitches)
    scale = make_constraints(bpe, scale="C:major", grammar=False)
    assert all(p % 12 in {0, 2, 4, 5, 7, 9, 11}
               for i, names in enumerate(base_tokens(bpe)) if not scale.banned[i]
               for p in (int(n.split("_")[1]) for n in names if n.startswith("Pitch_")))
    no_bars = make_constraints(bpe, ban_prefixes=("Bar_",), grammar=False)
    assert all(no_bars.banned[i] for i in bar_start_ids(bpe))
    with pytest.raises(SmdimError, match="max_polyphony=4 needs a plain REMI tokenizer"):
        make_constraints(bpe, max_polyphony=4)


def _base_types_ok(bpe, row) -> bool:
    """Every adjacent pair of base tokens behind `row` follows REMI (as test_sampling checks)."""
    follows = {"Bar": {"Bar", "Position"}, "Position": {"Pitch"}, "Pitch": {"Velocity"},
               "Velocity": {"Duration"}, "Duration": {"Pitch", "Position", "Bar"}}
    table = base_tokens(bpe)
    kinds = [n.split("_")[0] for i in row for n in table[int(i)]]
    return kinds[0] == "Bar" and all(b in follows[a] for a, b in zip(kinds, kinds[1:], strict=False))


@pytest.mark.parametrize("method", ["ancestral", "confidence"])
def test_grammar_works_through_bpe_tokens(bpe, base_pieces, method):
    grammar = make_constraints(bpe).grammar
    # Real pieces: every token is allowed where it stands, given all the others.
    ids = torch.tensor(encode_bpe(bpe, base_pieces[3:4])[0][:300])[None]
    for i in range(0, 300, 7):
        known = torch.ones_like(ids, dtype=torch.bool)
        known[0, i] = False
        assert grammar.allowed(ids, known)[0, i, ids[0, i]], i
    # Random logits: free sampling breaks the grammar, the BPE grammar masks keep it. PitchDrum
    # (a Pitch to the grammar, absent from merged-track data) is not drawn, as in test_sampling.
    drum = torch.tensor([-1e4 if any(n.startswith("PitchDrum") for n in names) else 0.0 for names in base_tokens(bpe)])
    model, mask_id = Toy(vocab=len(bpe), bias=drum, seed=3), bpe["MASK_None"]
    kw = {"mask_id": mask_id, "steps": 12, "method": method, "batch_size": 3, "generator": gen(2)}
    free = sample(model, 96, constraints=make_constraints(bpe, grammar=False), **kw)
    assert not any(_base_types_ok(bpe, row) for row in free)
    kw["generator"] = gen(2)
    out = sample(model, 96, constraints=make_constraints(bpe), **kw)
    assert all(_base_types_ok(bpe, row) for row in out)


def test_tokenize_stage_with_bpe(tmp_path, shared_data, plain):
    raw = _raw(tmp_path, shared_data)
    cfg = build(TokenizeConfig, {"raw_dir": str(raw), "bpe_vocab": 500, "valid_fraction": 0.3,
                                 "test_fraction": 0.3}, "tokenize")
    rows, skipped = tokenize_corpus(cfg, seed=7, workers=1)
    base = {r["piece_id"]: list(r["tokens"]) for r in rows}
    tok, seconds = dataset_tokenizer(cfg, rows)
    out = tmp_path / "tokens"
    out.mkdir()
    manifest = write_token_dataset(out, cfg, rows, skipped, tok)
    assert seconds > 0 and manifest["bpe_vocab"] == 500 and manifest["vocab_size"] == len(tok) == 500
    assert manifest["base_vocab_size"] == len(plain) and manifest["compression"] > 1
    assert manifest["base_tokens"] == sum(map(len, base.values())) > manifest["tokens"]
    assert manifest["tokens_per_note"] == pytest.approx(manifest["tokens"] / manifest["notes"], abs=1e-4)
    saved = load_tokenizer(out / "tokenizer.json")
    assert is_bpe(saved) and saved["PAD_None"] == 0 and saved["MASK_None"] == plain["MASK_None"]
    df = read_shards(out)
    assert max(int(t.max()) for t in df["tokens"]) >= len(plain), "shards hold BPE ids"
    for pid, ids, n in zip(df["piece_id"], df["tokens"], df["n_tokens"], strict=True):
        assert len(ids) == n and expand_ids(saved, ids) == base[pid]
        assert token_error_rate(saved, ids.tolist()) == 0.0
    # Learned on the train split only: the same merges from the train pieces alone.
    split = dict(zip(df["piece_id"], df["split"], strict=True))
    assert "train" in split.values() and set(split.values()) != {"train"}
    alone = build_tokenizer(cfg)
    train_bpe(alone, [base[p] for p in sorted(base) if split[p] == "train"], 500)
    assert alone.vocab_model == saved.vocab_model
    assert json.loads((out / "manifest.json").read_text())["compression"] == manifest["compression"]


def test_bpe_vocab_must_exceed_the_base_vocabulary(plain):
    with pytest.raises(ConfigError, match=rf"tokenize: bpe_vocab=100 must be larger than the {len(plain)} base"):
        build(TokenizeConfig, {"bpe_vocab": 100}, "tokenize")
    with pytest.raises(ConfigError, match="bpe_vocab"):
        build(TokenizeConfig, {"bpe_vocab": len(plain)}, "tokenize")
    assert build(TokenizeConfig, {"bpe_vocab": len(plain) + 1}, "tokenize").bpe_vocab == len(plain) + 1
