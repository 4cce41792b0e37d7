"""Samplers (ancestral, cached, confidence), conditioning and constraints."""

from __future__ import annotations

import math

import miditok
import pytest
import torch

from smdim.config import build
from smdim.diffusion.config import DiffusionConfig
from smdim.diffusion.schedule import make_schedule
from smdim.errors import ConfigError, SmdimError
from smdim.model.config import ModelConfig
from smdim.model.denoiser import Denoiser
from smdim.sampling.conditioning import bar_infill_fixed, bar_span, prefix_fixed, span_fixed
from smdim.sampling.config import SampleConfig
from smdim.sampling.constraints import make_constraints
from smdim.sampling.samplers import METHODS, sample, sample_with_stats

V, MASK = 12, 11


class Toy(torch.nn.Module):
    """Deterministic denoiser: a fixed random logit table per position, plus a bonus for repeating
    the left neighbour (so predictions change as tokens appear) and an optional per-token bias."""

    def __init__(self, vocab: int = V, max_len: int = 512, bias=None, uses_time: bool = False, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("table", torch.randn(max_len, vocab, generator=g))
        self.register_buffer("bias", torch.zeros(vocab) if bias is None else bias)
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.uses_time = uses_time
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, t=None, pad_mask=None):
        self.calls.append((x.clone(), t.clone()))
        B, L = x.shape
        logits = self.table[:L].expand(B, L, -1) + self.bias + self.anchor
        left = torch.nn.functional.pad(x, (1, 0), value=0)[:, :L]  # (B, L)
        logits = logits + 1.5 * torch.nn.functional.one_hot(left, logits.shape[-1])
        if self.uses_time:
            logits = logits + 3.0 * t[:, None, None] * torch.linspace(-1, 1, logits.shape[-1])
        return logits


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("method", METHODS)
def test_no_mask_left_and_reproducible(method):
    out = [sample(Toy(), 40, mask_id=MASK, steps=10, method=method, batch_size=3, generator=gen(s)) for s in (1, 1, 2)]
    assert out[0].shape == (3, 40) and out[0].dtype == torch.long
    assert not (out[0] == MASK).any()
    assert torch.equal(out[0], out[1])
    assert not torch.equal(out[0], out[2])


@pytest.mark.parametrize("method", METHODS)
def test_fixed_tokens_are_kept_for_prefix_and_infill(method):
    g = gen(5)
    song = torch.randint(0, MASK, (50,), generator=g).tolist()
    for fixed in (prefix_fixed(song[:20], 50, batch_size=2), span_fixed(song, 10, 30, batch_size=2)):
        out = sample(Toy(), 50, mask_id=MASK, steps=8, method=method, batch_size=2, generator=g, fixed=fixed)
        keep = fixed >= 0
        assert torch.equal(out[keep], fixed[keep]) and not (out == MASK).any()
        assert not torch.equal(out[~keep], torch.tensor(song).expand(2, -1)[~keep])  # free part sampled


@pytest.mark.parametrize("uses_time", [False, True], ids=["time-free", "time-dependent"])
def test_cached_equals_ancestral_with_fewer_calls(uses_time):
    runs = {}
    for method in ("ancestral", "cached"):
        model = Toy(uses_time=uses_time)
        x, stats = sample_with_stats(model, 64, mask_id=MASK, steps=200, method=method, batch_size=3, generator=gen(7))
        runs[method] = (x, stats, len(model.calls))
    (xa, sa, ca), (xc, sc, cc) = runs["ancestral"], runs["cached"]
    assert torch.equal(xa, xc)
    assert sa["network_calls"] == ca == 200
    # Each of the 3 x 64 slots unmasks at a uniform step of 200; a call is needed only at steps
    # where some slot unmasks: about 200 (1 - (1 - 1/200)^192) = 123 calls.
    assert sc["network_calls"] == cc
    assert 100 < cc < 145


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ancestral_unmasks_at_the_schedule_rate(schedule):
    s = make_schedule(DiffusionConfig(schedule=schedule))
    model = Toy(max_len=4000)
    sample(model, 4000, mask_id=MASK, steps=4, generator=gen(0), schedule=s)
    # Call at step k sees the state at time k/4: a fraction m(k/4) still masked.
    for (x, t), k in zip(model.calls, (4, 3, 2, 1), strict=True):
        assert float(t[0]) == k / 4
        frac = (x == MASK).float().mean().item()
        assert frac == pytest.approx(float(s.mask_prob(torch.tensor(k / 4))), abs=0.025)


