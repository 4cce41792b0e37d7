"""Denoiser: mamba_ssm-compatible names, (non-)causality, padding, all block types, checkpoints."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from smdim.config import build
from smdim.errors import ConfigError, SmdimError
from smdim.model.attention import SelfAttention
from smdim.model.checkpoint import load_checkpoint, save_checkpoint
from smdim.model.config import BLOCK_TYPES, ModelConfig
from smdim.model.denoiser import Denoiser
from smdim.model.mamba import Mamba
from smdim.model.refine import TokenRefiner

V = 40
# mamba_ssm.modules.mamba_simple.Mamba's state_dict with its defaults (bias=False, conv_bias=True),
# read from state-spaces/mamba: parameters A_log, D, then in_proj, conv1d, x_proj, dt_proj, out_proj.
MAMBA_SSM_SHAPES = {
    "A_log": ("d_inner", "d_state"),
    "D": ("d_inner",),
    "in_proj.weight": ("2*d_inner", "d_model"),
    "conv1d.weight": ("d_inner", 1, "d_conv"),
    "conv1d.bias": ("d_inner",),
    "x_proj.weight": ("dt_rank+2*d_state", "d_inner"),
    "dt_proj.weight": ("d_inner", "dt_rank"),
    "dt_proj.bias": ("d_inner",),
    "out_proj.weight": ("d_model", "d_inner"),
}


# Tiny tensors: one thread is faster, and much faster on a shared machine (no OMP barriers).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=V, d_model=32, n_heads=2, n_blocks=2, stride=4, d_state=4)
    return ModelConfig(**{**base, **kw})


def test_mamba_state_dict_matches_mamba_ssm():
    m = Mamba(48, d_state=16, d_conv=4, expand=2)
    dims = {"d_model": 48, "d_inner": 96, "d_state": 16, "d_conv": 4, "dt_rank": 3}
    dims.update({"2*d_inner": 192, "dt_rank+2*d_state": 35})
    sd = m.state_dict()
    assert list(sd) == list(MAMBA_SSM_SHAPES)
    for key, shape in MAMBA_SSM_SHAPES.items():
        assert tuple(sd[key].shape) == tuple(dims.get(s, s) for s in shape), key
    # mamba's inits: A = -(1..N) per channel, D = 1, softplus(dt bias) in [dt_min, dt_max].
    torch.testing.assert_close(-torch.exp(m.A_log[0]), -torch.arange(1.0, 17.0))
    assert torch.all(m.D == 1)
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6


def test_mamba_conv_is_mamba_ssm_conv():
    """Our shifted-sum causal conv equals nn.Conv1d(padding=d_conv-1) cropped to L (mamba_simple)."""
    torch.manual_seed(0)
    m = Mamba(16, d_state=4)
    x = torch.randn(2, m.d_inner, 11)
    from smdim.model.mamba import causal_depthwise_conv

    torch.testing.assert_close(causal_depthwise_conv(x, m.conv1d.weight, m.conv1d.bias), m.conv1d(x)[..., :11])


def test_config_range_checks():
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=30, n_heads=4)
    with pytest.raises(ConfigError, match="model.*stride"):
        build(ModelConfig, {"stride": 0}, "model")
    with pytest.raises(ConfigError, match="block"):
        build(ModelConfig, {"block": "lstm"}, "model")
    with pytest.raises(SmdimError, match="vocab_size"):
        Denoiser(ModelConfig())


@pytest.mark.parametrize("block", BLOCK_TYPES)
def test_block_types_train_on_a_fixed_batch(block):
    """Each block type runs forward/backward and fits a fixed masked batch within 25 steps."""
    torch.manual_seed(0)
    model = Denoiser(tiny(block=block, n_blocks=1))
    x0 = torch.randint(1, V - 1, (2, 23), generator=torch.Generator().manual_seed(1))
    masked = torch.rand(2, 23, generator=torch.Generator().manual_seed(2)) < 0.5
    xt = torch.where(masked, torch.full_like(x0, V - 1), x0)  # V-1 plays MASK
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        logits = model(xt)
        assert logits.shape == (2, 23, V)
        loss = F.cross_entropy(logits[masked], x0[masked])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


def test_bidirectional_denoiser_is_non_causal():
    torch.manual_seed(0)
    model = Denoiser(tiny(block="mamba", bidirectional=True)).eval()
    x = torch.randint(0, V, (1, 32))
    y = x.clone()
    y[0, 29] = (x[0, 29] + 1) % V
    diff = (model(x) - model(y)).abs().amax(-1)[0]  # (L,)
    assert diff[:8].max() > 1e-6  # positions two windows earlier see the later token


def test_unidirectional_mamba_is_causal_across_windows():
    """Without attention and with one scan direction, window k sees only windows <= k."""
    torch.manual_seed(0)
    model = Denoiser(tiny(block="mamba", bidirectional=False, refine_layers=0)).eval()  # centred refinement looks ahead
    x = torch.randint(0, V, (1, 30))
    y = x.clone()
    y[0, 13] = (x[0, 13] + 1) % V  # window 3 (positions 12..15) with stride 4
    diff = (model(x) - model(y)).abs().amax(-1)[0]
    assert diff[:12].max() == 0
    assert diff[12:].max() > 1e-6


@pytest.mark.parametrize("L", [1, 3, 5, 13, 64])
def test_any_length(L):
    model = Denoiser(tiny(stride=4)).eval()
    assert model(torch.randint(0, V, (2, L))).shape == (2, L, V)


@pytest.mark.parametrize("block,refine", [("mfa", 0), ("transformer", 0), ("mfa", 2)])
def test_pad_mask_matches_unpadded_rows(block, refine):
    """A right-padded row gives the same logits on its real tokens as the row alone."""
    torch.manual_seed(0)
    model = Denoiser(tiny(block=block, refine_layers=refine, refine_kernel=5)).eval()
    g = torch.Generator().manual_seed(3)
    short, full = torch.randint(0, V, (1, 10), generator=g), torch.randint(0, V, (1, 16), generator=g)
    batch = torch.cat([torch.cat([short, torch.randint(0, V, (1, 6), generator=g)], 1), full])
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[0, 10:] = False
    out = model(batch, pad_mask=mask)
    torch.testing.assert_close(out[0, :10], model(short)[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[1], model(full)[0], rtol=1e-4, atol=1e-5)


def test_refinement_layer_reads_a_centred_window_of_tokens():
    """Output i of a TokenRefiner changes with input j exactly when |i - j| <= kernel // 2."""
    torch.manual_seed(0)
    layer = TokenRefiner(8, kernel=5).eval()
    x = torch.randn(1, 20, 8)
    y = x.clone()
    y[0, 10] += 1.0
    changed = ((layer(x, None) - layer(y, None)).abs().amax(-1)[0] > 0).nonzero().flatten().tolist()
    assert changed == [8, 9, 10, 11, 12]
    with pytest.raises(ValueError, match="refine_kernel must be odd"):
        tiny(refine_layers=1, refine_kernel=4)
    causal = TokenRefiner(8, kernel=5, causal=True).eval()
    changed = ((causal(x, None) - causal(y, None)).abs().amax(-1)[0] > 0).nonzero().flatten().tolist()
    assert changed == [10, 11, 12, 13, 14]
    # step() gives forward()'s numbers one token at a time
    with torch.no_grad():
        past, outs = None, []
        for i in range(20):
            out, past = causal.step(x[:, i], past)
            outs.append(out)
        torch.testing.assert_close(torch.stack(outs, 1), causal(x, None), rtol=1e-5, atol=1e-6)


