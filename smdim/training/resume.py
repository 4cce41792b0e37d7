"""Resume state (models/checkpoints/last.pt): atomic saves, safe loads, RNG state, param checks.

Everything saved is plain tensors, numbers, strings, lists and dicts so that
torch.load(weights_only=True) can read it back.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from smdim.errors import SmdimError
from smdim.model.checkpoint import save_atomic


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write the resume state atomically (temp file + rename: a kill never leaves half a file)."""
    save_atomic(state, path)


def load_state(path: str | Path) -> dict[str, Any] | None:
    """Read the resume state; None when absent, a one-line SmdimError when unreadable."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise SmdimError(
            f"{path}: corrupt or unreadable resume checkpoint ({reason}); delete it to train from scratch"
        ) from None
    if not isinstance(state, dict) or "step" not in state or "fingerprint" not in state:
        raise SmdimError(f"{path}: not a smdim resume checkpoint; delete it to train from scratch")
    return state


def rng_state() -> dict[str, Any]:
    """The global torch RNG states (CPU and every visible GPU) as tensors."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved (GPU states only when GPUs are visible)."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def normalise(value: Any) -> Any:
    """JSON round trip: tuples become lists so saved and current configs compare equal."""
    return json.loads(json.dumps(value, sort_keys=True))


def first_difference(saved: Any, current: Any, where: str = "") -> str | None:
    """Name the first differing key of two nested dicts ('train.lr: 0.001 -> 0.002'), or None."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for k in sorted(set(saved) | set(current), key=str):
            sub = f"{where}.{k}" if where else str(k)
            if k not in saved or k not in current:
                return f"{sub}: {saved.get(k, '(absent)')} -> {current.get(k, '(absent)')}"
            diff = first_difference(saved[k], current[k], sub)
            if diff:
                return diff
        return None
    return None if saved == current else f"{where}: {saved} -> {current}"
