"""Which typed config owns each top-level section of params.yaml.

The dataclasses' defaults are the project's defaults; `tests/test_config.py` proves params.yaml
lists exactly these sections, every field of each, with the same values.
"""

from __future__ import annotations

from smdim.benchmarks.config import BenchmarkConfig
from smdim.data.config import DownloadConfig
from smdim.diffusion.config import DiffusionConfig
from smdim.metrics.config import EvaluateConfig
from smdim.model.config import ModelConfig
from smdim.report.config import ReportConfig
from smdim.runtime import BaseConfig
from smdim.sampling.config import SampleConfig
from smdim.tokenization.config import TokenizeConfig
from smdim.training.config import TrainConfig

SECTIONS: dict[str, type] = {
    "base": BaseConfig,
    "download": DownloadConfig,
    "tokenize": TokenizeConfig,
    "model": ModelConfig,
    "diffusion": DiffusionConfig,
    "train": TrainConfig,
    "sample": SampleConfig,
    "evaluate": EvaluateConfig,
    "report": ReportConfig,
    "benchmark": BenchmarkConfig,
}

# Fields that params.yaml leaves out on purpose: filled in at run time, not chosen by the user.
RUNTIME_FIELDS = {"model": {"vocab_size", "n_collections"}}