def test_checkpoint_without_refine_layers_loads_as_none(tmp_path):
    """A checkpoint from before model.refine_layers existed rebuilds without refinement layers."""
    model = Denoiser(tiny(refine_layers=0))
    save_checkpoint(tmp_path / "old.pt", model)
    payload = torch.load(tmp_path / "old.pt", weights_only=True)
    del payload["config"]["refine_layers"]
    torch.save(payload, tmp_path / "old.pt")
    again, _ = load_checkpoint(tmp_path / "old.pt")
    assert again.cfg.refine_layers == 0 and len(again.refine) == 0


def test_attention_dropout_reaches_the_attention_weights_only():
    """null follows model.dropout (as before the field existed); a number sets the attention
    weights' dropout apart from the sublayers' output dropout."""
    def attentions(**kw):
        net = Denoiser(tiny(block="transformer", **kw)).train()
        return net, [m for m in net.modules() if isinstance(m, SelfAttention)]

    _, layers = attentions(dropout=0.1)
    assert layers and all(m.dropout == 0.1 for m in layers)
    net, layers = attentions(dropout=0.1, attention_dropout=0.0)
    assert all(m.dropout == 0.0 for m in layers)
    assert {m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}
    x = torch.randn(2, 16, 32)
    torch.manual_seed(0)
    assert torch.equal(layers[0](x), layers[0](x))  # no dropout inside attention
    _, layers = attentions(attention_dropout=0.5)
    assert not torch.equal(layers[0](x), layers[0](x))
    with pytest.raises(ConfigError, match="model.*attention_dropout"):
        build(ModelConfig, {"attention_dropout": 1.0}, "model")


def test_checkpoint_without_attention_dropout_keeps_dropout_on_attention(tmp_path):
    model = Denoiser(tiny(block="transformer", dropout=0.1))
    save_checkpoint(tmp_path / "old.pt", model)
    payload = torch.load(tmp_path / "old.pt", weights_only=True)
    del payload["config"]["attention_dropout"]
    torch.save(payload, tmp_path / "old.pt")
    again, _ = load_checkpoint(tmp_path / "old.pt")
    assert again.cfg.attention_dropout is None and again.cfg.attention_weight_dropout == 0.1


