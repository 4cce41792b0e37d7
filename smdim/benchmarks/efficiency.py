"""Training-step time, peak memory, FLOPs and sampling time per block type and sequence length.

Each block type (a "row") runs in its own worker process (`python -m smdim.benchmarks.efficiency`)
so one row's memory or a crash cannot affect another. Inside the worker, lengths run in increasing
order; a cell whose time or memory, extrapolated from the previous cells, would exceed the budget
is skipped with the reason recorded (and so are the longer ones).

Memory (smdim.peak_memory): the RSS high-water mark above the RSS before the model was built,
which covers weights, gradients, AdamW state, activations and allocator slack of one training
step; on CUDA the allocator's `max_memory_allocated`.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import subprocess
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from smdim.benchmarks.config import BenchmarkConfig
from smdim.config import build, to_dict
from smdim.model.config import ModelConfig
from smdim.model.denoiser import Denoiser
from smdim.model.scan import scan_flops
from smdim.peak_memory import PeakMemory
from smdim.sampling.samplers import sample


def row_specs(cfg: BenchmarkConfig) -> list[dict[str, Any]]:
    """One row per block type at the configured stride, plus transformer at stride 1 if asked."""
    rows = [{"name": b, "block": b, "stride": cfg.stride} for b in cfg.blocks]
    if cfg.transformer_s1:
        rows.append({"name": "transformer_s1", "block": "transformer", "stride": 1})
    return rows


def model_config(cfg: BenchmarkConfig, row: dict[str, Any]) -> ModelConfig:
    """Equal width and depth for every row; only the block type and stride differ. No token-level
    refinement layer: the rows compare the paper's denoisers, and that layer costs every row the same."""
    return ModelConfig(
        vocab_size=cfg.vocab_size, block=row["block"], d_model=cfg.d_model, n_heads=cfg.n_heads,
        n_blocks=cfg.n_blocks, stride=row["stride"], d_state=cfg.d_state, expand=cfg.expand, refine_layers=0,
    )


