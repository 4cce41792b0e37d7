"""GPU only: our CPU scan path against mamba_ssm's CUDA kernels, same weights, outputs and gradients.

Skipped on machines without CUDA and the `[cuda]` extra (CI). The float64 sequential reference is
the ground truth for the raw scan; modules compare our CPU path (fused C++ scan) with ours on CUDA
(mamba_ssm's `mamba_inner_fn`, or `selective_scan_fn` without causal-conv1d) and with mamba_ssm's
own `Mamba`. fp32 everywhere except the bf16 autocast test; TF32 is off so convolutions and matmuls
on the GPU are true fp32.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import smdim.model.mamba as mamba_module
from smdim.model.config import ModelConfig
from smdim.model.denoiser import Denoiser
from smdim.model.mamba import HAS_MAMBA_KERNELS, Mamba, selective_scan_fn
from smdim.model.scan import selective_scan_ref
from smdim.model.scan_cpu import selective_scan_cpu

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not (torch.cuda.is_available() and HAS_MAMBA_KERNELS), reason="needs CUDA + mamba_ssm"
    ),
]
# Relative to each tensor's largest reference value: mamba_ssm builds with --use_fast_math.
TOL = dict(rtol=2e-3, atol=2e-3)


@pytest.fixture(autouse=True)
def true_fp32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def assert_close_scaled(got, want, name, tol=TOL):
    scale = want.abs().max().clamp(min=1.0)
    torch.testing.assert_close(got.cpu().to(want.dtype) / scale, want / scale, **tol, msg=f"{name}")


def scan_inputs(L: int, with_z: bool, seed: int = 0, batch: int = 2, dim: int = 24, n: int = 16):
    """fp32 scan inputs with decays from near 1 to strong (B, C vary along L, as in Mamba)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    ins = {
        "u": r(batch, dim, L),
        "delta": r(batch, dim, L) * 0.5,
        "A": -torch.rand(dim, n, generator=g) * 4.0 - 0.05,
        "B": r(batch, n, L),
        "C": r(batch, n, L),
        "D": r(dim),
        "z": r(batch, dim, L) if with_z else None,
        "delta_bias": r(dim) * 0.5,
    }
    return {k: v for k, v in ins.items() if v is not None}


def run_scan(fn, ins: dict, device: str, dtype=torch.float32):
    leaves = {k: v.to(device, dtype).requires_grad_() for k, v in ins.items()}
    out = fn(
        leaves["u"],
        leaves["delta"],
        leaves["A"],
        leaves["B"],
        leaves["C"],
        leaves["D"],
        z=leaves.get("z"),
        delta_bias=leaves["delta_bias"],
        delta_softplus=True,
    )
    w = torch.linspace(-1, 1, out.numel(), device=device, dtype=out.dtype).view_as(out)
    grads = torch.autograd.grad((out * w).sum(), list(leaves.values()))  # a non-symmetric loss
    return out.detach(), dict(zip(leaves, grads, strict=True))


@pytest.mark.parametrize("L", [1, 7, 100, 257, 2048])
@pytest.mark.parametrize("with_z", [True, False], ids=["z", "no_z"])
def test_mamba_ssm_scan_kernel_matches_our_cpu_scan_and_the_fp64_reference(L, with_z):
    ins = scan_inputs(L, with_z, seed=L)
    ref_out, ref_grads = run_scan(selective_scan_ref, ins, "cpu", torch.float64)
    cuda_out, cuda_grads = run_scan(selective_scan_fn, ins, "cuda")
    cpu_out, cpu_grads = run_scan(selective_scan_cpu, ins, "cpu")
    assert_close_scaled(cuda_out, ref_out, "mamba_ssm out vs fp64 reference")
    assert_close_scaled(cpu_out, ref_out, "our CPU out vs fp64 reference")
    for k in ins:
        assert_close_scaled(cuda_grads[k], ref_grads[k], f"mamba_ssm grad {k} vs fp64 reference")
        assert_close_scaled(cpu_grads[k], ref_grads[k], f"our CPU grad {k} vs fp64 reference")
        assert_close_scaled(
            cpu_grads[k], cuda_grads[k].cpu().double(), f"grad {k}: our CPU vs mamba_ssm"
        )


@pytest.fixture(params=["mamba_inner_fn", "selective_scan_fn"])
def gpu_path(request, monkeypatch):
    """Both branches of our Mamba on CUDA: the fused mamba_inner_fn (with causal-conv1d) and
    selective_scan_fn (without it; the branch that casts its inputs to one dtype under autocast)."""
    if request.param == "mamba_inner_fn" and mamba_module.causal_conv1d_fn is None:
        pytest.skip("causal-conv1d is not installed")
    if request.param == "selective_scan_fn":
        monkeypatch.setattr(mamba_module, "causal_conv1d_fn", None)
    return request.param


