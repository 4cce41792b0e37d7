"""Block diffusion (model.block_diffusion): which tokens each block reads, the per-block forward
process, the sampler's settings, and a tiny model trained, scored and sampled end to end."""

from __future__ import annotations

import json

import pytest
import torch

from smdim.config import build
from smdim.diffusion.config import DiffusionConfig
from smdim.diffusion.loss import diffusion_loss
from smdim.diffusion.masking import mask_per_block
from smdim.diffusion.schedule import make_schedule
from smdim.errors import SmdimError
from smdim.model.collection import WithCollection
from smdim.model.config import ModelConfig
from smdim.model.denoiser import Denoiser
from smdim.runtime import BaseConfig
from smdim.sampling.composer import block_diffusion_settings, constraints_for, load_composer
from smdim.training.config import TrainConfig
from smdim.training.loop import TrainPaths, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
V, MASK = 40, 3


def block_model(block: int = 8, stride: int = 2, kind: str = "transformer", **kw) -> Denoiser:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V, d_model=32, n_heads=2, n_blocks=2, stride=stride, block=kind,
                      block_diffusion=block, n_collections=2, **kw)
    net = Denoiser(cfg).eval()
    with torch.no_grad():  # a trained net's weights, not init's zeros, so every path carries signal
        for p in net.parameters():
            p.normal_(0, 0.3)
    return net


@pytest.mark.parametrize("block,stride,kind,token_attention", [
    (8, 2, "transformer", 0), (8, 4, "transformer", 0), (4, 4, "transformer", 0), (16, 1, "transformer", 0),
    (8, 2, "mfa", 0), (4, 4, "mfa", 0), (16, 1, "mamba", 0), (8, 4, "transformer", 1), (16, 4, "mfa", 2)])
def test_a_block_reads_itself_and_the_clean_blocks_before_it_only(block, stride, kind, token_attention):
    net = block_model(block, stride, kind, token_attention=token_attention)
    g = torch.Generator().manual_seed(1)
    L = 4 * block
    x0 = torch.randint(4, V, (2, L), generator=g)
    xt = x0.masked_fill(torch.rand(2, L, generator=g) < 0.5, MASK)
    c = torch.tensor([1, 2])
    with torch.no_grad():
        ref = net(xt, clean=x0, collection=c)
        for b in range(4):
            lo, hi = b * block, (b + 1) * block
            later = x0.clone()
            later[:, lo:] = torch.randint(4, V, (2, L - lo), generator=g)
            out = net(xt, clean=later, collection=c)
            assert torch.equal(out[:, :hi], ref[:, :hi]), f"clean block >= {b} leaked into block {b} or before"
            if b < 3:
                assert not torch.allclose(out[:, hi:], ref[:, hi:]), "later blocks must read clean block b"
            other = xt.clone()
            other[:, lo:hi] = torch.randint(4, V, (2, block), generator=g)
            out = net(other, clean=x0, collection=c)
            assert torch.equal(out[:, :lo], ref[:, :lo]) and torch.equal(out[:, hi:], ref[:, hi:]), \
                f"noised block {b} leaked into another block"
            assert not torch.allclose(out[:, lo:hi], ref[:, lo:hi])


@pytest.mark.parametrize("kind", ["transformer", "mfa"])
def test_any_length_and_right_padding_leave_earlier_blocks_alone(kind):
    net = block_model(8, 2, kind)
    x = torch.randint(4, V, (2, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = net(x)
        # 27 tokens: padded to 32 inside, cropped back; blocks 0-2 are the same numbers
        torch.testing.assert_close(net(x[:, :27])[:, :24], full[:, :24], rtol=1e-5, atol=1e-6)
        pad = torch.ones(2, 32, dtype=torch.bool)
        pad[1, 20:] = False
        out = net(x, pad_mask=pad)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out[1, :16], full[1, :16], rtol=1e-5, atol=1e-6)


def test_without_clean_a_sampler_s_window_serves_as_both_halves():
    net = block_model()
    x = torch.randint(4, V, (1, 24))
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(x, clean=x))
        wrapped = WithCollection(net, 1)
        torch.testing.assert_close(wrapped(x, clean=x), net(x, collection=torch.tensor([1])))


def test_every_block_draws_its_own_noise_level():
    schedule = make_schedule(DiffusionConfig(schedule="linear"))
    x0 = torch.randint(4, V, (8, 64))
    pad = torch.ones(8, 64, dtype=torch.bool)
    pad[0, 50:] = False
    x_t, masked, t = mask_per_block(x0, 16, MASK, schedule, generator=torch.Generator().manual_seed(0), pad_mask=pad)
    assert t.shape == (8, 4) and len(t.unique()) == 32  # stratified over all 32 blocks, none shared
    assert torch.equal(x_t[masked], torch.full_like(x_t[masked], MASK)) and torch.equal(x_t[~masked], x0[~masked])
    assert not masked[0, 50:].any()
    share = masked.view(8, 4, 16)[1:].float().mean(-1)  # the rows without padding
    assert torch.corrcoef(torch.stack([share.flatten(), t[1:].flatten()]))[0, 1] > 0.8