def count_flops(mcfg: ModelConfig, batch: int, length: int) -> dict[str, float]:
    """FLOPs of one forward+backward: FlopCounterMode on the meta device + the scan's elementwise work."""
    with torch.device("meta"):
        model = Denoiser(mcfg)
        x = torch.zeros(batch, length, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).sum().backward()
    counted = counter.get_total_flops()
    n_scans = 0
    if mcfg.block != "transformer":
        per_block = mcfg.mamba_layers * (2 if mcfg.bidirectional else 1)
        n_scans = mcfg.n_blocks * per_block
    ls = -(-length // mcfg.stride)
    sf = scan_flops(batch, mcfg.expand * mcfg.d_model, ls, mcfg.d_state)
    scan = n_scans * (sf["forward"] + sf["backward"])
    return {"gflops": (counted + scan) / 1e9, "gflops_counted": counted / 1e9, "gflops_scan": scan / 1e9}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_cell(cfg: BenchmarkConfig, row: dict[str, Any], length: int, device: str) -> dict[str, Any]:
    """Time and memory of training steps (fwd + bwd + AdamW) and sampling time at one length."""
    mcfg = model_config(cfg, row)
    gen = torch.Generator().manual_seed(length)
    x = torch.randint(0, cfg.vocab_size - 1, (cfg.batch_size, length), generator=gen).to(device)
    mem = PeakMemory(device)
    mem.start()
    torch.manual_seed(0)
    model = Denoiser(mcfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for _ in range(1 + cfg.repeats):  # the first step (allocations, AdamW state) is a warm-up
        _sync(device)
        t0 = time.perf_counter()
        logits = model(x)  # (B, L, V)
        loss = F.cross_entropy(logits.flatten(0, 1), x.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        times.append(time.perf_counter() - t0)
        del logits, loss
    cell = {"step_s": min(times[1:]), "peak_mb": mem.peak_mb(), "status": "ok"}
    cell.update(count_flops(mcfg, cfg.batch_size, length))
    cell["params"] = sum(p.numel() for p in model.parameters())
    del opt
    if length <= cfg.sample_max_length:
        cell["sample_ms_per_token"] = _sample_time(model.eval(), cfg, length, device) * 1e3 / length
    return cell


def _sample_time(model: Denoiser, cfg: BenchmarkConfig, length: int, device: str) -> float:
    """Seconds for one ancestral sampling run of `length` tokens with sample_steps calls."""
    gen = torch.Generator(device=device).manual_seed(0)
    _sync(device)
    t0 = time.perf_counter()
    sample(model, length, mask_id=cfg.vocab_size - 1, steps=cfg.sample_steps, generator=gen)
    _sync(device)
    return time.perf_counter() - t0


def _predict(prev: list[tuple[int, float]], length: int) -> float:
    """Extrapolate a cost to `length` from earlier (length, cost) pairs, power law, exponent in [1, 2]."""
    (l1, c1) = prev[-1]
    if len(prev) >= 2 and prev[-2][1] > 0 and c1 > 0 and l1 != prev[-2][0]:
        p = math.log(c1 / prev[-2][1]) / math.log(l1 / prev[-2][0])
    else:
        p = 2.0  # one point only: assume the worst (quadratic attention)
    return c1 * (length / l1) ** min(max(p, 1.0), 2.0)


def run_row(cfg: BenchmarkConfig, row: dict[str, Any], device: str):
    """Yield (length, cell) for each length of one row, skipping cells over budget."""
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        yield from _row_cells(cfg, row, device)
    finally:
        torch.set_num_threads(threads)


def _row_cells(cfg: BenchmarkConfig, row: dict[str, Any], device: str):
    # Warm-up: first-use library initialisation (oneDNN, lazy imports) must not count as a cell.
    measure_cell(cfg, row, min(64, min(cfg.lengths)), device)
    done_t: list[tuple[int, float]] = []
    done_m: list[tuple[int, float]] = []
    skip_reason = None
    for length in sorted(cfg.lengths):
        if skip_reason is None and done_t:
            t_pred, m_pred = _predict(done_t, length), _predict(done_m, length)
            if t_pred > cfg.time_budget:
                skip_reason = f"predicted step {t_pred:.1f} s > time_budget {cfg.time_budget:g} s at L={length}"
            elif m_pred > cfg.memory_budget_gb * 1024:
                skip_reason = f"predicted peak {m_pred / 1024:.1f} GiB > memory_budget_gb {cfg.memory_budget_gb:g} at L={length}"
        if skip_reason is not None:
            yield length, {"status": "skipped", "reason": skip_reason}
            continue
        cell = measure_cell(cfg, row, length, device)
        done_t.append((length, cell["step_s"]))
        done_m.append((length, max(cell["peak_mb"], 1.0)))
        yield length, cell


def run_efficiency(cfg: BenchmarkConfig, device: str, progress: bool = True) -> dict[str, Any]:
    """Run every row in its own worker process; returns {row name: {length: cell}}."""
    rows = row_specs(cfg)
    results: dict[str, Any] = {}
    bar = tqdm(total=len(rows) * len(cfg.lengths), desc="benchmark cells", disable=not progress)
    for row in rows:
        bar.set_postfix_str(row["name"])
        cells: dict[str, Any] = {}
        spec = json.dumps({"config": to_dict(cfg), "row": row, "device": device})
        proc = subprocess.Popen(
            [sys.executable, "-m", "smdim.benchmarks.efficiency"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        proc.stdin.write(spec)
        proc.stdin.close()
        deadline = time.monotonic() + cfg.row_timeout
        _read_cells(proc, cells, bar, deadline, row["name"])
        for length in cfg.lengths:  # anything the worker did not report: say why
            if str(length) not in cells:
                reason = _worker_failure(proc)
                cells[str(length)] = {"status": "skipped", "reason": reason}
                bar.update(1)
        results[row["name"]] = {"block": row["block"], "stride": row["stride"], "cells": cells}
    bar.close()
    return results


def _read_cells(proc: subprocess.Popen, cells: dict, bar, deadline: float, name: str) -> None:
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            proc.kill()
            proc.wait()
            proc.timed_out = True
            return
        if not sel.select(timeout=min(remaining, 5.0)):
            continue
        line = proc.stdout.readline()
        if not line:
            proc.wait()
            return
        length, cell = json.loads(line)
        cells[str(length)] = cell
        bar.update(1)
        if cell["status"] == "ok":
            bar.write(f"{name} L={length}: step {cell['step_s']:.3f} s, peak {cell['peak_mb']:.0f} MiB")
        else:
            bar.write(f"{name} L={length}: skipped ({cell['reason']})")


def _worker_failure(proc: subprocess.Popen) -> str:
    if getattr(proc, "timed_out", False):
        return "row_timeout reached (worker stopped)"
    err = (proc.stderr.read() or "").strip().splitlines()
    last = err[-1][:200] if err else "no message"
    return f"worker exited with code {proc.returncode}: {last}"


def _worker() -> None:
    """Worker process entry: spec JSON on stdin, one JSON line [length, cell] per length on stdout."""
    spec = json.loads(sys.stdin.read())
    cfg = build(BenchmarkConfig, spec["config"], "benchmark")
    for length, cell in run_row(cfg, spec["row"], spec["device"]):
        print(json.dumps([length, cell]), flush=True)


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on (load average says whether the machine was shared)."""
    return {
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1m": os.getloadavg()[0],
    }


if __name__ == "__main__":
    _worker()