def test_confidence_follows_cosine_schedule_and_picks_most_confident():
    model = Toy()
    sample(model, 100, mask_id=MASK, steps=4, method="confidence", temperature=0.0, generator=gen(0))
    masked = [int((x == MASK).sum()) for x, _ in model.calls]
    assert masked == [100] + [math.floor(100 * math.cos(math.pi / 2 * k / 4)) for k in (1, 2, 3)]
    # Greedy: the 8 slots unmasked first are the 8 with the highest max-probability.
    first = model.table[:100].clone()
    first[0, 0] += 1.5  # left neighbour of slot 0 is the pad value 0
    best = set(torch.softmax(first[:, :MASK], -1).max(-1).values.topk(100 - masked[1]).indices.tolist())
    assert set((model.calls[1][0][0] != MASK).nonzero().squeeze(1).tolist()) == best


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(SmdimError, match="unknown"):
        sample(Toy(), 8, mask_id=MASK, steps=2, method="beam")
    with pytest.raises(SmdimError, match="MASK"):
        sample(Toy(), 3, mask_id=MASK, steps=2, fixed=torch.tensor([1, MASK, -1]))
    with pytest.raises(SmdimError, match="shape"):
        sample(Toy(), 4, mask_id=MASK, steps=2, fixed=torch.tensor([1, -1]))


# --- constraints on a real REMI vocabulary ---

@pytest.fixture(scope="module")
def remi():
    return miditok.REMI(miditok.TokenizerConfig(special_tokens=["PAD", "BOS", "EOS", "MASK"]))


def remi_toy(tok, prefer, seed=0):
    """Toy denoiser over the REMI vocabulary with +bonus on the tokens `prefer` selects."""
    bias = torch.zeros(len(tok))
    for name, i in tok.vocab.items():
        bias[i] = prefer(name)
    return Toy(vocab=len(tok), bias=bias, seed=seed)


def pitches(tok, ids):
    names = [tok[int(i)] for i in ids]
    return [int(n.split("_")[1]) for n in names if n.startswith("Pitch_")]


def max_onset_polyphony(tok, ids) -> int:
    """Most Pitch tokens between two Position/Bar tokens (independent of the implementation)."""
    best = count = 0
    for i in ids:
        name = tok[int(i)]
        if name.startswith(("Position_", "Bar_")):
            count = 0
        elif name.startswith("Pitch_"):
            count += 1
            best = max(best, count)
    return best


@pytest.mark.parametrize("method", METHODS)
def test_pitch_range_constraint(remi, method):
    outlier = lambda n: 6.0 if n.startswith("Pitch_") and not 48 <= int(n.split("_")[1]) <= 84 else 0.0  # noqa: E731
    model, mask_id = remi_toy(remi, outlier), remi["MASK_None"]
    free = sample(model, 120, mask_id=mask_id, steps=12, method=method, batch_size=2, generator=gen(0))
    assert any(not 48 <= p <= 84 for p in pitches(remi, free.flatten()))  # the toy really wants outliers
    c = make_constraints(remi, pitch_range=[48, 84])
    out = sample(model, 120, mask_id=mask_id, steps=12, method=method, batch_size=2, generator=gen(0), constraints=c)
    ps = pitches(remi, out.flatten())
    assert ps and all(48 <= p <= 84 for p in ps)
    assert not set(out.flatten().tolist()) & set(remi.special_tokens_ids)


@pytest.mark.parametrize("method", METHODS)
def test_polyphony_cap(remi, method):
    chordy = lambda n: 4.0 if n.startswith("Pitch_") else (2.0 if n.startswith(("Position_", "Bar_")) else 0.0)  # noqa: E731
    model, mask_id = remi_toy(remi, chordy), remi["MASK_None"]
    free = sample(model, 200, mask_id=mask_id, steps=10, method=method, batch_size=2, generator=gen(1))
    assert max(max_onset_polyphony(remi, row) for row in free) > 3
    c = make_constraints(remi, max_polyphony=3)
    out = sample(model, 200, mask_id=mask_id, steps=10, method=method, batch_size=2, generator=gen(1), constraints=c)
    assert all(max_onset_polyphony(remi, row) <= 3 for row in out)
    assert len(pitches(remi, out.flatten())) > 20  # the cap limits chords, it does not ban pitches


