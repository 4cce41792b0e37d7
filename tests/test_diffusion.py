"""Absorbing diffusion: schedules, forward masking and the weighted loss (hand-checked)."""

from __future__ import annotations

import math

import pytest
import torch

from smdim.config import build
from smdim.diffusion.config import DiffusionConfig
from smdim.diffusion.loss import diffusion_loss, masked_loss
from smdim.diffusion.masking import block_masks, mask_tokens
from smdim.diffusion.schedule import make_schedule
from smdim.errors import ConfigError
from smdim.model.config import ModelConfig
from smdim.model.denoiser import Denoiser


def sched(**kw):
    return make_schedule(DiffusionConfig(**kw))


@pytest.mark.parametrize("schedule", ["linear", "cosine", "maskgit"])
def test_schedule_ends_and_elbo_weight_is_rate_over_prob(schedule):
    s = sched(schedule=schedule, weighting="elbo")
    assert float(s.mask_prob(torch.tensor(0.0))) == pytest.approx(0.0, abs=1e-7)
    assert float(s.mask_prob(torch.tensor(1.0))) == pytest.approx(1.0, abs=1e-6)
    t = torch.tensor([0.1, 0.37, 0.9], dtype=torch.float64)
    h = 1e-6
    rate = (s.mask_prob(t + h) - s.mask_prob(t - h)) / (2 * h)
    torch.testing.assert_close(s.loss_weight(t), rate / s.mask_prob(t))
    torch.testing.assert_close(s.time_of(s.mask_prob(t)), t)


@pytest.mark.parametrize(("schedule", "mean_share"), [("linear", 0.5), ("cosine", 1 - 2 / math.pi),
                                                      ("maskgit", 2 / math.pi)])
def test_training_draws_mask_the_documented_share(schedule, mean_share):
    """t uniform: "cosine" masks lightly, MaskGIT's training masks (cos(pi r / 2) of the tokens,
    r uniform) heavily; the two are mirror images."""
    s = sched(schedule=schedule, T=4096)
    t = torch.cat([s.sample_t(64, generator=torch.Generator().manual_seed(i)) for i in range(64)])
    assert float(s.mask_prob(t).mean()) == pytest.approx(mean_share, abs=0.005)
    heavy = float((s.mask_prob(t) > 0.5).float().mean())
    assert heavy == pytest.approx({"linear": 0.5, "cosine": 1 / 3, "maskgit": 2 / 3}[schedule], abs=0.01)


def test_weightings():
    t = torch.tensor([0.25, 0.5, 1.0])
    torch.testing.assert_close(sched(weighting="elbo", schedule="linear").loss_weight(t), 1 / t)
    torch.testing.assert_close(sched(weighting="reweighted").loss_weight(t), 1 - t)
    torch.testing.assert_close(sched(weighting="uniform").loss_weight(t), torch.ones(3))


@pytest.mark.parametrize("low_discrepancy", [True, False], ids=["stratified", "iid"])
def test_sample_t_is_on_the_grid_and_uniform(low_discrepancy):
    s = sched(T=8, low_discrepancy=low_discrepancy)
    g = torch.Generator().manual_seed(0)
    t = torch.cat([s.sample_t(16, generator=g) for _ in range(200)])
    k = (t * 8).round()
    torch.testing.assert_close(t * 8, k)
    counts = torch.bincount(k.long(), minlength=9)[1:].float()
    assert counts.min() > 0.8 * counts.mean() and counts.max() < 1.2 * counts.mean()
    if low_discrepancy:  # 16 evenly spaced draws over 8 steps: each step exactly twice
        assert torch.bincount((s.sample_t(16, generator=g) * 8).round().long(), minlength=9)[1:].tolist() == [2] * 8


@pytest.mark.parametrize("schedule", ["linear", "cosine", "maskgit"])
def test_clipped_mask_range_draws_uniform_mask_rates_inside_it(schedule):
    """diffusion.mask_range (BD3-LM's clipped schedule): training's mask rates are uniform in
    [low, high] whatever the schedule; the unclipped copy (validation) covers [0, 1] again."""
    s = sched(schedule=schedule, T=4096, mask_range=(0.3, 0.8))
    t = torch.cat([s.sample_t(64, generator=torch.Generator().manual_seed(i)) for i in range(64)])
    p = s.mask_prob(t)
    assert float(p.min()) >= 0.3 - 1e-3 and float(p.max()) <= 0.8 + 1e-3
    assert float(p.mean()) == pytest.approx(0.55, abs=0.005)
    assert float((p < 0.425).float().mean()) == pytest.approx(0.25, abs=0.01)  # uniform, not just inside
    v = s.for_validation()
    full = v.mask_prob(torch.cat([v.sample_t(64, generator=torch.Generator().manual_seed(i)) for i in range(64)]))
    assert float(full.min()) < 0.05 and float(full.max()) > 0.95
    assert v.cfg == DiffusionConfig(schedule=schedule, T=4096)


