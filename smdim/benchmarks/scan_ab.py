"""A/B of the CPU scans in one process: fused C++ kernel vs the chunked PyTorch scan.

`python -m smdim.benchmarks.scan_ab [--checkpoint models/model.pt] [--out results/benchmark/scan_ab.json]`
times, alternating A and B in rounds so that a burst of load on a shared machine hits both:
- the scan's forward + backward at the default training shape (batch 16, d_inner 256, L 64,
  d_state 16) and at (batch 1, d_inner 128, L 2048), with errors against the reference;
- training tokens/s of the default model from params.yaml (fwd + bwd + AdamW, 16 x 256 tokens);
- `smdim generate` of a 16-bar piece from a checkpoint, if one is given.
The chunked scan is swapped in by replacing the scan Mamba calls (`mamba.selective_scan_cpu`).
Every timing records the 1-minute load average next to it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import smdim.model.mamba as mamba_module
from smdim.config import build, load_params
from smdim.model.config import ModelConfig
from smdim.model.denoiser import Denoiser
from smdim.model.scan import selective_scan_fast, selective_scan_ref
from smdim.model.scan_cpu import kernel_name, selective_scan_cpu

SCANS = {"fused": selective_scan_cpu, "chunked": selective_scan_fast}


@contextlib.contextmanager
def mamba_scan(name: str) -> Iterator[None]:
    """Run Mamba layers with the named CPU scan inside the block."""
    saved = mamba_module.selective_scan_cpu
    mamba_module.selective_scan_cpu = SCANS[name]
    try:
        yield
    finally:
        mamba_module.selective_scan_cpu = saved


def _scan_inputs(batch: int, d: int, length: int, n: int = 16) -> list[torch.Tensor]:
    """Inputs like one Mamba layer's (dt ~ 0.02 after softplus, S4D-real A), grads enabled."""
    g = torch.Generator().manual_seed(length)
    u, z = torch.randn(batch, d, length, generator=g), torch.randn(batch, d, length, generator=g)
    delta = torch.randn(batch, d, length, generator=g) - 4.0
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1)
    B, C = torch.randn(batch, n, length, generator=g), torch.randn(batch, n, length, generator=g)
    D, bias = torch.ones(d), torch.randn(d) * 0.1
    return [t.requires_grad_() for t in (u, delta, A, B, C, D, z, bias)]


def _scan_step(fn: Callable, ins: list[torch.Tensor]) -> tuple[torch.Tensor, tuple]:
    u, delta, A, B, C, D, z, bias = ins
    out = fn(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True)
    return out, torch.autograd.grad(out.square().sum(), ins)