def test_excess_pitches_ranks_new_pitches_within_their_onset(remi):
    c = make_constraints(remi, max_polyphony=2)
    names = ["Bar_None", "Position_0", "Pitch_60", "MASK_None", "MASK_None", "Position_8", "MASK_None", "MASK_None"]
    x = torch.tensor([[remi[n] for n in names]])
    known = x != remi["MASK_None"]
    blocked = c.pitch_blocked(x, known)
    assert blocked.tolist() == [[False] * 8]  # one pitch at Position_0: room for one more
    x2 = x.clone()
    x2[0, [3, 4, 6, 7]] = torch.tensor([remi["Pitch_62"], remi["Pitch_64"], remi["Pitch_50"], remi["Pitch_52"]])
    new = ~known
    assert c.excess_pitches(x2, known, new).nonzero()[:, 1].tolist() == [4]  # 3rd pitch of Position_0
    with pytest.raises(SmdimError, match="pitch_range"):
        make_constraints(remi, pitch_range=[0, 5])


# --- conditioning helpers ---

def test_bar_span_and_infill_keep_bar_tokens():
    BAR = 9
    tokens = [BAR, 1, 2, BAR, 3, BAR, 4, 5, 6, BAR, 7]
    assert bar_span(tokens, {BAR}, 2, 3) == (3, 9)
    assert bar_span(tokens, {BAR}, 4, 4) == (9, 11)
    fixed, span = bar_infill_fixed(tokens, {BAR}, 2, 3)
    assert span == (3, 9)
    assert fixed[0].tolist() == [BAR, 1, 2, BAR, -1, BAR, -1, -1, -1, BAR, 7]
    with pytest.raises(SmdimError, match="only 4 bars"):
        bar_span(tokens, {BAR}, 3, 5)


def test_keep_bars_cuts_before_the_next_bar():
    from smdim.sampling.composer import count_bars, keep_bars

    BAR = 9
    tokens = [BAR, 1, 2, BAR, 3, BAR, 4]
    assert keep_bars(tokens, {BAR}, 2) == [BAR, 1, 2, BAR, 3]
    assert keep_bars(tokens, {BAR}, 5) == tokens and count_bars(tokens, {BAR}) == 3


# --- the real SMDIM denoiser ---

@pytest.mark.parametrize("method", METHODS)
def test_real_denoiser(remi, method):
    torch.manual_seed(0)
    model = Denoiser(ModelConfig(vocab_size=len(remi), d_model=32, n_heads=2, n_blocks=1, d_state=4))
    mask_id = remi["MASK_None"]
    fixed = prefix_fixed([remi["Bar_None"], remi["Position_0"], remi["Pitch_60"]], 37)
    c = make_constraints(remi, pitch_range=[40, 90], max_polyphony=4)
    x, stats = sample_with_stats(
        model, 37, mask_id=mask_id, steps=16, method=method, generator=gen(3), fixed=fixed, constraints=c
    )
    assert not (x == mask_id).any() and torch.equal(x[0, :3], fixed[0, :3])
    assert all(40 <= p <= 90 for p in pitches(remi, x[0]))
    if method == "cached":
        ref = sample(model, 37, mask_id=mask_id, steps=16, generator=gen(3), fixed=fixed, constraints=c)
        assert torch.equal(x, ref) and stats["network_calls"] < 16


def test_sample_config_range_errors():
    with pytest.raises(ConfigError, match="sample: pitch_range must be"):
        build(SampleConfig, {"pitch_range": [90, 40]}, "sample")
    with pytest.raises(ConfigError, match="sample.method"):
        build(SampleConfig, {"method": "beam"}, "sample")


# --- REMI grammar and scale masks ---

REMI_FOLLOWS = {"Bar": {"Bar", "Position"}, "Position": {"Pitch"}, "Pitch": {"Velocity"},
                "Velocity": {"Duration"}, "Duration": {"Pitch", "Position", "Bar"}}


def type_pairs_ok(tok, row, follows=REMI_FOLLOWS) -> bool:
    """Every adjacent pair of (Bar, Position, Pitch, Velocity, Duration) tokens follows REMI."""
    kinds = [tok[int(i)].split("_")[0] for i in row]
    return kinds[0] == "Bar" and all(b in follows[a] for a, b in zip(kinds, kinds[1:], strict=False))


