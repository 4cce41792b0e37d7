"""CPU scans, forward + backward time per length: fused C++ kernel, chunked PyTorch scan, reference."""

from __future__ import annotations

import math
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


def predict_reference(done: list[tuple[int, float]], length: int) -> tuple[float | None, float]:
    """Predicted reference seconds at `length` from the measured (length, seconds) pairs, and the
    power of L used: that of the last two measurements, at least 2. The reference is a Python loop
    over positions whose backward scatters each step into a full-length gradient, so its time grows
    at least quadratically (measured here: x4.9 from 1024 to 2048, x22 from 2048 to 4096)."""
    if not done:
        return None, 2.0
    power = 2.0
    if len(done) >= 2:
        (l1, t1), (l2, t2) = done[-2:]
        power = max(power, math.log(t2 / t1) / math.log(l2 / l1))
    last_l, last_t = done[-1]
    return last_t * (length / last_l) ** power, power


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
    ref_done: list[tuple[int, float]] = []  # (length, seconds) of every measured reference
    kernel = kernel_name()  # builds the fused kernel (or notes the fallback) before any timing
    for length in tqdm(sorted(cfg.scan_lengths), desc="scan speed", disable=not progress):
        fast, fused = float("inf"), float("inf")
        for _ in range(3):  # interleaved, so a burst of load on this shared machine hits both
            fast = min(fast, time_scan(selective_scan_fast, b, d, n, length))
            fused = min(fused, time_scan(selective_scan_cpu, b, d, n, length))
        row: dict[str, Any] = {"fused_s": fused, "fast_s": fast, "fused_vs_fast": fast / fused,
                               "load_1m": os.getloadavg()[0]}
        predicted, power = predict_reference(ref_done, length)
        if predicted is None or predicted <= cfg.scan_ref_budget:
            ref = time_scan(selective_scan_ref, b, d, n, length)
            ref_done.append((length, ref))
            row.update(ref_s=ref, ref_status="measured")
        else:
            row.update(ref_s=predicted, ref_status=(
                f"extrapolated as L^{power:.2f} from L={ref_done[-1][0]} (over scan_ref_budget; a lower bound)"))
        row.update(speedup=row["ref_s"] / fast, fused_speedup=row["ref_s"] / fused)
        rows[str(length)] = row
    return {"batch": b, "d_inner": d, "d_state": n, "threads": torch.get_num_threads(),
            "fused_kernel": kernel, "lengths": rows}
