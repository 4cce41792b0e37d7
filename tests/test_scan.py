"""The fast chunked selective scan equals the sequential reference (outputs and gradients)."""

from __future__ import annotations

import pytest
import torch

from smdim.model.mamba import HAS_MAMBA_KERNELS, Mamba
from smdim.model.scan import selective_scan_fast, selective_scan_ref

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}


# Tiny tensors: one thread is faster, and much faster on a shared machine (no OMP barriers).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_inputs(L: int, dtype: torch.dtype, batch: int = 2, dim: int = 6, n: int = 4, seed: int = 0):
    """Scan inputs with a spread of decays (some near 1, some strong) and grads enabled."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    u, delta, z = r(batch, dim, L), r(batch, dim, L), r(batch, dim, L)
    A = -torch.rand(dim, n, generator=g, dtype=dtype) * 4.0
    B, C = r(batch, n, L), r(batch, n, L)
    D, bias = r(dim), r(dim)
    return [t.requires_grad_() for t in (u, delta, A, B, C, D, z, bias)]


def run(fn, ins, **kw):
    u, delta, A, B, C, D, z, bias = ins
    out = fn(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True, **kw)
    grads = torch.autograd.grad(out.square().sum(), ins)
    return out, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("L", [1, 2, 7, 32, 33, 100, 257])
@pytest.mark.parametrize("chunk", [4, 32])
def test_fast_matches_reference(dtype, L, chunk):
    ins = make_inputs(L, dtype)
    ref_out, ref_grads = run(selective_scan_ref, ins)
    out, grads = run(selective_scan_fast, ins, chunk=chunk)
    assert out.dtype == dtype
    torch.testing.assert_close(out, ref_out, **TOL[dtype])
    for name, g, rg in zip("u delta A B C D z bias".split(), grads, ref_grads, strict=True):
        scale = rg.abs().max().clamp(min=1.0)
        torch.testing.assert_close(g / scale, rg / scale, **TOL[dtype], msg=f"grad {name}")


def test_optional_arguments_and_last_state():
    """No D, no z, no bias, no softplus (the plain recurrence) and the final state."""
    u, delta, A, B, C, *_ = make_inputs(45, torch.float64)
    delta = delta.detach().abs()
    ref, ref_last = selective_scan_ref(u, delta, A, B, C, return_last_state=True)
    out, last = selective_scan_fast(u, delta, A, B, C, return_last_state=True, chunk=8)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(last, ref_last)
    assert last.shape == (2, 6, 4)


def test_long_sequence_strong_decay_is_finite():
    """Cumulative decays far below float32's range must not overflow (segment products <= 1)."""
    ins = make_inputs(1500, torch.float32, batch=1, dim=3, n=2)
    with torch.no_grad():
        ins[1].add_(3.0)  # dt ~ 3, A down to -4: exp(-12) per step, exp(-18000) over the sequence
    out, grads = run(selective_scan_fast, ins)
    ref_out, _ = run(selective_scan_ref, ins)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_MAMBA_KERNELS), reason="needs CUDA + mamba_ssm")
def test_cpu_path_matches_mamba_ssm_kernels():
    """Same weights: our CPU scan path vs mamba_ssm's CUDA kernels, and its own Mamba module."""
    from mamba_ssm.modules.mamba_simple import Mamba as RefMamba

    torch.manual_seed(0)
    ours = Mamba(32, d_state=16, d_conv=4, expand=2)
    ref = RefMamba(32, d_state=16, d_conv=4, expand=2).cuda()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 100, 32)
    cpu = ours(x)
    gpu = ours.cuda()(x.cuda()).cpu()
    theirs = ref(x.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(theirs, cpu, rtol=2e-3, atol=2e-3)
