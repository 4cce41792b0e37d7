"""Keys: the key finder, transposition to a tonic, and the `scale: auto` key lock in every sampler."""

from __future__ import annotations

import miditok
import numpy as np
import pytest
import torch

from smdim.config import build
from smdim.errors import ConfigError, SmdimError
from smdim.model.collection import WithCollection
from smdim.model.config import ModelConfig
from smdim.model.denoiser import Denoiser
from smdim.sampling.config import SampleConfig
from smdim.sampling.constraints import make_constraints
from smdim.sampling.samplers import METHODS, sample
from smdim.tokenization.bpe import base_tokens
from smdim.tokenization.keys import (
    Transposer,
    parse_tonic,
    pitch_class_counts,
    tonic_of,
    tonic_shares,
)

C_MAJOR = [60, 62, 64, 65, 67, 69, 71, 72]


@pytest.fixture(scope="module")
def remi():
    return miditok.REMI(miditok.TokenizerConfig(special_tokens=["PAD", "BOS", "EOS", "MASK"]))


def hist(pitches) -> np.ndarray:
    return np.bincount(np.asarray(pitches) % 12, minlength=12).astype(float)


def notes(tok, pitches) -> list[int]:
    """Quarter notes in 4/4 as REMI ids."""
    ids = []
    for k, p in enumerate(pitches):
        if k % 4 == 0:
            ids.append(tok["Bar_None"])
        ids += [tok[f"Position_{k % 4 * 8}"], tok[f"Pitch_{p}"], tok["Velocity_63"], tok["Duration_1.0.8"]]
    return ids


def pitches_of(tok, ids) -> list[int]:
    return [int(tok[int(i)].split("_")[1]) for i in ids if tok[int(i)].startswith("Pitch_")]


def test_key_finder_names_the_major_signature():
    assert tonic_of(hist(C_MAJOR)) == 0
    assert tonic_of(hist([p + 7 for p in C_MAJOR])) == 7  # G major
    assert tonic_of(hist([69, 71, 72, 74, 76, 77, 80, 81, 80])) == 0  # A harmonic minor: C's signature
    assert tonic_of(hist([62, 62, 62, 64, 66, 69, 71, 62])) == 2  # D pentatonic: D is the most used of its fits
    assert tonic_of(np.zeros(12)) is None


def test_tonic_shares_count_pieces_not_notes(remi):
    counts = pitch_class_counts(base_tokens(remi))
    pieces = [notes(remi, C_MAJOR * 4), notes(remi, [p + 2 for p in C_MAJOR]), notes(remi, [p + 2 for p in C_MAJOR])]
    shares = tonic_shares([np.array(p) for p in pieces], counts)
    assert shares[0] == pytest.approx(1 / 3) and shares[2] == pytest.approx(2 / 3) and sum(shares) == pytest.approx(1)
    assert tonic_shares([np.array([remi["Bar_None"]])], counts) == pytest.approx([1 / 12] * 12)


def test_transposition_keeps_intervals_and_every_other_token(remi):
    counts = pitch_class_counts(base_tokens(remi))
    ids = notes(remi, [60, 64, 67, 72, 71, 65, 62, 60])
    t = Transposer(dict(remi.vocab))
    for tonic, shift in [(10, -2), (5, 5), (6, 6), (0, 0), (1, 1)]:
        moved, used = t.shift_to(ids, counts, tonic)
        assert used == shift
        assert tonic_of(counts[moved].sum(0)) == tonic
        assert [p + shift for p in pitches_of(remi, ids)] == pitches_of(remi, moved)
        assert [a for a in ids if a not in t.pitch_of] == [b for b in moved if b not in t.pitch_of]
    high = notes(remi, [p + 36 for p in C_MAJOR])  # up to Pitch_108, the vocabulary's top
    hi_pitch = max(t.id_of)
    moved, used = t.shift_to(high, counts, 5)  # F: +5 would leave the vocabulary, so -7
    assert used == -7 and max(pitches_of(remi, moved)) <= hi_pitch
    bare = [remi["Bar_None"], remi["Position_0"]]
    assert t.shift_to(bare, counts, 3) == (bare, 0)


def test_key_names_and_config_errors():
    assert parse_tonic("Bb") == parse_tonic("A#") == 10 and parse_tonic("c") == 0
    with pytest.raises(SmdimError, match="key 'H': expected a tonic"):
        parse_tonic("H")
    with pytest.raises(ConfigError, match="sample: key 'H#x'"):
        build(SampleConfig, {"key": "H#x"}, "sample")
    with pytest.raises(ConfigError, match="sample: scale_notes must be >= 1"):
        build(SampleConfig, {"scale": "auto", "scale_notes": 0}, "sample")
    assert build(SampleConfig, {"scale": "auto", "key": None}, "sample").scale == "auto"