@pytest.mark.parametrize("method", METHODS)
def test_grammar_masks_leave_no_invalid_transition_on_random_logits(remi, method):
    # Token types the grammar leaves free (absent from the default tokenize config) are not drawn.
    piano = lambda n: -1e4 if n.startswith(("PitchDrum", "TimeSig", "Tempo", "Program")) else 0.0  # noqa: E731
    model, mask_id = remi_toy(remi, piano, seed=3), remi["MASK_None"]
    free = sample(model, 160, mask_id=mask_id, steps=16, method=method, batch_size=3, generator=gen(2),
                  constraints=make_constraints(remi, grammar=False))
    assert not any(type_pairs_ok(remi, row) for row in free)  # random logits break the grammar
    out = sample(model, 160, mask_id=mask_id, steps=16, method=method, batch_size=3, generator=gen(2),
                 constraints=make_constraints(remi))
    assert all(type_pairs_ok(remi, row) for row in out), [[remi[int(i)] for i in r[:12]] for r in out]
    again = sample(model, 160, mask_id=mask_id, steps=16, method=method, batch_size=3, generator=gen(2),
                   constraints=make_constraints(remi))
    assert torch.equal(out, again)  # seeded


@pytest.mark.parametrize("method", METHODS)
def test_slack_is_drawn_where_it_fits_and_the_grammar_reads_through_it(method):
    """A model trained with diffusion.slack may draw SLACK; the stream without it is well formed."""
    tok = miditok.REMI(miditok.TokenizerConfig(special_tokens=["PAD", "BOS", "EOS", "MASK", "SLACK"]))
    slack = tok["SLACK_None"]
    # SLACK is favoured, so runs of it fall between every kind of token.
    prefer = lambda n: 1.5 if n == "SLACK_None" else -1e4 if n.startswith(("PitchDrum", "TimeSig", "Tempo", "Program")) else 0.0  # noqa: E731
    model = remi_toy(tok, prefer, seed=5)
    out = sample(model, 160, mask_id=tok["MASK_None"], steps=16, method=method, batch_size=3, generator=gen(2),
                 constraints=make_constraints(tok, slack_id=slack))
    assert (out == slack).float().mean() > 0.1
    rows = [row[row != slack] for row in out]
    assert all(type_pairs_ok(tok, row) for row in rows), [[tok[int(i)] for i in r[:12]] for r in rows]
    banned = sample(model, 160, mask_id=tok["MASK_None"], steps=16, method=method, batch_size=3, generator=gen(2),
                    constraints=make_constraints(tok))
    assert not (banned == slack).any()  # a model trained without slack never draws it


def test_grammar_without_velocity_tokens_puts_duration_after_pitch():
    """tokenize.use_velocities: false drops Velocity from the vocabulary; the grammar follows it."""
    tok = miditok.REMI(miditok.TokenizerConfig(special_tokens=["PAD", "BOS", "EOS", "MASK"], use_velocities=False))
    assert not any(name.startswith("Velocity") for name in tok.vocab)
    piano = lambda n: -1e4 if n.startswith(("PitchDrum", "TimeSig", "Tempo", "Program")) else 0.0  # noqa: E731
    model, mask_id = remi_toy(tok, piano, seed=5), tok["MASK_None"]
    out = sample(model, 120, mask_id=mask_id, steps=16, method="confidence", batch_size=3, generator=gen(2),
                 constraints=make_constraints(tok))
    follows = {**{k: v for k, v in REMI_FOLLOWS.items() if k != "Velocity"}, "Pitch": {"Duration"}}
    for row in out:
        assert type_pairs_ok(tok, row, follows), [tok[int(i)] for i in row[:12]]
        assert any(tok[int(i)].startswith("Pitch") for i in row)