def _alternate(work: dict[str, Callable[[], float]], rounds: int) -> dict[str, Any]:
    """Run each callable once per round, alternating; min and median seconds, load averages."""
    times: dict[str, list[float]] = {k: [] for k in work}
    loads = []
    for _ in range(rounds):
        for name, fn in work.items():
            times[name].append(fn())
        loads.append(os.getloadavg()[0])
    out: dict[str, Any] = {
        k: {"min_s": min(v), "median_s": sorted(v)[len(v) // 2], "runs": len(v)} for k, v in times.items()
    }
    out["load_1m"] = [min(loads), max(loads)]
    return out


def scan_ab(shapes: list[tuple[int, int, int]], rounds: int) -> dict[str, Any]:
    """Fused vs chunked scan, fwd + bwd, per (batch, d_inner, L); max relative error vs reference."""
    result = {}
    for batch, d, length in shapes:
        ins = _scan_inputs(batch, d, length)

        def timed(fn: Callable, ins=ins) -> float:
            t0 = time.perf_counter()
            _scan_step(fn, ins)
            return time.perf_counter() - t0

        for fn in SCANS.values():
            timed(fn)  # warm-up
        row = _alternate({k: (lambda fn=fn: timed(fn)) for k, fn in SCANS.items()}, rounds)
        row["speedup_min"] = row["chunked"]["min_s"] / row["fused"]["min_s"]
        row["speedup_median"] = row["chunked"]["median_s"] / row["fused"]["median_s"]
        if length * batch <= 4096:  # the sequential reference is a Python loop over L
            ref_out, ref_grads = _scan_step(selective_scan_ref, ins)
            out, grads = _scan_step(selective_scan_cpu, ins)
            row["max_rel_err_vs_ref"] = max(
                float((a - b).abs().max() / b.abs().max())
                for a, b in zip([out.detach(), *grads], [ref_out.detach(), *ref_grads], strict=True)
            )
        result[f"b{batch}_d{d}_L{length}"] = row
    return result


def training_ab(params: dict[str, Any], vocab_size: int, rounds: int, steps: int) -> dict[str, Any]:
    """Tokens/s of the default model's training step (fwd + bwd + AdamW), fused vs chunked scan."""
    mcfg = build(ModelConfig, {**params.get("model", {}), "vocab_size": vocab_size}, "model")
    train = params.get("train", {})
    batch, seq_len = int(train.get("batch_size", 16)), int(train.get("seq_len", 256))
    torch.manual_seed(0)
    model = Denoiser(mcfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(4, vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    masked = torch.rand(batch, seq_len, generator=torch.Generator().manual_seed(1)) < 0.5
    x_t = torch.where(masked, torch.full_like(x, 3), x)

    def run(name: str) -> float:
        with mamba_scan(name):
            t0 = time.perf_counter()
            for _ in range(steps):
                logits = model(x_t)  # (B, L, V)
                loss = F.cross_entropy(logits[masked], x[masked])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            return (time.perf_counter() - t0) / steps

    for name in SCANS:
        run(name)  # warm-up (allocations, AdamW state, kernel load)
    row = _alternate({k: (lambda k=k: run(k)) for k in SCANS}, rounds)
    for k in SCANS:
        row[k]["tokens_per_s"] = batch * seq_len / row[k]["min_s"]
    row["speedup"] = row["fused"]["tokens_per_s"] / row["chunked"]["tokens_per_s"]
    row.update(batch=batch, seq_len=seq_len, steps_per_run=steps, block=mcfg.block)
    return row


def generate_ab(checkpoint: Path, rounds: int, tokens: int, bars: int) -> dict[str, Any]:
    """Seconds of `smdim generate --tokens T --bars 16` (whole command), fused vs chunked scan."""
    from smdim.cli import main as cli_main

    out_dir = Path(tempfile.mkdtemp(prefix="scan_ab_"))

    def run(name: str) -> float:
        with mamba_scan(name):
            t0 = time.perf_counter()
            cli_main(["generate", "--checkpoint", str(checkpoint), "--out", str(out_dir / f"{name}.mid"),
                      "--tokens", str(tokens), "--bars", str(bars)])
            return time.perf_counter() - t0

    for name in SCANS:
        run(name)
    row = _alternate({k: (lambda k=k: run(k)) for k in SCANS}, rounds)
    row["speedup"] = row["chunked"]["min_s"] / row["fused"]["min_s"]
    row["same_midi"] = (out_dir / "fused.mid").read_bytes() == (out_dir / "chunked.mid").read_bytes()
    row.update(tokens=tokens, bars=bars)
    return row


def main() -> None:
    """Parse arguments, run the A/B sections, print and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--checkpoint", type=Path, default=None, help="time `smdim generate` with it")
    parser.add_argument("--vocab-size", type=int, default=285, help="vocabulary of the timed model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    result: dict[str, Any] = {"kernel": kernel_name(), "threads": args.threads, "torch": torch.__version__,
                              "cpu_count": os.cpu_count(), "load_before": os.getloadavg()[0]}
    result["scan"] = scan_ab([(16, 256, 64), (1, 128, 2048)], rounds=args.rounds * 2)
    print(json.dumps(result["scan"], indent=1), flush=True)
    result["training"] = training_ab(params, args.vocab_size, rounds=args.rounds, steps=3)
    print(json.dumps(result["training"], indent=1), flush=True)
    if args.checkpoint is not None:
        result["generate"] = generate_ab(args.checkpoint, rounds=max(2, args.rounds // 2), tokens=1280, bars=16)
        print(json.dumps(result["generate"], indent=1), flush=True)
    result["load_after"] = os.getloadavg()[0]
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
