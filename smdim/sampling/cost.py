"""What one piece costs to generate: wall-clock seconds and peak extra memory (batch 1)."""

from __future__ import annotations

import time

import torch

from smdim.peak_memory import PeakMemory
from smdim.sampling.composer import Composer


def generation_cost(composer: Composer, n_tokens: int, seed: int, **sampler_kw) -> dict[str, float]:
    """Generate one piece of n_tokens; returns {"tokens", "seconds", "peak_mb", "network_calls"}.

    peak_mb: memory above what the process held before (model weights excluded), see
    smdim.peak_memory; for streaming models it stays flat in the length, for diffusion it grows.
    """
    generator = torch.Generator(device=composer.device).manual_seed(seed)
    mem = PeakMemory(str(composer.device))
    mem.start()
    t0 = time.perf_counter()
    [piece] = composer.generate(1, n_tokens, generator=generator, batch_size=1, **sampler_kw)
    if composer.device.type == "cuda":
        torch.cuda.synchronize(composer.device)
    seconds = time.perf_counter() - t0
    return {"tokens": n_tokens, "seconds": seconds, "peak_mb": mem.peak_mb(),
            "network_calls": piece.network_calls}
