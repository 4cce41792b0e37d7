"""The fast chunked scan and the fused C++ scan equal the sequential reference (outputs, gradients)."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
import torch.utils.cpp_extension

import smdim.model.mamba as mamba_module
from smdim.model import scan_cpu
from smdim.model.mamba import BiMamba
from smdim.model.scan import selective_scan_fast, selective_scan_ref
from smdim.model.scan_cpu import selective_scan_cpu

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}
# The fused kernel keeps the whole recurrence in one dtype pass: relative 1e-5 in float32.
TOL_FUSED = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-10, atol=1e-12)}
GRAD_NAMES = "u delta A B C D z delta_bias".split()


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


@pytest.fixture(scope="module")
def kernel():
    """The compiled fused kernel; skipped only on machines without a C++ compiler."""
    module = scan_cpu.load_kernel()
    if module is None:
        if shutil.which("c++") or shutil.which("g++"):
            pytest.fail("a C++ compiler is present but the fused scan kernel did not build")
        pytest.skip("no C++ compiler: the fused scan falls back to the chunked scan")
    return module


def assert_matches(out, grads, ref_out, ref_grads, tol):
    """Output and every gradient close, relative to each tensor's largest reference value."""
    for name, g, rg in zip(["out", *GRAD_NAMES], [out, *grads], [ref_out, *ref_grads], strict=True):
        scale = rg.abs().max().clamp(min=1.0)
        torch.testing.assert_close(g / scale, rg / scale, **tol, msg=f"grad {name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("L", [1, 2, 7, 33, 100, 257])
@pytest.mark.parametrize("n", [4, 16, 20], ids=["n4", "n16", "n20"])  # padded to 8, exact, padded
def test_fused_matches_reference(kernel, dtype, L, n):
    ins = make_inputs(L, dtype, n=n)
    ref_out, ref_grads = run(selective_scan_ref, ins)
    out, grads = run(selective_scan_cpu, ins)
    assert out.dtype == dtype
    assert_matches(out, grads, ref_out, ref_grads, TOL_FUSED[dtype])


def test_fused_splits_work_over_threads(kernel):
    """Two threads and an odd batch: channels are split into groups whose dB, dC are summed."""
    ins = make_inputs(50, torch.float64, batch=3, dim=10, n=16)
    ref_out, ref_grads = run(selective_scan_ref, ins)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out, grads = run(selective_scan_cpu, ins)
    finally:
        torch.set_num_threads(threads)
    assert_matches(out, grads, ref_out, ref_grads, TOL_FUSED[torch.float64])


@pytest.mark.parametrize("fn", [selective_scan_fast, selective_scan_cpu], ids=["fast", "fused"])
def test_optional_arguments_and_last_state(fn):
    """No D, no z, no bias, no softplus (the plain recurrence) and the final state."""
    u, delta, A, B, C, *_ = make_inputs(45, torch.float64)
    delta = delta.detach().abs().requires_grad_()
    ref, ref_last = selective_scan_ref(u, delta, A, B, C, return_last_state=True)
    out, last = fn(u, delta, A, B, C, return_last_state=True, chunk=8)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(last, ref_last)
    assert last.shape == (2, 6, 4)
    grads = torch.autograd.grad(out.square().sum(), (u, delta, A, B, C))
    ref_grads = torch.autograd.grad(ref.square().sum(), (u, delta, A, B, C))
    for name, g, rg in zip(GRAD_NAMES, grads, ref_grads, strict=False):
        torch.testing.assert_close(g, rg, msg=f"grad {name}")


@pytest.mark.parametrize("fn", [selective_scan_fast, selective_scan_cpu], ids=["fast", "fused"])
@pytest.mark.parametrize("L", [1, 5, 45])
def test_initial_state_and_a_differentiable_last_state(fn, L):
    """Scans chain: h0 starts the recurrence, and gradients flow from the last state back to h0."""
    ins = make_inputs(L, torch.float64, n=16)
    h0 = torch.randn(2, 6, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(9)).requires_grad_()
    u, delta, A, B, C, D, z, bias = ins
    kw = dict(z=z, delta_bias=bias, delta_softplus=True, return_last_state=True, initial_state=h0)
    results = []
    for f in (selective_scan_ref, fn):
        out, last = f(u, delta, A, B, C, D, **kw, **({} if f is selective_scan_ref else {"chunk": 4}))
        # the output's and the last state's gradients, and the last state's alone (out unused)
        both = torch.autograd.grad(out.square().sum() + last.sin().sum(), [*ins, h0], retain_graph=True)
        alone = torch.autograd.grad(last.sin().sum(), [*ins, h0], allow_unused=True)
        results.append((out, last, both, alone))
    (ref_out, ref_last, ref_both, ref_alone), (out, last, both, alone) = results
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(last, ref_last)
    for name, g, rg in zip([*GRAD_NAMES, "h0"], both, ref_both, strict=True):
        torch.testing.assert_close(g, rg, msg=f"grad {name}")
    for name, g, rg in zip([*GRAD_NAMES, "h0"], alone, ref_alone, strict=True):
        if rg is None or not rg.abs().any():  # D and z do not reach the state
            assert g is None or not g.abs().any(), f"grad {name} of the last state should be zero"
        else:
            torch.testing.assert_close(g, rg, msg=f"grad {name} (last state only)")
    without = fn(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True)
    assert not torch.allclose(without, out), "the initial state must change the output"


@pytest.mark.parametrize("fn", [selective_scan_fast, selective_scan_cpu], ids=["fast", "fused"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("segment", [1, 4, 9, 36])
def test_segments_restart_from_their_own_initial_states(fn, dtype, segment):
    """segment: one scan per `segment` positions in a row, each from its own h0, each with its own
    last state, all differentiable; the same as scanning every segment as a row of its own."""
    ins = make_inputs(36, dtype, n=16)
    nseg = 36 // segment
    g = torch.Generator().manual_seed(11)
    h0 = torch.randn(2, 6, nseg, 16, dtype=dtype, generator=g).requires_grad_()
    u, delta, A, B, C, D, z, bias = ins
    kw = dict(z=z, delta_bias=bias, delta_softplus=True, return_last_state=True, initial_state=h0,
              segment=segment)
    weights = torch.randn(2, 6, 36, dtype=dtype, generator=g), torch.randn(2, 6, nseg, 16, dtype=dtype, generator=g)
    results = []
    for f in (selective_scan_ref, fn):
        out, last = f(u, delta, A, B, C, D, **kw)
        assert last.shape == (2, 6, nseg, 16)
        loss = (out * weights[0]).sum() + (last * weights[1]).sum()
        results.append((out, last, torch.autograd.grad(loss, [*ins, h0])))
    (ref_out, ref_last, ref_grads), (out, last, grads) = results
    tol = TOL[dtype]
    torch.testing.assert_close(out, ref_out, **tol)
    torch.testing.assert_close(last, ref_last, **tol)
    for name, gr, rg in zip([*GRAD_NAMES, "h0"], grads, ref_grads, strict=True):
        scale = rg.abs().max().clamp(min=1.0)
        torch.testing.assert_close(gr / scale, rg / scale, **tol, msg=f"grad {name}")
    if segment < 36:  # the reference's segments are independent scans: check one against a plain scan
        lo, hi = segment, 2 * segment
        part = selective_scan_ref(u[..., lo:hi], delta[..., lo:hi], A, B[..., lo:hi], C[..., lo:hi], D,
                                  z=z[..., lo:hi], delta_bias=bias, delta_softplus=True,
                                  initial_state=h0[:, :, 1])
        torch.testing.assert_close(ref_out[..., lo:hi], part)
    with pytest.raises(ValueError, match="segment 5 must be >= 1 and divide L = 36"):
        fn(u, delta, A, B, C, D, segment=5)


def test_fused_propagates_nan(kernel):
    """A NaN in delta reaches that channel's outputs (the kernel's exp/softplus clamps keep it)."""
    u, delta, A, B, C, D, z, bias = (t.detach() for t in make_inputs(30, torch.float32, n=16))
    delta[0, 1, 10] = float("nan")
    out = selective_scan_cpu(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True)
    assert out[0, 1, 10:].isnan().all() and not out[0, 1, :10].isnan().any()
    assert not out[1].isnan().any() and not out[0, 0].isnan().any()


def test_fused_saves_no_state_sized_tensor(kernel):
    """Backward recomputes the states: every saved tensor is far below (B, D, L, N)."""
    batch, dim, L, n = 2, 32, 64, 16
    ins = make_inputs(L, torch.float32, batch=batch, dim=dim, n=n)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out, _ = run(selective_scan_cpu, ins)
    assert saved and max(saved) <= batch * dim * L  # inputs only: (B, D, L), (B, L, N), (D, N)


def test_fused_in_bf16_autocast(kernel):
    """Inside CPU bf16 autocast the scan runs in float32 and returns u's dtype; grads flow."""
    ins = make_inputs(40, torch.float32, n=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, grads = run(selective_scan_cpu, ins)  # float32 inputs stay float32
        low = [t.detach().bfloat16().requires_grad_() for t in ins]
        out_bf16, grads_bf16 = run(selective_scan_cpu, low)
    ref_out, ref_grads = run(selective_scan_ref, ins)
    assert out.dtype == torch.float32 and out_bf16.dtype == torch.bfloat16
    assert_matches(out, grads, ref_out, ref_grads, TOL_FUSED[torch.float32])
    assert all(g.dtype == torch.bfloat16 for g in grads_bf16)
    ref_low = selective_scan_ref(*[t.detach().float() for t in low[:5]], low[5].detach().float(),
                                 z=low[6].detach().float(), delta_bias=low[7].detach().float(),
                                 delta_softplus=True)
    torch.testing.assert_close(out_bf16.float(), ref_low, rtol=1e-2, atol=1e-2)


def test_one_kernel_build_serves_every_copy_of_the_source(monkeypatch, tmp_path):
    """Clones, test projects and `dvc exp` workspaces each hold the kernel's source at their own
    path; the build is keyed on its text and compiles a staged copy, so they share one build."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "cache"))
    name, _ = scan_cpu._build_flags()
    build, staged = scan_cpu._staged_source(name)
    copy = tmp_path / "clone" / "selective_scan_cpu.cpp"
    copy.parent.mkdir()
    shutil.copyfile(scan_cpu.SOURCE, copy)
    monkeypatch.setattr(scan_cpu, "SOURCE", copy)
    assert scan_cpu._build_flags()[0] == name
    assert scan_cpu._staged_source(name) == (build, staged) == (tmp_path / "cache" / name, build / copy.name)
    assert staged.read_bytes() == copy.read_bytes()
    copy.write_text(copy.read_text() + "\n// edited\n")  # another text is another build
    assert scan_cpu._build_flags()[0] != name


@pytest.mark.parametrize("failure", ["build_fails", "no_compiler"])
def test_fused_falls_back_with_one_warning(monkeypatch, caplog, failure):
    """Where the kernel cannot be built, the chunked scan runs and one warning says so."""

    def build_fails(*args, **kwargs):
        raise RuntimeError("Error building extension 'x':\nfoo.cpp:1: error: no\nninja: stopped")

    if failure == "build_fails":
        monkeypatch.setattr(torch.utils.cpp_extension, "load", build_fails)
    else:
        monkeypatch.setenv("CXX", "/nonexistent/c++")
    scan_cpu.load_kernel.cache_clear()
    try:
        ins = make_inputs(20, torch.float64)
        with caplog.at_level(logging.WARNING, logger=scan_cpu.__name__):
            out, grads = run(selective_scan_cpu, ins)
            run(selective_scan_cpu, ins)
    finally:
        scan_cpu.load_kernel.cache_clear()  # the next caller loads the real kernel again
    fast_out, fast_grads = run(selective_scan_fast, ins)
    assert_matches(out, grads, fast_out, fast_grads, dict(rtol=0, atol=0))
    warnings = [r for r in caplog.records if r.name == scan_cpu.__name__]
    assert len(warnings) == 1 and "chunked PyTorch scan" in warnings[0].getMessage()
    reason = "error: no" if failure == "build_fails" else "no C++ compiler"
    assert reason in warnings[0].getMessage()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_bimamba_fused_matches_reference(kernel, monkeypatch, dtype):
    """Through the model: both directions (the backward one flips each row within its length)."""
    torch.manual_seed(0)
    layer = BiMamba(16, d_state=16, expand=2).to(dtype)
    x = torch.randn(2, 37, 16, dtype=dtype, requires_grad=True)
    lengths = torch.tensor([37, 23])

    def forward_and_grads():
        out = layer(x, lengths)
        params = [x, *layer.parameters()]
        return out, torch.autograd.grad(out.square().sum(), params)

    out, grads = forward_and_grads()
    monkeypatch.setattr(mamba_module, "selective_scan_cpu",
                        lambda *a, chunk=None, **k: selective_scan_ref(*a, **k))
    ref_out, ref_grads = forward_and_grads()
    tol = TOL_FUSED[dtype]
    names = ["out", "x", *(name for name, _ in layer.named_parameters())]
    for name, g, rg in zip(names, [out, *grads], [ref_out, *ref_grads], strict=True):
        scale = rg.abs().max().clamp(min=1.0)
        torch.testing.assert_close(g / scale, rg / scale, **tol, msg=f"grad {name}")


@pytest.mark.parametrize("fn", [selective_scan_fast, selective_scan_cpu], ids=["fast", "fused"])
def test_long_sequence_strong_decay_is_finite(fn):
    """Cumulative decays far below float32's range must not overflow (segment products <= 1)."""
    ins = make_inputs(1500, torch.float32, batch=1, dim=3, n=2)
    with torch.no_grad():
        ins[1].add_(3.0)  # dt ~ 3, A down to -4: exp(-12) per step, exp(-18000) over the sequence
    out, grads = run(fn, ins)
    ref_out, _ = run(selective_scan_ref, ins)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-4)


def strict_mamba_ssm_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Stand-in for mamba_ssm's selective_scan_fn with its dtype checks (selective_scan.cpp):
    delta, variable B/C and z in u's dtype; A, D, delta_bias float32."""
    for name, t in (("delta", delta), ("B", B), ("C", C), ("z", z)):
        assert t.dtype == u.dtype, f"{name} is {t.dtype}, u is {u.dtype}: mamba_ssm rejects this"
    assert A.dtype == D.dtype == delta_bias.dtype == torch.float32
    f = [t.float() for t in (u, delta, A, B, C, D, z, delta_bias)]
    return selective_scan_ref(*f[:6], z=f[6], delta_bias=f[7], delta_softplus=delta_softplus).to(u.dtype)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16_autocast"])
def test_gpu_kernel_path_meets_mamba_ssm_dtype_contract(monkeypatch, autocast):
    """The mamba_ssm branch of Mamba.forward (taken on CUDA with the [cuda] extra) hands the kernel
    one dtype; under bf16 autocast the conv's fp32 weights used to leave u fp32 and delta bf16."""
    monkeypatch.setattr(mamba_module, "uses_gpu_kernels", lambda hidden: True)
    monkeypatch.setattr(mamba_module, "selective_scan_fn", strict_mamba_ssm_scan)
    monkeypatch.setattr(mamba_module, "causal_conv1d_fn", None)
    torch.manual_seed(0)
    layer = mamba_module.Mamba(16, d_state=4, d_conv=4, expand=2)
    x = torch.randn(2, 12, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = layer(x)
    monkeypatch.setattr(mamba_module, "uses_gpu_kernels", lambda hidden: False)
    with torch.no_grad():
        ref = layer(x)
    tol = dict(rtol=5e-2, atol=5e-2) if autocast else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.float(), ref, **tol)
