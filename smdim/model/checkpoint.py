"""Denoiser checkpoints: the config that rebuilds the model, its weights, and caller extras."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from smdim.config import build_saved, to_dict
from smdim.errors import ConfigError, SmdimError
from smdim.io import atomic_path
from smdim.model.config import ModelConfig
from smdim.model.denoiser import Denoiser

FORMAT = "smdim-denoiser/1"  # bump when the layout changes incompatibly


def save_checkpoint(path: str | os.PathLike, model: Denoiser, **extra: Any) -> None:
    """Write {format, config, state_dict, extra} atomically (extra values must be JSON-able)."""
    payload = {
        "format": FORMAT,
        "config": to_dict(model.cfg),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra,
    }
    save_atomic(payload, path)


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save through a temp file + rename; equal objects give byte-identical files.

    It saves to an open file, not to the temp path, because torch names the zip's inner folder
    after the path it is given: the random temp name made every save of the same weights differ,
    and DVC then saw a changed model (and re-ran sampling) where nothing had changed.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def read_payload(path: Path, map_location: str) -> Any:
    """torch.load with weights_only=True, every failure turned into one line naming the file."""
    if path.is_dir():
        inside = " (it holds model.pt)" if (path / "model.pt").is_file() else ""
        raise SmdimError(f"{path}: is a directory{inside}; pass the checkpoint file, e.g. {path / 'model.pt'}")
    if not path.is_file():
        raise SmdimError(f"{path}: checkpoint not found; run `dvc repro train` or fix the path")
    if not zipfile.is_zipfile(path):
        # torch's own message here is a long weights_only explanation cut mid-sentence.
        raise SmdimError(f"{path}: not a PyTorch checkpoint (truncated, or another kind of file); "
                         "use models/model.pt or retrain with `dvc repro train`")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise SmdimError(f"{path}: not a readable checkpoint ({reason}); delete it and retrain") from None


# ModelConfig fields newer than some checkpoints, with what their absence means (the layer did not
# exist yet), so a newer default never changes an older model's architecture.
ABSENT_MEANS = {"refine_layers": 0, "collection_cond": False, "self_cond": False, "block_diffusion": 0,
                "token_attention": 0, "attention_dropout": None}


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> tuple[Denoiser, dict]:
    """Rebuild the Denoiser from a checkpoint; returns (model in eval mode, extra dict)."""
    path = Path(path)
    payload = read_payload(path, map_location)
    if isinstance(payload, dict) and "fingerprint" in payload and "step" in payload:
        raise SmdimError(
            f"{path}: a training resume state, not a model; use models/model.pt (written when "
            "training finishes)"
        )
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise SmdimError(f"{path}: not an smdim denoiser checkpoint (expected format {FORMAT}); "
                         "use models/model.pt from the train stage")
    try:
        cfg = build_saved(ModelConfig, payload["config"], ABSENT_MEANS, f"{path}:config")
    except ConfigError as e:
        raise SmdimError(f"{e}; the checkpoint is from an incompatible smdim version") from None
    model = Denoiser(cfg)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        first = str(e).splitlines()[0][:160]
        raise SmdimError(f"{path}: weights do not match its config ({first})") from None
    model.to(map_location).eval()
    return model, dict(payload.get("extra", {}))