@pytest.mark.parametrize("method", METHODS)
def test_grammar_and_scale_keep_fixed_tokens(remi, method):
    model, mask_id = remi_toy(remi, lambda n: -1e4 if n.startswith("PitchDrum") else 0.0, seed=4), remi["MASK_None"]
    names = ["Bar_None", "Position_0", "Pitch_61", "Velocity_63", "Duration_1.0.8"]
    fixed = torch.full((60,), -1)
    fixed[:5] = torch.tensor([remi[n] for n in names])
    fixed[30] = remi["Bar_None"]
    c = make_constraints(remi, scale="C:pentatonic")
    out = sample(model, 60, mask_id=mask_id, steps=10, method=method, batch_size=2, generator=gen(5),
                 fixed=fixed, constraints=c)
    assert (out[:, :5] == fixed[:5]).all() and (out[:, 30] == remi["Bar_None"]).all()
    drawn = pitches(remi, out[:, 5:].flatten())
    assert drawn and {p % 12 for p in drawn} <= {0, 2, 4, 7, 9}  # the fixed C#4 stays, nothing else


def test_scale_names():
    from smdim.sampling.scales import pitch_classes

    assert pitch_classes("C:major") == {0, 2, 4, 5, 7, 9, 11}
    assert pitch_classes("D:dorian") == {2, 4, 5, 7, 9, 11, 0}
    assert pitch_classes("Bb:major") == pitch_classes("A#:major") == {10, 0, 2, 3, 5, 7, 9}
    assert pitch_classes("A:yu") == pitch_classes("C:pentatonic") == {0, 2, 4, 7, 9}
    with pytest.raises(SmdimError, match="scale 'H:major': expected TONIC:MODE"):
        pitch_classes("H:major")
    with pytest.raises(ConfigError, match="sample: scale 'C:majr'"):
        build(SampleConfig, {"scale": "C:majr"}, "sample")


# --- samplers and options from the literature: remasking, margin ordering, truncation ---

# (method, options) pairs: each new sampler or option, run through the same checks as the old ones.
VARIANTS = {
    "remdm-cap": ("remdm", {"remask": "cap", "remask_eta": 0.3}),
    "remdm-rescale": ("remdm", {"remask": "rescale", "remask_eta": 0.5}),
    "remdm-conf": ("remdm", {"remask": "conf", "remask_eta": 0.3}),
    "margin": ("confidence", {"confidence": "margin"}),
    "entropy": ("confidence", {"confidence": "entropy"}),
    "left-to-right": ("confidence", {"confidence": "left_to_right"}),
    "top-k": ("ancestral", {"top_k": 3}),
    "top-p": ("confidence", {"top_p": 0.5}),
    "remdm-top-p": ("remdm", {"top_p": 0.8, "remask_eta": 0.3}),
    "semi-ar-blocks": ("confidence", {"block_tokens": 16, "confidence_noise": 0.5}),
    "gibbs-corrector": ("confidence", {"correct_rounds": 6, "correct_share": 0.3}),
    "gibbs-corrector-ancestral": ("ancestral", {"correct_rounds": 4, "correct_share": 0.5}),
}
variant_ids = list(VARIANTS)


@pytest.mark.parametrize("variant", variant_ids)
def test_new_variants_keep_fixed_tokens_seeded_and_leave_no_mask(variant):
    method, kw = VARIANTS[variant]
    song = torch.randint(0, MASK, (50,), generator=gen(5)).tolist()
    fixed = span_fixed(song, 10, 30, batch_size=2)
    keep = fixed >= 0
    runs = [sample(Toy(), 50, mask_id=MASK, steps=12, method=method, batch_size=2, generator=gen(s),
                   fixed=fixed, **kw) for s in (1, 1, 2)]
    for out in runs:
        assert torch.equal(out[keep], fixed[keep]) and not (out == MASK).any()
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("variant", variant_ids)
def test_new_variants_follow_grammar_scale_and_polyphony_cap(remi, variant):
    method, kw = VARIANTS[variant]
    piano = lambda n: -1e4 if n.startswith(("PitchDrum", "TimeSig", "Tempo", "Program")) else 0.0  # noqa: E731
    model, mask_id = remi_toy(remi, piano, seed=3), remi["MASK_None"]
    names = ["Bar_None", "Position_0", "Pitch_60", "Velocity_63", "Duration_1.0.8"]
    fixed = torch.full((160,), -1)
    fixed[:5] = torch.tensor([remi[n] for n in names])
    out = sample(model, 160, mask_id=mask_id, steps=16, method=method, batch_size=3, generator=gen(2),
                 fixed=fixed, constraints=make_constraints(remi, scale="C:major"), **kw)
    assert all(type_pairs_ok(remi, row) for row in out), [[remi[int(i)] for i in r[:12]] for r in out]
    assert (out[:, :5] == fixed[:5]).all()
    assert {p % 12 for p in pitches(remi, out.flatten())} <= {0, 2, 4, 5, 7, 9, 11}
    # The polyphony cap on its own (with the grammar, its conservative segments can leave a slot that
    # must be a Pitch only wildcards, in every sampler: checked here for the cap alone).
    capped = sample(model, 160, mask_id=mask_id, steps=16, method=method, batch_size=3, generator=gen(2),
                    fixed=fixed, constraints=make_constraints(remi, max_polyphony=2), **kw)
    assert all(max_onset_polyphony(remi, row) <= 2 for row in capped)