def test_config_validation():
    assert build(DiffusionConfig, {"T": 16, "schedule": "cosine"}, "diffusion").T == 16
    with pytest.raises(ConfigError, match="diffusion: T must be >= 1"):
        build(DiffusionConfig, {"T": 0}, "diffusion")
    with pytest.raises(ConfigError, match="diffusion.schedul"):
        build(DiffusionConfig, {"schedul": "cosine"}, "diffusion")
    assert build(DiffusionConfig, {"mask_range": [0.3, 0.8]}, "diffusion").mask_range == (0.3, 0.8)
    for bad in ([0.8, 0.3], [-0.1, 0.5], [0.5, 1.5]):
        with pytest.raises(ConfigError, match="diffusion: mask_range must be"):
            build(DiffusionConfig, {"mask_range": bad}, "diffusion")


@pytest.mark.parametrize("schedule", ["linear", "cosine", "maskgit"])
def test_mask_rate_matches_schedule_and_spares_pad_and_fixed(schedule):
    s = sched(schedule=schedule)
    g = torch.Generator().manual_seed(1)
    B, L, mask_id = 4, 4000, 9
    x0 = torch.randint(0, 9, (B, L), generator=g)
    t = torch.tensor([0.1, 0.4, 0.7, 1.0])
    pad = torch.ones(B, L, dtype=torch.bool)
    pad[:, -500:] = False
    fixed = torch.zeros(B, L, dtype=torch.bool)
    fixed[:, :500] = True
    x_t, masked = mask_tokens(x0, t, mask_id, s, generator=g, fixed=fixed, pad_mask=pad)
    assert torch.equal(masked, x_t == mask_id)
    assert not masked[:, :500].any() and not masked[:, -500:].any()
    assert torch.equal(x_t[~masked], x0[~masked])  # absorbing: the rest is untouched
    rate = masked[:, 500:-500].float().mean(1)
    torch.testing.assert_close(rate, s.mask_prob(t), atol=0.03, rtol=0)  # 3000 draws: sd <= 0.01


def test_masked_loss_equals_hand_computation():
    # V = 4, MASK = 3: the MASK logit (huge) must be ignored; two masked tokens in row 0, one in row 1.
    logits = torch.tensor(
        [
            [[2.0, 0.0, 0.0, 50.0], [0.0, 1.0, 0.0, 50.0], [0.0, 0.0, 0.0, 50.0]],
            [[1.0, 2.0, 3.0, 50.0], [0.0, 0.0, 5.0, 50.0], [0.0, 0.0, 0.0, 50.0]],
        ]
    )
    x0 = torch.tensor([[0, 2, 1], [2, 2, 0]])
    masked = torch.tensor([[True, True, False], [False, True, False]])
    weight = torch.tensor([2.0, 0.5])

    def ce(row, target):
        return math.log(sum(math.exp(v) for v in row[:3])) - row[target]

    expected = (2.0 * (ce([2, 0, 0], 0) + ce([0, 1, 0], 2)) + 0.5 * ce([0, 0, 5], 2)) / 6
    loss, stats = masked_loss(logits, x0, masked, weight, mask_id=3, n_real=torch.tensor(6))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert stats["acc_masked"] == pytest.approx(2 / 3)  # [2,0,0]->0 right, [0,1,0]->1 wrong, [0,0,5]->2 right
    assert stats["masked_frac"] == pytest.approx(0.5)
    unweighted = (ce([2, 0, 0], 0) + ce([0, 1, 0], 2) + ce([0, 0, 5], 2)) / 3
    assert stats["ce_masked"] == pytest.approx(unweighted, rel=1e-6)


class Uniform(torch.nn.Module):
    """Predicts the uniform distribution over V tokens; records what it was called with."""

    uses_time = False

    def __init__(self, V: int):
        super().__init__()
        self.V = V
        self.w = torch.nn.Parameter(torch.zeros(V))

    def forward(self, x, t=None, pad_mask=None):
        self.seen = (x.clone(), t.clone(), pad_mask)
        return self.w.expand(*x.shape, self.V)


