"""Seconds per training step of a model config, measured on random tokens (for equal-time budgets)."""

from __future__ import annotations

import statistics
import time

import torch

from smdim.diffusion.config import DiffusionConfig
from smdim.diffusion.schedule import make_schedule
from smdim.model.config import ModelConfig
from smdim.model.denoiser import Denoiser
from smdim.model.scan_cpu import load_kernel
from smdim.training.config import TrainConfig
from smdim.training.objective import objective_loss, self_cond_share
from smdim.training.optim import make_optimizer


def step_seconds(model_cfg: ModelConfig, cfg: TrainConfig, repeats: int = 5, warmup: int = 3) -> float:
    """Median wall-clock seconds of one optimizer step (forward, loss, backward, AdamW) at
    train.batch_size x train.seq_len, with train.num_threads threads; ids 0/1/2 = PAD/BOS/MASK.
    A self-conditioned model's steps come in two kinds (with and without the no-grad first pass):
    each is timed and weighted by its share of training."""
    load_kernel()  # a first-use build of the fused scan (~40 s) must not land in the timing
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads)
    try:
        torch.manual_seed(0)
        model = Denoiser(model_cfg)
        opt = make_optimizer(model, cfg)
        schedule = make_schedule(DiffusionConfig())
        x = torch.randint(3, model_cfg.vocab_size, (cfg.batch_size, cfg.seq_len))
        pad_mask = torch.ones_like(x, dtype=torch.bool)  # training crops always carry one
        share = self_cond_share(model_cfg, training=True)
        seconds = 0.0
        for kind_share, weight in ((0.0, 1.0 - share), (1.0, share)):
            if weight == 0:
                continue
            times = []
            for _ in range(warmup + repeats):
                t0 = time.perf_counter()
                loss = objective_loss(model, model_cfg.causal, x, pad_mask, mask_id=2, bos_id=1, schedule=schedule,
                                      self_cond_share=kind_share, block_diffusion=model_cfg.block_diffusion)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                times.append(time.perf_counter() - t0)
            seconds += weight * statistics.median(times[warmup:])
        return seconds
    finally:
        torch.set_num_threads(threads)
