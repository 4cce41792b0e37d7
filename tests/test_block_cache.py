"""Block diffusion one block at a time (smdim.model.block_cache) against the whole-window forward,
and the block sampler with and without the cache."""

from __future__ import annotations

import pytest
import torch

from smdim.diffusion.config import DiffusionConfig
from smdim.diffusion.schedule import make_schedule
from smdim.errors import SmdimError
from smdim.model.block_cache import BlockCache, block_logits
from smdim.model.collection import WithCollection
from smdim.model.config import ModelConfig
from smdim.model.denoiser import Denoiser
from smdim.sampling import samplers
from smdim.sampling.samplers import sample_with_stats

pytestmark = pytest.mark.usefixtures("one_torch_thread")
V, MASK = 40, 3


def block_model(block: int, stride: int, kind: str, **kw) -> Denoiser:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V, d_model=32, n_heads=2, n_blocks=2, stride=stride, block=kind,
                      block_diffusion=block, n_collections=2, **kw)
    net = Denoiser(cfg).double().eval()
    with torch.no_grad():  # a trained net's weights, not init's zeros, so every path carries signal
        for p in net.parameters():
            p.normal_(0, 0.3)
    return net


# The last block is short wherever L is not a multiple of the block; refine_kernel 11 over 4-token
# blocks reaches past the block before.
# token_attention adds token-resolution layers whose cached keys are x0's tokens.
@pytest.mark.parametrize("block,stride,kind,refine_layers,refine_kernel,L,token_attention", [
    (8, 2, "transformer", 1, 9, 28, 0), (8, 4, "mfa", 1, 9, 32, 0), (4, 4, "mfa", 2, 11, 30, 0),
    (16, 1, "mamba", 1, 3, 40, 0), (8, 2, "mfa2sa", 0, 9, 24, 0), (8, 4, "transformer", 1, 9, 28, 2),
    (16, 4, "mfa", 0, 9, 40, 1)])
def test_one_block_at_a_time_gives_the_whole_window_s_logits(block, stride, kind, refine_layers,
                                                              refine_kernel, L, token_attention):
    net = block_model(block, stride, kind, refine_layers=refine_layers, refine_kernel=refine_kernel,
                      token_attention=token_attention)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(4, V, (2, L), generator=g)
    xt = x0.masked_fill(torch.rand(2, L, generator=g) < 0.5, MASK)
    c = torch.tensor([1, 2])
    with torch.no_grad():
        whole = net(xt, clean=x0, collection=c)  # (B, L, V)
        cache = BlockCache(collection=c)
        for a in range(0, L, block):
            b = min(a + block, L)
            torch.testing.assert_close(block_logits(net, cache, xt[:, a:b]), whole[:, a:b], rtol=0, atol=1e-12)
            # Committing runs the clean block as x0, which is what the window's x0 half computes
            # there; the window of clean tokens alone serves as both halves.
            clean = block_logits(net, cache, x0[:, a:b], commit=True)
            torch.testing.assert_close(clean, net(x0[:, :b], collection=c)[:, a:b], rtol=0, atol=1e-12)
            assert cache.pos == a + block


def test_a_block_must_start_at_a_block_edge_and_fit_in_a_block():
    net = block_model(8, 2, "mfa")
    with pytest.raises(SmdimError, match="blocks of model.block_diffusion = 8"):
        block_logits(net, BlockCache(), torch.full((1, 9), MASK))
    with pytest.raises(SmdimError, match="at position 4"):
        block_logits(net, BlockCache(pos=4), torch.full((1, 8), MASK))


@pytest.mark.parametrize(("kind", "order", "token_attention"), [
    ("mfa", "logprob", 0), ("transformer", "logprob", 0), ("transformer", "left_to_right", 0),
    ("transformer", "left_to_right", 1)])