def test_pad_mask_must_be_right_padding():
    model = Denoiser(tiny())
    mask = torch.ones(1, 8, dtype=torch.bool)
    mask[0, 2] = False
    with pytest.raises(SmdimError, match="right padding"):
        model(torch.zeros(1, 8, dtype=torch.long), pad_mask=mask)


def test_time_conditioning_flag():
    assert not Denoiser(tiny()).uses_time
    model = Denoiser(tiny(time_cond=True)).eval()
    assert model.uses_time
    x = torch.randint(0, V, (2, 12))
    assert not torch.allclose(model(x, torch.tensor([0.1, 0.1])), model(x, torch.tensor([0.9, 0.9])))
    with pytest.raises(SmdimError, match="time_cond"):
        model(x)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = Denoiser(tiny(block="mfa2sa", stride=3)).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, mask_id=V - 1, step=7, diffusion={"T": 8})
    loaded, extra = load_checkpoint(path)
    assert extra == {"mask_id": V - 1, "step": 7, "diffusion": {"T": 8}}
    assert loaded.cfg == model.cfg and not loaded.training
    x = torch.randint(0, V, (2, 17))
    assert torch.equal(loaded(x), model(x))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp file left behind
    again = tmp_path / "again" / "m.pt"  # same weights, another save: the same bytes (DVC hashes)
    save_checkpoint(again, model, mask_id=V - 1, step=7, diffusion={"T": 8})
    assert again.read_bytes() == path.read_bytes()


def test_checkpoint_errors(tmp_path):
    model = Denoiser(tiny())
    good = tmp_path / "good.pt"
    save_checkpoint(good, model)
    with pytest.raises(SmdimError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(SmdimError, match=r"truncated.pt: not a PyTorch checkpoint \(truncated"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(SmdimError, match="garbage.pt: not a PyTorch checkpoint") as e:
        load_checkpoint(garbage)
    assert "weights_only" not in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "models").mkdir()
    save_checkpoint(tmp_path / "models" / "model.pt", model)
    with pytest.raises(SmdimError, match=r"models: is a directory \(it holds model.pt\); pass .*models/model.pt"):
        load_checkpoint(tmp_path / "models")
    resume = tmp_path / "last.pt"
    torch.save({"step": 3, "fingerprint": {}, "model": model.state_dict()}, resume)
    with pytest.raises(SmdimError, match="last.pt: a training resume state, not a model; use models/model.pt"):
        load_checkpoint(resume)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": model.state_dict()}, foreign)
    with pytest.raises(SmdimError, match="not an smdim denoiser checkpoint"):
        load_checkpoint(foreign)
    mismatched = tmp_path / "mismatched.pt"
    payload = torch.load(good, weights_only=True)
    payload["config"] = dataclasses.asdict(dataclasses.replace(model.cfg, d_model=64))
    torch.save(payload, mismatched)
    with pytest.raises(SmdimError, match="do not match"):
        load_checkpoint(mismatched)


def test_self_conditioning_starts_as_the_plain_net_and_reads_prev():
    """model.self_cond: zero-initialised, so a fresh net ignores `prev`; once trained it reads it,
    per token (a row's prediction moves only that row's logits)."""
    torch.manual_seed(0)
    plain = Denoiser(tiny()).eval()
    model = Denoiser(tiny(self_cond=True)).eval()
    model.load_state_dict(plain.state_dict(), strict=False)  # all but the new projection
    assert model.self_conditioned and not plain.self_conditioned
    x = torch.randint(0, V, (2, 16))
    prev = torch.softmax(torch.randn(2, 16, V), -1)
    torch.testing.assert_close(model(x, prev=prev), plain(x))
    torch.testing.assert_close(model(x), plain(x))
    torch.nn.init.normal_(model.self_cond.weight)
    moved = model(x, prev=prev)
    assert not torch.allclose(moved, plain(x))
    other = prev.clone()
    other[1] = torch.softmax(torch.randn(16, V), -1)
    torch.testing.assert_close(model(x, prev=other)[0], moved[0])  # row 0's prev is unchanged
    with pytest.raises(ValueError, match="self_cond is for diffusion only"):
        tiny(self_cond=True, objective="autoregressive")


def test_checkpoint_without_self_cond_loads_unconditioned(tmp_path):
    model = Denoiser(tiny())
    save_checkpoint(tmp_path / "old.pt", model)
    payload = torch.load(tmp_path / "old.pt", weights_only=True)
    del payload["config"]["self_cond"]
    torch.save(payload, tmp_path / "old.pt")
    again, _ = load_checkpoint(tmp_path / "old.pt")
    assert not again.cfg.self_cond and again.self_cond is None
    sc = Denoiser(tiny(self_cond=True))
    save_checkpoint(tmp_path / "sc.pt", sc)
    loaded, _ = load_checkpoint(tmp_path / "sc.pt")
    assert loaded.cfg.self_cond and torch.equal(loaded.self_cond.weight, sc.self_cond.weight)