class Chromatic(torch.nn.Module):
    """Denoiser over a REMI vocabulary that prefers well-formed notes and every pitch alike."""

    def __init__(self, tok, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("table", 0.5 * torch.randn(256, len(tok), generator=g))
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t=None, pad_mask=None):
        return self.table[: x.shape[1]].expand(x.shape[0], -1, -1) + self.anchor


@pytest.mark.parametrize("method", METHODS)
def test_scale_auto_keeps_every_drawn_pitch_in_the_key_of_the_first_ones(remi, method):
    model, mask_id = Chromatic(remi), remi["MASK_None"]
    lo = [p - 12 for p in C_MAJOR]  # 16 known pitches of C major: the key is C major from the first step
    fixed = torch.full((120,), -1)
    prompt = notes(remi, lo + C_MAJOR)
    fixed[: len(prompt)] = torch.tensor(prompt)
    pitch_range = [48, 84]
    free = sample(model, 120, mask_id=mask_id, steps=12, method=method, batch_size=2, generator=torch.Generator().manual_seed(1),
                  fixed=fixed, constraints=make_constraints(remi, pitch_range=pitch_range))
    drawn = pitches_of(remi, free[:, len(prompt):].flatten())
    assert {p % 12 for p in drawn} - {0, 2, 4, 5, 7, 9, 11}, "the toy draws out-of-key pitches on its own"
    locked = sample(model, 120, mask_id=mask_id, steps=12, method=method, batch_size=2, generator=torch.Generator().manual_seed(1),
                    fixed=fixed, constraints=make_constraints(remi, pitch_range=pitch_range, scale="auto"),
                    correct_rounds=2)
    drawn = pitches_of(remi, locked[:, len(prompt):].flatten())
    assert drawn and {p % 12 for p in drawn} <= {0, 2, 4, 5, 7, 9, 11}
    assert torch.equal(locked[:, : len(prompt)], fixed[: len(prompt)].expand(2, -1))


def test_scale_auto_waits_for_its_notes_and_reads_a_window_s_whole_piece(remi):
    c = make_constraints(remi, scale="auto", scale_notes=8, grammar=False)
    is_pitch = c.is_pitch
    gs = [remi[f"Pitch_{p}"] for p in range(40, 90) if p % 12 == 8]  # G#/Ab: outside C major
    piece = torch.tensor([notes(remi, C_MAJOR)])  # (1, 33)
    logits = torch.zeros(1, 1, len(remi))
    few = piece[:, :17]  # 4 pitches: no key yet
    out = c.apply(logits, few[:, -1:], torch.ones(1, 1, dtype=torch.bool), key_context=(few, few != -1))
    assert torch.isfinite(out[0, 0, gs]).all()
    # A window holding no pitch of its own: the key comes from the piece around it.
    window = piece[:, -1:]
    out = c.apply(logits, window, torch.ones_like(window, dtype=torch.bool), key_context=(piece, piece >= 0))
    assert torch.isinf(out[0, 0, gs]).all()
    assert torch.isfinite(out[0, 0, [remi[f"Pitch_{p}"] for p in C_MAJOR]]).all()
    assert torch.isfinite(out[0, 0, ~is_pitch & ~c.banned]).all()  # only pitches are touched


def test_row_subsets_reach_a_collection_conditioned_denoiser():
    """`cached`, ReMDM and the corrector call the network on the rows with work left; a collection
    per piece must follow them (this crashed with `sample.method: cached`)."""
    cfg = build(ModelConfig, {"vocab_size": 16, "d_model": 16, "n_blocks": 1, "n_heads": 2, "block": "transformer",
                              "stride": 1, "collection_cond": True, "n_collections": 3, "refine_layers": 0}, "model")
    torch.manual_seed(0)
    net = Denoiser(cfg)
    wrapped = WithCollection(net, torch.tensor([1, 2, 3, 1]))
    assert wrapped.select(torch.tensor([0, 2])).collection.tolist() == [1, 3]
    assert WithCollection(net, 2).select(torch.tensor([1])).collection.item() == 2
    for method, kw in [("cached", {}), ("remdm", {}), ("confidence", {"correct_rounds": 3, "correct_share": 0.05})]:
        out = sample(wrapped, 6, mask_id=15, steps=40, method=method, batch_size=4,
                     generator=torch.Generator().manual_seed(0), **kw)
        assert out.shape == (4, 6) and not (out == 15).any()
