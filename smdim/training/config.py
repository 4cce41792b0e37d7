"""The `train` section of params.yaml."""

from __future__ import annotations

from dataclasses import dataclass

# Fields that may change between a checkpoint and a resumed run without changing what is learned
# (everything else in TrainConfig makes the checkpoint "from other params": start fresh). `steps`
# is not one of them: the cosine lr schedule depends on it, so continuing a 500-step checkpoint to
# 2,000 steps learns something else than a fresh 2,000-step run, and the model would no longer
# follow from params.yaml alone (a sweep's arm would silently build on the workspace's checkpoint).
RESUMABLE_FIELDS = frozenset(
    {"eval_every", "eval_batches", "checkpoint_every", "log_every", "num_threads", "progress", "nll_draws"}
)


@dataclass(frozen=True)
class TrainConfig:
    seq_len: int = 256  # tokens per training window (paper: 2048)
    batch_size: int = 16  # windows per optimizer step, summed over all DDP ranks
    steps: int = 1360  # optimizer steps in total (another value starts fresh: the lr schedule depends on it)
    lr: float = 2e-3  # peak AdamW learning rate
    weight_decay: float = 0.01  # AdamW decay on matrices (never on norms, biases, embeddings)
    betas: tuple[float, ...] = (0.9, 0.98)  # AdamW (beta1, beta2)
    warmup_steps: int = 40  # linear warm-up from ~0 to lr (paper: 10k)
    min_lr_ratio: float = 0.1  # cosine decays lr to lr * min_lr_ratio at the last step
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping
    ema: float = 0.995  # EMA decay of the saved weights; 0 = off (docs/sampling_study.md, seventh round)
    eval_every: int = 100  # steps between validation losses (and at the last step)
    eval_batches: int = 4  # fixed validation batches per evaluation
    checkpoint_every: int = 50  # steps between resume checkpoints (models/checkpoints/last.pt)
    log_every: int = 10  # steps between loss/lr/tokens-per-second log lines
    num_threads: int = 2  # torch CPU threads (shared by the DDP ranks of one machine)
    progress: bool = True  # show a tqdm progress bar
    nll_draws: int = 8  # diffusion: times t per validation window for the final bits-per-note ELBO
    collection_dropout: float = 0.1  # model.collection_cond: share of windows trained unconditional

    def __post_init__(self) -> None:
        positive = ("seq_len", "batch_size", "steps", "eval_every", "eval_batches",
                    "checkpoint_every", "log_every", "num_threads", "nll_draws")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be > 0")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay} must be >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas={list(self.betas)} must be two numbers in [0, 1)")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be >= 0")
        if not 0 <= self.collection_dropout <= 1:
            raise ValueError(f"collection_dropout={self.collection_dropout} must be in [0, 1]")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip={self.grad_clip} must be >= 0 (0 = off)")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema={self.ema} must be in [0, 1) (0 = off)")