def test_the_loss_reads_the_clean_window_and_weights_per_block():
    net = block_model(8, 2).train()
    schedule = make_schedule(DiffusionConfig(schedule="linear", weighting="elbo"))
    x0 = torch.randint(4, V, (4, 32), generator=torch.Generator().manual_seed(5))
    loss, stats = diffusion_loss(net, x0, mask_id=MASK, schedule=schedule, block_diffusion=8,
                                 generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and stats["n_masked"] > 0
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad and p.dim() > 1)
    with pytest.raises(SmdimError, match="block_share"):
        diffusion_loss(net, x0, mask_id=MASK, schedule=schedule, block_diffusion=8, block_share=0.5)


def test_clipped_mask_rates_hold_for_every_block():
    """diffusion.mask_range with block diffusion: every block draws its own rate, inside the range."""
    schedule = make_schedule(DiffusionConfig(schedule="linear", mask_range=(0.3, 0.8)))
    x0 = torch.randint(4, V, (8, 256), generator=torch.Generator().manual_seed(2))
    x_t, masked, t = mask_per_block(x0, 16, MASK, schedule, generator=torch.Generator().manual_seed(0))
    p = schedule.mask_prob(t)  # (8, 16)
    assert 0.3 - 1e-3 <= float(p.min()) and float(p.max()) <= 0.8 + 1e-3 and len(t.unique()) == 128
    share = masked.view(8, 16, 16).float().mean(-1)
    assert torch.corrcoef(torch.stack([share.flatten(), p.flatten()]))[0, 1] > 0.6


def test_config_checks_block_diffusion_s_settings():
    for bad, match in [({"stride": 3}, "multiple of stride"),
                       ({"objective": "autoregressive"}, "objective"), ({"self_cond": True}, "self_cond")]:
        with pytest.raises(SmdimError, match=match):
            build(ModelConfig, {"block_diffusion": 16, **bad}, "model")
    with pytest.raises(SmdimError, match="token_attention needs model.block_diffusion"):
        build(ModelConfig, {"token_attention": 1}, "model")


def test_its_sampler_is_the_block_order_without_the_corrector():
    kw = {"method": "confidence", "block_tokens": 0, "correct_rounds": 8, "steps": 32}
    assert block_diffusion_settings(kw, 0) is kw
    assert block_diffusion_settings(kw, 16) == {**kw, "block_tokens": 16, "correct_rounds": 0}
    with pytest.raises(SmdimError, match="sample.method=cached"):
        block_diffusion_settings({**kw, "method": "cached"}, 16)


@pytest.mark.parametrize("name,block", [("block_diffusion", 16), ("block_diffusion_steady", 4),
                                        ("block_diffusion_1h", 16)])
def test_the_preset_names_params_keys_and_a_valid_model(name, block):
    import yaml
    from conftest import ROOT

    from smdim.preset_flags import preset_flags

    flags = preset_flags(ROOT / f"configs/{name}.yaml", ROOT / "params.yaml")
    assert f"model.block_diffusion={block}" in flags
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    preset = yaml.safe_load((ROOT / f"configs/{name}.yaml").read_text())
    model = {k: v for k, v in {**params["model"], **preset["model"]}.items() if k != "vocab_size"}
    assert build(ModelConfig, model, "model").block_diffusion == preset["sample"]["block_tokens"]


def test_a_block_diffusion_model_trains_scores_and_samples(tokens_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = build(ModelConfig, {"d_model": 32, "n_heads": 2, "n_blocks": 1, "stride": 2, "block": "mfa",
                                "block_diffusion": 8}, "model")
    train_cfg = build(TrainConfig, {"seq_len": 64, "batch_size": 4, "steps": 8, "lr": 3e-3, "warmup_steps": 2,
                                    "eval_every": 4, "eval_batches": 1, "checkpoint_every": 4, "log_every": 4,
                                    "num_threads": 1, "progress": False}, "train")
    train(BaseConfig(seed=7, device="cpu"), model, DiffusionConfig(), train_cfg,
          TrainPaths(tokens_dir, tmp_path / "models", tmp_path / "results"))
    c = load_composer(str(tmp_path / "models/model.pt"))
    assert c.model.cfg.block_diffusion == 8
    # The ELBO is the NLL averaged over random orders inside each block; a model trained 8 steps
    # prefers no order yet, so left to right lands near it.
    metrics = json.loads((tmp_path / "results" / "metrics.json").read_text())
    ltr = metrics["val_bits_per_note_left_to_right"]
    assert ltr > 0 and ltr == pytest.approx(metrics["val_bits_per_note"], rel=0.05)
    vocab = c.tokenizer.vocab
    prefix = [vocab["Bar_None"], vocab["Position_0"], vocab["Pitch_60"]]
    fixed = torch.full((40,), -1)
    fixed[:3] = torch.tensor(prefix)
    kw = dict(steps=10, method="confidence", correct_rounds=8, constraints=constraints_for(c, None, None))
    a = c.generate(2, 40, generator=torch.Generator().manual_seed(0), fixed=fixed, **kw)
    b = c.generate(2, 40, generator=torch.Generator().manual_seed(0), fixed=fixed, **kw)
    assert [p.ids for p in a] == [p.ids for p in b]  # seeded
    assert all(p.ids[:3] == prefix for p in a)  # fixed tokens kept
    # 5 blocks x 2 steps, 4 calls that cache the finished blocks (smdim.model.block_cache), and no
    # corrector call
    assert all(p.network_calls == 14 for p in a)