def test_diffusion_loss_of_uniform_model_is_log_v_times_weighted_mask_fraction():
    V, mask_id = 11, 10
    model = Uniform(V)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randint(0, 10, (8, 64), generator=g)
    pad = torch.ones_like(x0, dtype=torch.bool)
    pad[:, 60:] = False
    s = sched(T=1024, weighting="elbo")  # non-constant weights: the test checks they are applied per row
    loss, stats = diffusion_loss(model, x0, mask_id=mask_id, schedule=s, pad_mask=pad, generator=g)
    x_t, t, seen_pad = model.seen
    masked = x_t == mask_id
    assert seen_pad is pad and not masked[:, 60:].any()
    # Uniform over the 10 non-MASK tokens: every masked CE is log 10.
    expected = (s.loss_weight(t)[:, None] * masked).sum() * math.log(10) / pad.sum()
    assert loss.item() == pytest.approx(float(expected), rel=1e-5)
    assert math.isfinite(stats["loss"]) and stats["ce_masked"] == pytest.approx(math.log(10), rel=1e-5)
    loss.backward()
    assert model.w.grad is not None and torch.isfinite(model.w.grad).all()


def test_loss_with_real_denoiser_is_finite_and_differentiable():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=20, d_model=32, n_heads=2, n_blocks=1)
    model = Denoiser(cfg)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(1, 19, (2, 24), generator=g)
    loss, stats = diffusion_loss(model, x0, mask_id=19, schedule=sched(T=64), generator=g)
    assert math.isfinite(loss.item()) and loss.item() >= 0
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads)


def test_block_masks_show_the_semi_autoregressive_view():
    g = torch.Generator().manual_seed(0)
    B, L, block, mask_id = 64, 48, 8, 99
    x0 = torch.randint(0, 50, (B, L), generator=g)
    pad_mask = torch.arange(L)[None, :] < torch.randint(20, L + 1, (B, 1), generator=g)
    t = torch.ones(B)  # every real token masked, so each block row's block is all MASK
    x_t, masked = mask_tokens(x0, t, mask_id, make_schedule(DiffusionConfig()), generator=g, pad_mask=pad_mask)
    rows = torch.arange(B) % 2 == 0
    xb, mb, scored = block_masks(x_t, masked, x0, mask_id, rows, block, generator=g, pad_mask=pad_mask)
    assert torch.equal(xb[~rows], x_t[~rows]) and torch.equal(scored[~rows], masked[~rows])
    starts = set()
    for b in rows.nonzero()[:, 0].tolist():
        n = int(pad_mask[b].sum())
        s = int(mb[b].nonzero().min())
        starts.add(s)
        assert s % block == 0 and s < n
        assert torch.equal(xb[b, :s], x0[b, :s]), "clean left of the block"
        assert (xb[b, s:n] == mask_id).all() and not mb[b, n:].any(), "the block and the right masked"
        assert torch.equal(scored[b].nonzero()[:, 0], torch.arange(s, min(s + block, n))), "only the block scored"
    assert len(starts) > 3  # the block moves over the window


def test_masked_loss_excluded_ids_get_no_probability():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 7, generator=g)
    x0 = torch.randint(0, 5, (2, 5), generator=g)
    masked = torch.ones(2, 5, dtype=torch.bool)
    w = torch.ones(2)
    loss, _ = masked_loss(logits, x0, masked, w, 6, torch.tensor(10), excluded=(5,))
    ref = torch.nn.functional.cross_entropy(logits[..., :5].reshape(-1, 5), x0.reshape(-1), reduction="sum") / 10
    assert torch.allclose(loss, ref)


def test_self_conditioning_feeds_the_first_pass_prediction_without_gradient():
    """self_cond_share 1: a no-grad first call on the same x_t, then a call given its softmax
    (MASK excluded); share 0: one plain call and no extra draw from the generator."""
    calls = []

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(8, generator=torch.Generator().manual_seed(2)))

        def forward(self, x, t=None, pad_mask=None, prev=None):
            out = self.w[x.clamp(max=7)][..., None] * torch.linspace(-1, 1, 10)  # (B, L, 10)
            out = out if prev is None else out + prev
            calls.append((x.clone(), prev, torch.is_grad_enabled(), out.detach()))
            return out

    x0 = torch.randint(0, 8, (3, 16), generator=torch.Generator().manual_seed(0))
    diffusion_loss(Net(), x0, mask_id=9, schedule=sched(), generator=torch.Generator().manual_seed(1),
                   self_cond_share=1.0)
    (x_a, prev_a, grad_a, out_a), (x_b, prev_b, grad_b, _) = calls
    assert prev_a is None and not grad_a and grad_b and torch.equal(x_a, x_b)
    expected = torch.cat([out_a[..., :9].softmax(-1), torch.zeros(3, 16, 1)], -1)  # id 9 is MASK
    torch.testing.assert_close(prev_b, expected)
    calls.clear()
    g_plain, g_share0 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    diffusion_loss(Net(), x0, mask_id=9, schedule=sched(), generator=g_plain)
    diffusion_loss(Net(), x0, mask_id=9, schedule=sched(), generator=g_share0, self_cond_share=0.0)
    assert len(calls) == 2 and all(prev is None for _, prev, _, _ in calls)
    assert torch.equal(g_plain.get_state(), g_share0.get_state())
