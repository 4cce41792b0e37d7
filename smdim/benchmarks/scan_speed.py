"""CPU scans, forward + backward time per length: fused C++ kernel, chunked PyTorch scan, reference."""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from smdim.benchmarks.config import BenchmarkConfig
from smdim.model.scan import selective_scan_fast, selective_scan_ref
from smdim.model.scan_cpu import kernel_name, selective_scan_cpu


def _inputs(batch: int, d: int, n: int, length: int) -> list[torch.Tensor]:
    """Random scan inputs shaped like one Mamba layer's, with grads enabled."""
    g = torch.Generator().manual_seed(length)
    u = torch.randn(batch, d, length, generator=g)
    delta = torch.randn(batch, d, length, generator=g) - 4.0  # softplus -> dt ~ 0.02, as at init
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1)
    B = torch.randn(batch, n, length, generator=g)
    C = torch.randn(batch, n, length, generator=g)
    return [t.requires_grad_() for t in (u, delta, A, B, C)]


def time_scan(fn, batch: int, d: int, n: int, length: int) -> float:
    """Seconds for one forward + backward of `fn` (delta_softplus on, as in Mamba)."""
    ins = _inputs(batch, d, n, length)
    t0 = time.perf_counter()
    out = fn(*ins, delta_softplus=True)
    out.square().sum().backward()
    return time.perf_counter() - t0


def run_scan_speed(cfg: BenchmarkConfig, progress: bool = True) -> dict[str, Any]:
    """Per length: fused and fast times (min of 3), reference time if predicted within budget."""
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _scan_rows(cfg, progress)
    finally:
        torch.set_num_threads(threads)


def _scan_rows(cfg: BenchmarkConfig, progress: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

    b, d, n = cfg.scan_batch, cfg.scan_d_inner, cfg.d_state
    rows: dict[str, Any] = {}
    ref_done: tuple[int, float] | None = None
    kernel = kernel_name()  # builds the fused kernel (or notes the fallback) before any timing
    for length in tqdm(sorted(cfg.scan_lengths), desc="scan speed", disable=not progress):
        fast, fused = float("inf"), float("inf")
        for _ in range(3):  # interleaved, so a burst of load on this shared machine hits both
            fast = min(fast, time_scan(selective_scan_fast, b, d, n, length))
            fused = min(fused, time_scan(selective_scan_cpu, b, d, n, length))
        row: dict[str, Any] = {"fused_s": fused, "fast_s": fast, "fused_vs_fast": fast / fused,
                               "load_1m": os.getloadavg()[0]}
        # The reference is a Python loop over positions: its time is linear in L.
        predicted = None if ref_done is None else ref_done[1] * length / ref_done[0]
        if predicted is None or predicted <= cfg.scan_ref_budget:
            ref = time_scan(selective_scan_ref, b, d, n, length)
            ref_done = (length, ref)
            row.update(ref_s=ref, ref_status="measured")
        else:
            row.update(
                ref_s=predicted, ref_status=f"extrapolated linearly from L={ref_done[0]} (over scan_ref_budget)",
            )
        row.update(speedup=row["ref_s"] / fast, fused_speedup=row["ref_s"] / fused)
        rows[str(length)] = row
    return {"batch": b, "d_inner": d, "d_state": n, "threads": torch.get_num_threads(),
            "fused_kernel": kernel, "lengths": rows}
