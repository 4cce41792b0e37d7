"""The `base` section of params.yaml, shared by every stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class BaseConfig:
    seed: int = 1234  # one seed for splits, crops, weight init and sampling
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: Literal["float32", "bfloat16"] = "float32"  # bfloat16 = autocast on GPU
    workers: int = 2  # worker processes for conversion/tokenization/evaluation