class Recorder(torch.nn.Module):
    """Wraps a denoiser and keeps every input it sees (the sampler's state before each step)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x, t=None, pad_mask=None):
        self.seen.append(x.clone())
        return self.inner(x, t, pad_mask)


def test_semi_autoregressive_blocks_finish_left_to_right():
    """block_tokens=N: a slot of block j+1 is decoded only once block j has no MASK left, and each
    block gets at most steps // n_blocks network calls."""
    L, N = 50, 16  # blocks [0, 16), [16, 32), [32, 48), [48, 50)
    rec = Recorder(Toy())
    fixed = torch.full((L,), -1)
    fixed[20:24] = 5  # fixed slots count as decoded from the start
    out = sample(rec, L, mask_id=MASK, steps=12, method="confidence", batch_size=2, generator=gen(4),
                 fixed=fixed, block_tokens=N)
    assert not (out == MASK).any() and (out[:, 20:24] == 5).all()
    assert len(rec.seen) == 3 + 3 + 3 + 2  # 12 // 4 calls per block; the 2-slot tail is done after 2
    states = [*rec.seen, out]
    for x in states:
        decoded = (x != MASK) & (fixed < 0)  # (B, L), the sampler's own decisions
        for a in range(0, L - N, N):
            later = decoded[:, a + N:].any(1)  # (B,)
            assert not (later & (x[:, a:a + N] == MASK).any(1)).any(), f"block at {a} left open"
    assert (states[3][:, :N] != MASK).all() and (states[3][:, N:] == MASK).sum() == 2 * (L - N - 4)