def test_the_block_sampler_draws_the_same_tokens_with_and_without_the_cache(kind, order, token_attention,
                                                                             monkeypatch):
    net = WithCollection(block_model(8, 2, kind, token_attention=token_attention), torch.tensor([1, 2, 0]))
    fixed = torch.full((3, 36), -1)
    fixed[:, 10:13] = torch.tensor([7, 8, 9])  # fixed tokens stay, in a block of their own or not
    kw = dict(mask_id=MASK, steps=20, method="confidence", batch_size=3, temperature=0.9, fixed=fixed,
              block_tokens=8, confidence_noise=0.5, confidence=order)
    cached, stats = sample_with_stats(net, 36, generator=torch.Generator().manual_seed(3), **kw)
    monkeypatch.setattr(samplers, "_block_net", lambda denoiser: None)  # the whole window on every call
    whole, whole_stats = sample_with_stats(net, 36, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(cached, whole)
    assert (cached[:, 10:13] == torch.tensor([7, 8, 9])).all() and not (cached == MASK).any()
    # 5 blocks x 4 steps; the cache adds one call per finished block before the last, on one block
    assert whole_stats["network_calls"] == 20 and stats["network_calls"] == 24


@pytest.mark.parametrize("scale", [None, "auto"])
def test_under_the_remi_constraints_the_cached_sampler_s_windows_change_nothing(scale, monkeypatch):
    """With the grammar, the position order and a polyphony cap, the cached sampler works on the
    columns from the last onset boundary before the block (the key lock: all of them); it must
    draw what the whole-window sampler draws, fixed tokens right of a block included."""
    from smdim.sampling.constraints import make_constraints
    from smdim.tokenization.config import TokenizeConfig
    from smdim.tokenization.tokenizer import build_tokenizer

    tok = build_tokenizer(TokenizeConfig())
    vocab = tok.vocab
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(vocab), d_model=32, n_heads=2, n_blocks=1, stride=2, block="mfa",
                      block_diffusion=8, n_collections=2)
    net = Denoiser(cfg).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    c = make_constraints(tok, max_polyphony=3, pitch_range=[48, 84], scale=scale)
    fixed = torch.full((2, 64), -1)
    fixed[:, :3] = torch.tensor([vocab["Bar_None"], vocab["Position_0"], vocab["Pitch_60"]])
    fixed[1, 40] = vocab["Bar_None"]  # a fixed bar line three blocks ahead in one piece
    kw = dict(mask_id=vocab["MASK_None"], steps=32, method="confidence", batch_size=2, temperature=1.0,
              fixed=fixed, constraints=c, block_tokens=8, confidence_noise=1.0)
    net = WithCollection(net, torch.tensor([1, 2]))
    cached, _ = sample_with_stats(net, 64, generator=torch.Generator().manual_seed(5), **kw)
    monkeypatch.setattr(samplers, "_block_net", lambda denoiser: None)
    whole, _ = sample_with_stats(net, 64, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(cached, whole)
    assert cached[1, 40] == vocab["Bar_None"]


def test_the_left_to_right_likelihood_is_exact_and_the_sampler_s_view():
    """Block diffusion's left-to-right NLL (smdim.training.likelihood): over every sequence of 4
    tokens it sums to probability 1 (a likelihood, not a bound), and each token's share is what
    the sampler's view gives it: its block masked from it on, later blocks masked."""
    import itertools
    import math

    import numpy as np

    from smdim.training.likelihood import _left_to_right_nats, validation_likelihood

    torch.manual_seed(0)
    v, mask = 6, 5
    cfg = ModelConfig(vocab_size=v, d_model=16, n_heads=2, n_blocks=1, stride=1, block="transformer",
                      block_diffusion=2)
    net = Denoiser(cfg).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.5)
    every = torch.tensor(list(itertools.product(range(v - 1), repeat=4)))  # (625, 4), no MASK
    real = torch.ones_like(every, dtype=torch.bool)
    with torch.no_grad():
        total = sum(math.exp(-_left_to_right_nats(net, x[None], real[:1], 2, mask)) for x in every)
        assert total == pytest.approx(1.0, abs=1e-6)  # float32 logits, as in training
        x0 = every[[7, 300, 624]]
        ref = 0.0
        for i in range(4):  # one token at a time, as the sampler draws it
            x = x0.clone()
            x[:, i:] = mask
            logp = net(x).index_fill(-1, torch.tensor([mask]), float("-inf")).log_softmax(-1)
            ref -= float(logp[:, i].gather(-1, x0[:, i:i + 1]).sum())
        assert _left_to_right_nats(net, x0, real[:3], 2, mask) == pytest.approx(ref, rel=1e-6)
        nll = validation_likelihood(net, [w.numpy() for w in x0], seq_len=4, notes_per_id=np.ones(v, int),
                                    mask_id=mask, bos_id=None, pad_id=0,
                                    schedule=make_schedule(DiffusionConfig()), draws=2)
    assert nll.left_to_right_bits_per_note == pytest.approx(ref / math.log(2) / 12, rel=1e-6)
