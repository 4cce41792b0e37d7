"""Stage `train`: data/tokens -> models/model.pt (+ models/checkpoints/last.pt), results/train/.

Re-running after a kill resumes from models/checkpoints/last.pt; after the last step it does
nothing. Multi-process: `torchrun --nproc-per-node N -m pipeline.train`.
"""

from __future__ import annotations

from pathlib import Path

from smdim.config import build, load_params
from smdim.diffusion.config import DiffusionConfig
from smdim.errors import run_stage
from smdim.model.config import ModelConfig
from smdim.runtime import BaseConfig
from smdim.training.config import TrainConfig
from smdim.training.loop import TrainPaths, train


def main() -> None:
    """Read params.yaml and train."""
    params = load_params()
    train(
        build(BaseConfig, params.get("base"), "base"),
        build(ModelConfig, params.get("model"), "model"),
        build(DiffusionConfig, params.get("diffusion"), "diffusion"),
        build(TrainConfig, params.get("train"), "train"),
        TrainPaths(tokens=Path("data/tokens"), models=Path("models"), results=Path("results/train")),
    )


if __name__ == "__main__":
    run_stage(main)