@pytest.mark.parametrize("block", [0, 8])
def test_left_to_right_draws_one_free_slot_per_call_leftmost_first(block):
    """confidence left_to_right with linear unmasking and a step per free slot: each call sees the
    free slots decoded so far as a prefix of the free slots, one more per call; the order noise is
    ignored (the order is fixed), so the tokens are those drawn without it."""
    L = 40
    fixed = torch.full((L,), -1)
    fixed[10:13] = 5
    free_cols = (fixed < 0).nonzero().squeeze(1)  # (37,)
    steps = len(free_cols) if block == 0 else block * (L // block)  # a block's fixed slots end it early
    kw = dict(mask_id=MASK, steps=steps, method="confidence", batch_size=2, fixed=fixed,
              confidence="left_to_right", unmask_schedule="linear", block_tokens=block)
    rec = Recorder(Toy())
    out = sample(rec, L, generator=gen(3), confidence_noise=2.0, **kw)
    assert not (out == MASK).any() and (out[:, 10:13] == 5).all()
    assert len(rec.seen) == len(free_cols)
    for k, x in enumerate(rec.seen):
        decoded = x[:, free_cols] != MASK  # (B, 37)
        assert decoded[:, :k].all() and not decoded[:, k:].any(), f"call {k}"
    assert torch.equal(out, sample(Toy(), L, generator=gen(3), confidence_noise=0.0, **kw))


@pytest.mark.parametrize("strategy", ["cap", "rescale", "conf"])
def test_remasking_redraws_free_tokens_and_never_fixed_ones(strategy):
    model = Recorder(Toy())
    fixed = prefix_fixed(list(range(10)), 60)
    # One sequence: a step with nothing to unmask skips its call, so the states seen stay in order.
    sample(model, 60, mask_id=MASK, steps=20, method="remdm", remask=strategy, remask_eta=0.5,
           generator=gen(0), fixed=fixed)
    states = torch.cat(model.seen)  # (calls, L)
    assert (states[:, :10] == fixed[:, :10]).all()  # fixed tokens are never MASK, at any step
    decoded_then_masked = (states[:-1] != MASK) & (states[1:] == MASK)
    assert decoded_then_masked[:, 10:].any()  # free tokens really go back to MASK


def test_corrector_redraws_only_generated_tokens_one_call_per_round():
    model = Recorder(Toy())
    fixed = prefix_fixed(list(range(10)), 60)
    out = sample(model, 60, mask_id=MASK, steps=8, method="confidence", generator=gen(0), fixed=fixed,
                 correct_rounds=5, correct_share=0.25)
    assert len(model.seen) == 8 + 5
    rounds = torch.cat(model.seen[8:])  # (5, L): what each corrector round showed the network
    assert (rounds[:, :10] == fixed[0, :10]).all()
    share = (rounds[:, 10:] == MASK).float().mean().item()
    assert 0.1 < share < 0.4  # about correct_share of the 50 generated slots, redrawn each round
    plain = sample(Toy(), 60, mask_id=MASK, steps=8, method="confidence", generator=gen(0), fixed=fixed)
    assert not torch.equal(out, plain) and torch.equal(out[:, :10], plain[:, :10])
    with pytest.raises(SmdimError, match="correct_share in"):
        sample(Toy(), 8, mask_id=MASK, steps=2, correct_rounds=1, correct_share=0.0)


def test_remdm_without_remasking_is_the_ancestral_sampler():
    ref = sample(Toy(), 64, mask_id=MASK, steps=16, method="ancestral", batch_size=3, generator=gen(4))
    for strategy in ("cap", "rescale", "conf"):
        out = sample(Toy(), 64, mask_id=MASK, steps=16, method="remdm", remask=strategy, remask_eta=0.0,
                     batch_size=3, generator=gen(4))
        assert torch.equal(out, ref)


def test_remdm_keeps_the_schedules_masked_share():
    # ReMDM's unmask rate compensates the remasking: a share m(t) of slots is masked at time t.
    model = Recorder(Toy(max_len=4000))
    sample(model, 4000, mask_id=MASK, steps=4, method="remdm", remask="cap", remask_eta=0.2, generator=gen(0))
    for x, k in zip(model.seen, (4, 3, 2, 1), strict=True):
        assert (x == MASK).float().mean().item() == pytest.approx(k / 4, abs=0.025)


def test_remasked_onsets_keep_the_polyphony_cap(remi):
    # A remasked Position between two full onsets would merge them over the cap: it must stay.
    c = make_constraints(remi, max_polyphony=2, grammar=False)
    chordy = lambda n: 4.0 if n.startswith("Pitch_") else (3.0 if n.startswith(("Position_", "Bar_")) else 0.0)  # noqa: E731
    model, mask_id = remi_toy(remi, chordy, seed=1), remi["MASK_None"]
    for seed in range(3):
        out = sample(model, 200, mask_id=mask_id, steps=24, method="remdm", remask_eta=0.5, batch_size=2,
                     generator=gen(seed), constraints=c)
        assert all(max_onset_polyphony(remi, row) <= 2 for row in out)


def test_margin_ranks_by_the_gap_between_the_two_best_tokens():
    from smdim.sampling.samplers import _confidence_score

    # Slot 0: a clear winner at a low probability; slot 1: two tied favourites at a higher one.
    probs = torch.tensor([[[0.40, 0.10, 0.10, 0.10, 0.10, 0.10, 0.10], [0.45, 0.45, 0.10, 0, 0, 0, 0]]])
    logits = probs.log()
    drawn = torch.tensor([[0, 0]])
    logprob, margin = (_confidence_score(logits, drawn, s)[0] for s in ("logprob", "margin"))
    assert logprob[1] > logprob[0] and margin[0] > margin[1]
    assert margin.tolist() == pytest.approx([0.30, 0.0], abs=1e-6)


def test_truncation_keeps_the_top_k_and_the_nucleus():
    from smdim.sampling.truncation import truncate

    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = lambda out: torch.isfinite(out[0]).nonzero().squeeze(1).tolist()  # noqa: E731
    assert kept(truncate(logits, top_k=2)) == [0, 1]
    assert kept(truncate(logits, top_p=0.8)) == [0, 1]  # 0.5 + 0.3 reaches 0.8
    assert kept(truncate(logits, top_p=0.81)) == [0, 1, 2]
    assert kept(truncate(logits, top_p=0.1)) == [0]  # the best token always survives
    constrained = logits.clone()
    constrained[0, 0] = float("-inf")  # truncation after the constraints: never revives a banned token
    assert kept(truncate(constrained, top_k=1)) == [1]
    # In a sampler whose order does not depend on the draws, top-1 draws are greedy draws.
    top1 = sample(Toy(), 64, mask_id=MASK, steps=8, method="confidence", generator=gen(0), top_k=1, batch_size=2)
    greedy = sample(Toy(), 64, mask_id=MASK, steps=8, method="confidence", generator=gen(9), temperature=0.0,
                    batch_size=2)
    assert torch.equal(top1, greedy)


@pytest.mark.parametrize(("kw", "message"), [
    ({"confidence": "gap"}, "confidence 'gap' is unknown"),
    ({"remask": "loop"}, "remask strategy 'loop' is unknown"),
    ({"remask_eta": 1.5}, "remask_eta must be in"),
    ({"top_k": 0}, "top_k must be >= 1"),
    ({"top_p": 0.0}, "top_p in"),
    ({"block_tokens": -1}, "block_tokens must be >= 0"),
])
def test_bad_new_options_are_one_line_errors(kw, message):
    with pytest.raises(SmdimError, match=message):
        sample(Toy(), 8, mask_id=MASK, steps=2, **kw)


@pytest.mark.parametrize(("data", "message"), [
    ({"top_k": 0}, "sample: top_k must be >= 1"),
    ({"top_p": 1.5}, r"sample: top_p must be in \(0, 1\]"),
    ({"remask_eta": -0.1}, r"sample: remask_eta must be in \[0, 1\]"),
    ({"block_tokens": -2}, "sample: block_tokens must be >= 0"),
    ({"confidence": "gap"}, "sample.confidence: input should be 'logprob', 'margin', 'entropy' or 'left_to_right'"),
    ({"remask": "loop"}, "sample.remask: input should be 'cap', 'rescale' or 'conf'"),
])
def test_sample_config_new_option_errors(data, message):
    with pytest.raises(ConfigError, match=message):
        build(SampleConfig, data, "sample")


class SelfConditioned(torch.nn.Module):
    """Toy with `prev` (model.self_cond): keeps what it was given, adds it to its logits."""

    self_conditioned = True

    def __init__(self):
        super().__init__()
        self.inner, self.given, self.outputs = Toy(), [], []

    def forward(self, x, t=None, pad_mask=None, prev=None):
        self.given.append(None if prev is None else prev.clone())
        out = self.inner(x, t, pad_mask) + (0.0 if prev is None else 2.0 * prev)
        self.outputs.append(out.clone())
        return out


@pytest.mark.parametrize("method", METHODS)
def test_self_conditioned_net_reads_its_last_prediction(method):
    """Each call gets, for every row it holds, the softmax (MASK excluded) of that row's last
    output, and nothing before the row's first call; fixed tokens stay, and the draw is seeded."""
    fixed = torch.full((3, 40), -1)
    fixed[:, 0] = torch.tensor([3, 4, 5])  # a row's first token says which row a call holds
    # 48 steps for 39 free slots: `cached` and ReMDM skip rows with nothing to unmask, so calls
    # hold subsets of the rows
    runs = []
    for _ in range(2):
        net = SelfConditioned()
        runs.append(sample(net, 40, mask_id=MASK, steps=48, method=method, batch_size=3, generator=gen(5),
                           fixed=fixed, correct_rounds=1))
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0][:, 0], fixed[:, 0])
    assert net.given[0] is None and len(net.given) >= 3
    assert any(x.shape[0] < 3 for x, _ in net.inner.calls) == (method in ("cached", "remdm"))
    last: dict[int, torch.Tensor] = {}
    for (x, _), given, out in zip(net.inner.calls, net.given, net.outputs, strict=True):
        probs = out.index_fill(-1, torch.tensor([MASK]), float("-inf")).softmax(-1)  # (b, L, V)
        for j, row in enumerate(x[:, 0].tolist()):
            if row in last:
                torch.testing.assert_close(given[j], last[row])
            else:
                assert given is None or not given[j].any()  # zeros: no prediction yet
            last[row] = probs[j]
    plain = sample(Toy(), 40, mask_id=MASK, steps=48, method=method, batch_size=3, generator=gen(5), fixed=fixed,
                   correct_rounds=1)
    assert not torch.equal(runs[0], plain)  # prev changed the logits, and so the draw
