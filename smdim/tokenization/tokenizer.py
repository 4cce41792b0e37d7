"""Build the REMI tokenizer from the `tokenize` params, or load the one saved with the shards."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import miditok

from smdim.errors import SmdimError

if TYPE_CHECKING:  # config.py builds a tokenizer to check tokenize.bpe_vocab: no import cycle
    from smdim.tokenization.config import TokenizeConfig


def build_tokenizer(cfg: TokenizeConfig) -> miditok.REMI:
    """A REMI tokenizer configured from params (merged tracks: no Program tokens)."""
    beat_res = {tuple(int(b) for b in k.split("_")): v for k, v in cfg.beat_res.items()}
    config = miditok.TokenizerConfig(
        pitch_range=tuple(cfg.pitch_range),
        beat_res=beat_res,
        num_velocities=cfg.num_velocities,
        use_velocities=cfg.use_velocities,
        special_tokens=list(cfg.special_tokens),
        use_tempos=cfg.use_tempos,
        use_time_signatures=cfg.use_time_signatures,
        # Unmerged tracks become one stream with Program tokens, so a piece is still one stream.
        use_programs=not cfg.merge_tracks,
        one_token_stream_for_programs=True,
    )
    return miditok.REMI(config)


def load_tokenizer(path: str | os.PathLike) -> miditok.REMI:
    """Load data/tokens/tokenizer.json (one-line error when missing or not a REMI tokenizer)."""
    path = Path(path)
    if not path.is_file():
        raise SmdimError(f"{path}: tokenizer not found; run `dvc repro tokenize`")
    try:
        return miditok.REMI(params=path)
    except Exception as e:  # miditok raises KeyError/JSONDecodeError/... on a bad file
        raise SmdimError(f"{path}: not a valid miditok REMI tokenizer ({type(e).__name__}); rerun tokenize") from None


def tokenizer_from_text(text: str) -> miditok.REMI:
    """Rebuild a tokenizer from the text of a tokenizer.json (e.g. stored in a checkpoint)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.json"
        path.write_text(text, encoding="utf-8")
        return load_tokenizer(path)

