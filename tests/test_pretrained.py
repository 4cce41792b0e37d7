"""The shipped pretrained model: export (fp16 weights), and `smdim generate` with no training."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest
import torch
from conftest import BIN

from smdim.config import to_dict
from smdim.diffusion.config import DiffusionConfig
from smdim.errors import SmdimError
from smdim.model.checkpoint import load_checkpoint, read_payload, save_checkpoint
from smdim.model.config import ModelConfig
from smdim.model.denoiser import Denoiser
from smdim.pretrained import PRETRAINED, export
from smdim.sampling.composer import load_composer
from smdim.tokenization.config import TokenizeConfig
from smdim.tokenization.encode import encode_file
from smdim.tokenization.tokenizer import build_tokenizer
from smdim.tokenization.validity import token_error_rate


def test_export_halves_weights_and_loads_back(tmp_path):
    tok = build_tokenizer(TokenizeConfig())
    torch.manual_seed(0)
    model = Denoiser(ModelConfig(vocab_size=len(tok), d_model=32, n_heads=2, n_blocks=1, d_state=4))
    src = tmp_path / "model.pt"
    tok.save(tmp_path / "tokenizer.json")
    save_checkpoint(src, model, mask_id=tok["MASK_None"], step=7, diffusion=to_dict(DiffusionConfig()),
                    tokenizer=(tmp_path / "tokenizer.json").read_text())
    a, b = export(src, tmp_path / "a.pt"), export(src, tmp_path / "b.pt")
    assert hashlib.md5(a.read_bytes()).digest() == hashlib.md5(b.read_bytes()).digest()  # reproducible
    stored = read_payload(a, "cpu")["state_dict"]
    assert all(v.dtype == torch.float16 for v in stored.values() if v.is_floating_point())
    loaded, extra = load_checkpoint(a)
    assert extra["step"] == 7 and extra["weights_dtype"] == "float16"
    for name, p in loaded.state_dict().items():
        want = model.state_dict()[name]
        assert p.dtype == want.dtype  # back to the model's fp32 parameters
        torch.testing.assert_close(p, want.half().to(want.dtype) if want.is_floating_point() else want)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SmdimError, match="junk.pt"):
        export(tmp_path / "junk.pt", tmp_path / "c.pt")


def test_exporting_the_shipped_model_again_gives_the_same_bytes(tmp_path):
    """Its metadata is today's canonical form: a config field added since (with what its absence
    means) or a new default would change these bytes, and with them the reproduction promise."""
    again = export(PRETRAINED, tmp_path / "again.pt")
    assert again.read_bytes() == PRETRAINED.read_bytes()
    loaded, extra = load_checkpoint(again)
    assert loaded.cfg.refine_layers == 1 and loaded.cfg.collection_cond and loaded.cfg.self_cond
    # What `smdim generate` needs for its defaults: the preset's sampler, the collection and key shares.
    assert extra["sample_defaults"]["method"] == "cached" and extra["preset"] == "configs/cpu_1h.yaml"
    c = load_composer(str(PRETRAINED))
    assert len(c.collection_shares) == len(c.collections) == 3 and len(c.key_shares) == 4


def test_generate_without_training_uses_the_shipped_model(tmp_path):
    """Right after install, with no models/model.pt: one seeded piece that is valid REMI and music-like."""
    assert PRETRAINED.is_file() and PRETRAINED.stat().st_size < 12e6
    out = tmp_path / "piece.mid"
    env = dict(os.environ, SMDIM_LOG="WARNING")
    r = subprocess.run([str(BIN / "smdim"), "generate", "--out", str(out), "--bars", "8", "--seed", "3"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "pretrained model embedded_cpu_1h.pt" in r.stderr
    c = load_composer(str(PRETRAINED))
    ids = encode_file(c.tokenizer, out)
    pitches = [int(c.tokenizer[i].split("_")[1]) for i in ids if c.tokenizer[i].startswith("Pitch_")]
    assert len(pitches) >= 16
    assert max(pitches) - min(pitches) <= 36  # a melody or chorale range, not scattered notes
    assert token_error_rate(c.tokenizer, ids) <= 0.01
