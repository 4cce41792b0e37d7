"""Autoregressive objective: causality, streaming == full forward, the loss by hand, bits per note,
streaming generation (fixed tokens, seeds, grammar), and a tiny training run end to end."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from smdim.autoregressive.loss import autoregressive_loss, shifted_input
from smdim.config import build
from smdim.diffusion.config import DiffusionConfig
from smdim.diffusion.schedule import make_schedule
from smdim.errors import SmdimError
from smdim.model.config import BLOCK_TYPES, ModelConfig
from smdim.model.denoiser import Denoiser, StreamState
from smdim.runtime import BaseConfig
from smdim.sampling.composer import constraints_for, load_composer
from smdim.sampling.streaming import generate_autoregressive
from smdim.sampling.truncation import truncate
from smdim.tokenization.validity import token_error_rate
from smdim.training.config import TrainConfig
from smdim.training.likelihood import validation_likelihood
from smdim.training.loop import TrainPaths, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
V = 40


def causal_model(**kw) -> Denoiser:
    base = dict(vocab_size=V, d_model=32, n_heads=2, n_blocks=2, stride=4, d_state=4,
                objective="autoregressive")
    torch.manual_seed(0)
    return Denoiser(ModelConfig(**{**base, **kw})).eval()


@pytest.mark.parametrize("block", BLOCK_TYPES)
@pytest.mark.parametrize("stride", [1, 3, 4])
def test_changing_token_j_changes_no_earlier_prediction(block, stride):
    model = causal_model(block=block, stride=stride)
    x = torch.randint(0, V, (2, 29), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
        for j in (0, 5, 13, 28):
            y = x.clone()
            y[:, j] = (y[:, j] + 7) % V
            out = model(y)
            assert torch.equal(out[:, :j], ref[:, :j]), f"token {j} leaked into earlier outputs"
            assert not torch.allclose(out[:, j], ref[:, j]), "output j must see token j"


def test_the_diffusion_denoiser_is_not_causal():
    torch.manual_seed(0)
    model = Denoiser(ModelConfig(vocab_size=V, d_model=32, n_heads=2, n_blocks=1, d_state=4)).eval()
    x = torch.randint(0, V, (1, 16))
    y = x.clone()
    y[0, 12] = (y[0, 12] + 1) % V
    with torch.no_grad():
        assert not torch.allclose(model(x)[:, :4], model(y)[:, :4])


@pytest.mark.parametrize("block", ["mfa", "mamba", "transformer", "mfa2sa"])
@pytest.mark.parametrize("stride", [1, 4])
def test_streaming_equals_the_full_forward(block, stride):
    """Recurrent Mamba state and the attention KV cache are exact: step i == forward[:, i]."""
    model = causal_model(block=block, stride=stride, mamba_layers=2)
    x = torch.randint(0, V, (3, 37), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(x)
        state = StreamState()
        steps = torch.stack([model.step(x[:, i], state) for i in range(x.shape[1])], dim=1)
    torch.testing.assert_close(steps, full, rtol=1e-4, atol=1e-5)


def test_streaming_with_a_collection_equals_the_full_forward():
    """A conditioned causal model: each row's collection vector enters step() as it enters forward()."""
    model = causal_model(block="mfa", stride=4, collection_cond=True, n_collections=2)
    x = torch.randint(0, V, (3, 21), generator=torch.Generator().manual_seed(4))
    c = torch.tensor([1, 2, 0])
    with torch.no_grad():
        full = model(x, collection=c)
        state = StreamState(collection=c)
        steps = torch.stack([model.step(x[:, i], state) for i in range(x.shape[1])], dim=1)
        assert not torch.allclose(full, model(x))
    torch.testing.assert_close(steps, full, rtol=1e-4, atol=1e-5)


def test_step_refuses_a_diffusion_model():
    model = Denoiser(ModelConfig(vocab_size=V, d_model=32, n_heads=2, n_blocks=1, d_state=4))
    with pytest.raises(SmdimError, match="autoregressive"):
        model.step(torch.zeros(1, dtype=torch.long), StreamState())