def module_out_and_grads(module, x: torch.Tensor):
    x = x.clone().requires_grad_()
    out = module(x)
    w = torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out)
    names = ["x", *(n for n, _ in module.named_parameters())]
    grads = torch.autograd.grad((out * w).sum(), [x, *module.parameters()])
    return out.detach().cpu(), {n: g.detach().cpu() for n, g in zip(names, grads, strict=True)}


@pytest.mark.parametrize("L", [64, 1000])
def test_mamba_module_same_weights_cpu_gpu_and_mamba_ssm(L, gpu_path):
    """Our Mamba on CPU == ours on CUDA (mamba_ssm kernels) == mamba_ssm's Mamba: outputs, all grads."""
    from mamba_ssm.modules.mamba_simple import Mamba as RefMamba

    torch.manual_seed(0)
    ours = Mamba(64, d_state=16, d_conv=4, expand=2)
    ref = RefMamba(64, d_state=16, d_conv=4, expand=2)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, L, 64, generator=torch.Generator().manual_seed(1))
    cpu_out, cpu_grads = module_out_and_grads(ours, x)
    gpu_out, gpu_grads = module_out_and_grads(ours.cuda(), x.cuda())
    ref_out, ref_grads = module_out_and_grads(ref.cuda(), x.cuda())
    assert set(ref_grads) == set(cpu_grads)
    assert_close_scaled(gpu_out, cpu_out, "out: ours on CUDA vs ours on CPU")
    assert_close_scaled(ref_out, cpu_out, "out: mamba_ssm Mamba vs ours on CPU")
    for k in cpu_grads:
        assert_close_scaled(gpu_grads[k], cpu_grads[k], f"grad {k}: ours on CUDA vs CPU")
        assert_close_scaled(ref_grads[k], cpu_grads[k], f"grad {k}: mamba_ssm Mamba vs ours on CPU")


def denoiser_loss_and_grads(model, x, pad_mask, bf16: bool = False):
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        logits = model(x, pad_mask=pad_mask)  # (B, L, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), x.flatten(), reduction="none")
        loss = (loss * pad_mask.flatten()).sum() / pad_mask.sum()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    names = [n for n, _ in model.named_parameters()]
    return (
        logits.detach().float().cpu(),
        loss.item(),
        {n: g.float().cpu() for n, g in zip(names, grads, strict=True)},
    )


@pytest.mark.parametrize("block", ["mfa", "mamba"])
def test_denoiser_bidirectional_with_padding_cpu_vs_gpu(block, gpu_path):
    """The whole diffusion denoiser (BiMamba over right-padded pieces, strided conv) on both paths."""
    cfg = ModelConfig(vocab_size=300, block=block, d_model=64, n_heads=4, n_blocks=2, stride=4)
    torch.manual_seed(0)
    model = Denoiser(cfg)
    g = torch.Generator().manual_seed(2)
    x = torch.randint(4, 300, (3, 512), generator=g)
    pad_mask = torch.ones_like(x, dtype=torch.bool)
    pad_mask[1, 301:] = False  # right padding: the backward scan must start at each piece's end
    pad_mask[2, 64:] = False
    x[~pad_mask] = 0
    cpu = denoiser_loss_and_grads(model, x, pad_mask)
    gpu = denoiser_loss_and_grads(model.cuda(), x.cuda(), pad_mask.cuda())
    assert_close_scaled(gpu[0], cpu[0], "logits")
    assert abs(gpu[1] - cpu[1]) <= 1e-4 * abs(cpu[1])
    for k in cpu[2]:
        assert_close_scaled(gpu[2][k], cpu[2][k], f"grad {k}")


def test_bf16_autocast_training_loss_tracks_fp32(gpu_path):
    """The paper preset trains in bf16 autocast on the GPU: loss and update direction stay fp32-like."""
    cfg = ModelConfig(vocab_size=300, block="mfa", d_model=128, n_heads=4, n_blocks=2, stride=4)
    torch.manual_seed(0)
    model = Denoiser(cfg)
    x = torch.randint(4, 300, (4, 1024), generator=torch.Generator().manual_seed(3))
    pad_mask = torch.ones_like(x, dtype=torch.bool)
    _, loss32, g32 = denoiser_loss_and_grads(model, x, pad_mask)
    _, loss16, g16 = denoiser_loss_and_grads(model.cuda(), x.cuda(), pad_mask.cuda(), bf16=True)
    assert abs(loss16 - loss32) <= 0.01 * loss32
    flat32 = torch.cat([g.flatten() for g in g32.values()])
    flat16 = torch.cat([g.flatten() for g in g16.values()])
    assert F.cosine_similarity(flat16, flat32, dim=0) > 0.99
