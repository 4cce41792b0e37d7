"""The run's environment: the `base` section of params.yaml and the functions that apply it."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from smdim.errors import SmdimError


@dataclass(frozen=True)
class BaseConfig:
    seed: int = 1234  # one seed for splits, crops, weight init and sampling
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: Literal["float32", "bfloat16"] = "float32"  # bfloat16 = autocast on GPU
    workers: int = 2  # worker processes for conversion/tokenization/evaluation


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str, setting: str = "base.device") -> str:
    """'auto' -> 'cuda' when available else 'cpu'; an explicit 'cuda' without a GPU, or a name that
    is no device, is a one-line error naming `setting` (a params key, or a flag such as --device)."""
    flag = setting.startswith("-")
    given = f"{setting} {name}" if flag else f"{setting}={name}"
    fix = f"pass {setting}" if flag else f"set {setting}:"
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", name):
        raise SmdimError(f"{given} is not a device; {fix} auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SmdimError(f"{given} but no CUDA GPU is visible; {fix} auto or cpu")
    return name