def test_loss_matches_a_hand_computed_value():
    """Toy model: fixed logits per previous token; loss = mean of -log softmax(row[prev])[next]."""
    table = torch.randn(V, V, generator=torch.Generator().manual_seed(3))

    class Bigram(torch.nn.Module):
        def forward(self, x, t, pad_mask=None):
            return table[x]  # (B, L, V): depends on the current input token only

    mask_id, bos = V - 1, V - 2
    x0 = torch.tensor([[3, 5, 7, 0], [4, 4, 2, 9]])
    pad = torch.tensor([[True, True, True, False], [True, True, True, True]])
    loss, _ = autoregressive_loss(Bigram(), x0, bos_id=bos, mask_id=mask_id, pad_mask=pad)
    expected, n = 0.0, 0
    for row, mask in zip(x0.tolist(), pad.tolist(), strict=True):
        prev = bos
        for tok, real in zip(row, mask, strict=True):
            if real:
                logits = table[prev].clone()
                logits[mask_id] = -math.inf
                expected -= float(F.log_softmax(logits, -1)[tok])
                n += 1
            prev = tok
    assert float(loss) == pytest.approx(expected / n, rel=1e-6)
    assert shifted_input(x0, bos)[:, 0].eq(bos).all() and torch.equal(shifted_input(x0, bos)[:, 1:], x0[:, :-1])


def test_uniform_model_gives_log_v_bits_under_both_objectives():
    """A model with constant logits: exact AR NLL and the diffusion ELBO are both log2(V - 1)
    bits per token (MASK excluded); notes_per_id turns tokens into notes."""

    class Uniform(torch.nn.Module):
        def __init__(self, causal):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.cfg = ModelConfig(vocab_size=V, objective="autoregressive" if causal else "diffusion")

        def forward(self, x, t, pad_mask=None):
            return torch.zeros(*x.shape, V) + self.w

    pieces = [np.arange(1, 30) % (V - 2), np.arange(5, 200) % (V - 2)]
    notes = np.zeros(V, dtype=np.int64)
    notes[: V // 2] = 1
    kw = dict(seq_len=64, notes_per_id=notes, mask_id=V - 1, bos_id=V - 2, pad_id=0,
              schedule=make_schedule(DiffusionConfig(weighting="uniform")), draws=64, seed=0)
    exact = validation_likelihood(Uniform(True), pieces, **kw)
    bound = validation_likelihood(Uniform(False), pieces, **kw)
    assert exact.exact and not bound.exact
    assert exact.tokens == bound.tokens == 29 + 195
    assert exact.bits_per_token == pytest.approx(math.log2(V - 1), rel=1e-6)
    assert bound.bits_per_token == pytest.approx(math.log2(V - 1), rel=0.05)  # a Monte Carlo estimate
    n_notes = sum(int(notes[p].sum()) for p in pieces)
    assert exact.bits_per_note == pytest.approx(exact.bits_per_token * exact.tokens / n_notes)


def test_a_self_conditioned_model_is_scored_with_its_own_prediction_as_prev():
    """model.self_cond: each ELBO draw calls the net twice on the same x_t, the second time with
    the first call's softmax as `prev`, the way the samplers run it (a net that would score the
    same without `prev` would hide a model that never learned to read it)."""

    class Recorder(torch.nn.Module):
        self_conditioned = True

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.cfg = ModelConfig(vocab_size=V)
            self.calls = []

        def forward(self, x, t, pad_mask=None, prev=None):
            self.calls.append((x.clone(), prev))
            logits = torch.zeros(*x.shape, V)
            if prev is not None:  # trusts its first guess: the right token gets all the mass
                logits = logits + 30.0 * prev
            logits[..., 3] += 5.0  # the first guess favours token 3
            return logits

    pieces = [np.full(40, 3), np.full(20, 3)]
    kw = dict(seq_len=64, notes_per_id=np.ones(V, dtype=np.int64), mask_id=V - 1, bos_id=None, pad_id=0,
              schedule=make_schedule(DiffusionConfig(weighting="uniform")), draws=4, seed=0)
    net = Recorder()
    two_calls = validation_likelihood(net, pieces, **kw)
    assert len(net.calls) == 2 * 4
    for (x_first, prev_first), (x_second, prev) in zip(net.calls[::2], net.calls[1::2], strict=True):
        assert prev_first is None and torch.equal(x_first, x_second)
        assert prev is not None and torch.allclose(prev.sum(-1), torch.ones(prev.shape[:2]))
        assert float(prev[..., V - 1].max()) == 0.0  # MASK is never predicted
    net.self_conditioned = False
    one_call = validation_likelihood(net, pieces, **kw)
    assert two_calls.bits_per_token < 0.01 < one_call.bits_per_token


def test_truncation_keeps_top_k_and_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(truncate(logits, top_k=2)).tolist() == [[False, False, True, True]]
    assert torch.isinf(truncate(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(truncate(logits, top_p=0.85)).tolist() == [[False, False, False, True]]
    assert torch.isinf(truncate(logits, top_p=0.1)).tolist() == [[False, True, True, True]]
    assert torch.equal(truncate(logits), logits)


# ---------------------------------------------------------------- a tiny trained model
TINY_AR = {"d_model": 32, "n_heads": 2, "n_blocks": 1, "stride": 2, "d_state": 4, "expand": 1,
           "ffn_mult": 2, "objective": "autoregressive", "block": "mfa"}


@pytest.fixture(scope="module")
def ar_checkpoint(tokens_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ar")
    cfg = TrainConfig(seq_len=64, batch_size=4, steps=30, lr=3e-3, warmup_steps=5, eval_every=15,
                      eval_batches=2, checkpoint_every=15, log_every=5, num_threads=1, progress=False)
    result = train(BaseConfig(seed=7, device="cpu"), build(ModelConfig, TINY_AR, "model"), DiffusionConfig(),
                   cfg, TrainPaths(tokens_dir, root / "models", root / "results"))
    assert result.ran and math.isfinite(result.val_loss)
    return root / "models" / "model.pt"


def test_training_writes_bits_per_note(ar_checkpoint):
    import json

    metrics = json.loads((ar_checkpoint.parent.parent / "results" / "metrics.json").read_text())
    assert 0 < metrics["val_bits_per_token"] < metrics["val_bits_per_note"] < 50


def test_generation_keeps_fixed_tokens_is_seeded_and_follows_the_grammar(ar_checkpoint):
    c = load_composer(str(ar_checkpoint))
    assert c.causal and c.bos_id == c.tokenizer["BOS_None"]
    constraints = constraints_for(c, None, None)
    prompt = [c.tokenizer[t] for t in ("Bar_None", "Position_0", "Pitch_60", "Velocity_63", "Duration_1.0.8")]
    fixed = torch.full((48,), -1, dtype=torch.long)
    fixed[:5] = torch.tensor(prompt)
    fixed[30] = c.tokenizer["Bar_None"]  # a fixed token later on is fed, not drawn

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return generate_autoregressive(c.model, 48, bos_id=c.bos_id, mask_id=c.mask_id, batch_size=3,
                                       generator=g, fixed=fixed, constraints=constraints, top_p=0.95)

    x, stats = run(0)
    assert stats["network_calls"] == 48
    assert torch.equal(x[:, :5], fixed[:5].expand(3, 5)) and (x[:, 30] == fixed[30]).all()
    assert torch.equal(run(0)[0], x) and not torch.equal(run(1)[0], x)
    assert not (x == c.mask_id).any() and not (x == c.bos_id).any()
    for row in x.tolist():
        # The grammar holds wherever the model chose; the forced Bar at 30 may cut a note short,
        # so check up to the last complete note before it.
        end = max(i for i in range(30) if c.tokenizer[row[i]].startswith("Duration_")) + 1
        assert end > 5 and token_error_rate(c.tokenizer, row[:end]) == 0.0


def test_composer_generates_through_the_same_interface(ar_checkpoint):
    c = load_composer(str(ar_checkpoint))
    g = torch.Generator().manual_seed(0)
    # Diffusion-only options (method, steps) are accepted and ignored.
    pieces = c.generate(2, 32, generator=g, method="confidence", steps=4, temperature=0.9,
                        constraints=constraints_for(c, [55, 80], None, scale="C:major"))
    for p in pieces:
        pitches = [int(c.tokenizer[i].split("_")[1]) for i in p.ids if c.tokenizer[i].startswith("Pitch_")]
        assert p.network_calls == 32 and all(55 <= q <= 80 and q % 12 in (0, 2, 4, 5, 7, 9, 11) for q in pitches)


def test_autoregressive_objective_needs_bos(tokens_dir, tmp_path):
    import miditok

    tokens = tmp_path / "tokens"
    tokens.mkdir()
    for f in tokens_dir.iterdir():
        (tokens / f.name).write_bytes(f.read_bytes())
    miditok.REMI(miditok.TokenizerConfig(special_tokens=["PAD", "MASK"])).save(tokens / "tokenizer.json")
    cfg = dataclasses.replace(TrainConfig(), steps=1, progress=False, num_threads=1)
    with pytest.raises(SmdimError, match="BOS"):
        train(BaseConfig(device="cpu"), build(ModelConfig, TINY_AR, "model"), DiffusionConfig(), cfg,
              TrainPaths(tokens, tmp_path / "models", tmp_path / "results"))


def test_autoregressive_model_on_bpe_tokens(tokens_dir, tmp_path):
    """Train on BPE ids, generate under the grammar through BPE, count bits per note through it."""
    import json

    import pyarrow.parquet as pq

    from smdim.tokenization.bpe import encode_bpe, expand_ids, note_counts, train_bpe
    from smdim.tokenization.tokenizer import load_tokenizer

    tokens = tmp_path / "tokens"
    tokens.mkdir()
    tok = load_tokenizer(tokens_dir / "tokenizer.json")
    table = pq.read_table(next(tokens_dir.glob("*.parquet")))
    rows = table.to_pylist()
    train_bpe(tok, [r["tokens"] for r in rows if r["split"] == "train"], 600)
    encoded = encode_bpe(tok, [r["tokens"] for r in rows])
    assert sum(map(len, encoded)) < 0.8 * sum(len(r["tokens"]) for r in rows)  # BPE compresses
    tok.save(tokens / "tokenizer.json")
    pq.write_table(table.set_column(table.schema.get_field_index("tokens"), "tokens",
                                    pa_list(encoded)), tokens / "shard-00000.parquet")
    cfg = TrainConfig(seq_len=64, batch_size=4, steps=10, warmup_steps=2, eval_every=10, eval_batches=1,
                      checkpoint_every=10, log_every=5, num_threads=1, progress=False)
    train(BaseConfig(seed=7, device="cpu"), build(ModelConfig, TINY_AR, "model"), DiffusionConfig(), cfg,
          TrainPaths(tokens, tmp_path / "models", tmp_path / "results"))
    metrics = json.loads((tmp_path / "results" / "metrics.json").read_text())
    assert metrics["val_bits_per_note"] > metrics["val_bits_per_token"] > 0  # fewer notes than BPE ids
    c = load_composer(str(tmp_path / "models" / "model.pt"))
    assert len(c.tokenizer) == 600 and int(note_counts(c.tokenizer).sum()) > 0
    [piece] = c.generate(1, 48, generator=torch.Generator().manual_seed(0), constraints=constraints_for(c, None, None))
    base = expand_ids(c.tokenizer, piece.ids)
    assert len(base) > 48  # generated ids are BPE merges
    end = max(i for i, t in enumerate(base) if c.tokenizer[t].startswith("Duration_")) + 1
    assert token_error_rate(c.tokenizer, piece.ids) <= 3 / len(base) and end > 3


def pa_list(pieces):
    import pyarrow as pa

    return pa.array(pieces, pa.list_(pa.int32()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (+ mamba_ssm for its step kernel)")
def test_streaming_on_gpu_matches_the_cpu_stream():
    """Mamba.step on CUDA (mamba_ssm's selective_state_update when installed) == our CPU step."""
    model = causal_model(block="mfa", stride=1)
    x = torch.randint(0, V, (2, 40), generator=torch.Generator().manual_seed(4))

    def stream(m, ids):
        state = StreamState()
        with torch.no_grad():
            return torch.stack([m.step(ids[:, i], state) for i in range(ids.shape[1])], dim=1).cpu()

    cpu = stream(model, x)
    gpu = stream(model.cuda(), x.cuda())
    torch.testing.assert_close(gpu, cpu, rtol=2e-3, atol=2e-3)
    with torch.no_grad():
        torch.testing.assert_close(model(x.cuda()).cpu(), cpu, rtol=2e-3, atol=2e-3)
