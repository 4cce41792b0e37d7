"""Mamba mixer with mamba_ssm's parameter names: its CUDA kernels on GPU, our fused scan on CPU.

`Mamba` state_dicts load unchanged into `mamba_ssm.modules.mamba_simple.Mamba` (and back):
in_proj (2*d_inner, d_model), conv1d (d_inner, 1, d_conv) + bias, x_proj (dt_rank + 2*d_state,
d_inner), dt_proj (d_inner, dt_rank) + bias, A_log (d_inner, d_state), D (d_inner,), out_proj.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from smdim.model.scan import CHUNK
from smdim.model.scan_cpu import selective_scan_cpu

# One guard for the optional GPU kernels: mamba_ssm cannot even import without CUDA.
try:
    from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn, selective_scan_fn
except ImportError:  # CPU machines (and GPUs without the [cuda] extra)
    mamba_inner_fn = selective_scan_fn = None
try:
    from causal_conv1d import causal_conv1d_fn
except ImportError:
    causal_conv1d_fn = None
try:  # the one-token state update of mamba_ssm's generation (Triton, GPU only)
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update
except ImportError:
    selective_state_update = None

HAS_MAMBA_KERNELS = selective_scan_fn is not None


def uses_gpu_kernels(hidden: Tensor) -> bool:
    """mamba_ssm's CUDA kernels run where the [cuda] extra is installed and the input is on a GPU."""
    return HAS_MAMBA_KERNELS and hidden.is_cuda


class Mamba(nn.Module):
    """Selective SSM block (Gu & Dao 2023), unidirectional (causal) along L."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        chunk: int = CHUNK,
    ) -> None:
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.chunk = chunk
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1, bias=True
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

        # mamba's dt init: weights keep variance; bias = softplus^-1 of dt ~ LogUniform[dt_min, dt_max].
        dt_init_std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        dt = torch.exp(
            torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True
        # S4D-real init: A_n = -n, stored as log so A stays negative under any update.
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))  # (d_inner, d_state)
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner))  # (d_inner,)
        self.D._no_weight_decay = True

    def forward(self, hidden: Tensor) -> Tensor:
        """(B, L, d_model) -> (B, L, d_model)."""
        xz = self.in_proj(hidden).transpose(1, 2)  # (B, 2*d_inner, L)
        A = -torch.exp(self.A_log.float())  # (d_inner, d_state)
        on_gpu_kernels = uses_gpu_kernels(hidden)
        if on_gpu_kernels and causal_conv1d_fn is not None:
            # mamba_inner_fn fuses conv, projections, scan and gate (in_proj stays outside,
            # as in mamba_simple, with the same weights).
            return mamba_inner_fn(
                xz.contiguous(), self.conv1d.weight, self.conv1d.bias, self.x_proj.weight,
                self.dt_proj.weight, self.out_proj.weight, self.out_proj.bias, A, None, None,
                self.D.float(), delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
            )
        x, z = xz.chunk(2, dim=1)  # (B, d_inner, L) each
        x = F.silu(causal_depthwise_conv(x, self.conv1d.weight, self.conv1d.bias))
        dt, B, C = self.ssm_inputs(x)
        kwargs = dict(z=z, delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        if on_gpu_kernels:
            # mamba_ssm's kernel wants u, delta, B, C, z in one dtype; under bf16 autocast the
            # matmuls give bf16 while the conv's fp32 weights promote x to fp32.
            dt, B, C, kwargs["z"] = (v.to(x.dtype) for v in (dt, B, C, z))
            y = selective_scan_fn(
                x.contiguous(), dt.contiguous(), A, B.contiguous(), C.contiguous(), self.D.float(), **kwargs
            )
        else:  # the fused C++ kernel; the chunked PyTorch scan where it is unavailable or off-CPU
            y = selective_scan_cpu(x, dt, A, B, C, self.D.float(), chunk=self.chunk, **kwargs)
        return self.out_proj(y.transpose(1, 2))  # (B, L, d_model)

    def ssm_inputs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The scan's dt (B, d_inner, L) (its bias goes in the scan), B and C (B, d_state, L), from
        the conv's output x (B, d_inner, L)."""
        x_dbl = self.x_proj(x.transpose(1, 2))  # (B, L, dt_rank + 2*d_state)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (dt @ self.dt_proj.weight.T).transpose(1, 2)  # (B, d_inner, L)
        return dt, B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()

    def step(self, hidden: Tensor, state: dict[str, Tensor]) -> Tensor:
        """One new position: (B, d_model) -> (B, d_model), the recurrence of `forward` for one token.

        state["conv"] (B, d_inner, d_conv): the last d_conv conv inputs; state["ssm"] (B, d_inner,
        d_state): h. Both start at zero (absent = zero) and are updated in place, so streaming
        generation costs the same per token at any length.
        """
        Bsz = hidden.shape[0]
        if "conv" not in state:
            state["conv"] = hidden.new_zeros(Bsz, self.d_inner, self.d_conv)
            state["ssm"] = hidden.new_zeros(Bsz, self.d_inner, self.d_state, dtype=torch.float32)
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (B, d_inner) each
        conv = torch.cat([state["conv"][..., 1:], x[..., None]], dim=-1)  # (B, d_inner, d_conv)
        state["conv"] = conv
        x = F.silu((conv * self.conv1d.weight[:, 0, :]).sum(-1) + self.conv1d.bias)  # (B, d_inner)
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = dt @ self.dt_proj.weight.T  # (B, d_inner); bias added with the softplus
        A = -torch.exp(self.A_log.float())  # (d_inner, d_state)
        if selective_state_update is not None and hidden.is_cuda:
            y = selective_state_update(state["ssm"], x, dt, A, B, C, self.D.float(), z=z,
                                       dt_bias=self.dt_proj.bias, dt_softplus=True)
        else:
            delta = F.softplus((dt + self.dt_proj.bias).float())  # (B, d_inner)
            h = state["ssm"] * torch.exp(delta[..., None] * A) + (delta * x.float())[..., None] * B.float()[:, None, :]
            state["ssm"] = h  # (B, d_inner, d_state)
            y = (h @ C.float()[..., None]).squeeze(-1) + self.D.float() * x.float()  # (B, d_inner)
            y = (y * F.silu(z.float())).to(hidden.dtype)
        return self.out_proj(y)  # (B, d_model)


def causal_depthwise_conv(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Same as conv1d(x, weight, bias, padding=K-1, groups=D)[..., :L]; x: (B, D, L), weight: (D, 1, K)."""
    K = weight.shape[-1]
    return depthwise_conv(F.pad(x, (K - 1, 0)), weight, bias)  # zeros before the start: causal


def depthwise_conv(xp: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The K-tap depthwise conv over the last dim of already padded windows, without more padding:
    xp (B, D, ..., L + K - 1) -> (B, D, ..., L); weight (D, 1, K), bias (D,).

    Written as K shifted multiply-adds because CPU autograd of a grouped Conv1d is ~10x slower.
    """
    K = weight.shape[-1]
    L = xp.shape[-1] - K + 1
    w = weight[:, 0, :].reshape(weight.shape[0], *([1] * (xp.dim() - 3)), K)  # (D, 1.., K)
    out = xp[..., 0:L] * w[..., 0, None]
    for k in range(1, K):
        out = out + xp[..., k : k + L] * w[..., k, None]
    return out if bias is None else out + bias.reshape(-1, *([1] * (xp.dim() - 2)))


def reverse_padded(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each row's first lengths[b] positions along dim 1, leaving right padding in place."""
    if lengths is None:
        return x.flip(1)
    L = x.shape[1]
    pos = torch.arange(L, device=x.device)[None, :]  # (1, L)
    idx = torch.where(pos < lengths[:, None], lengths[:, None] - 1 - pos, pos)  # (B, L)
    return x.gather(1, idx[..., None].expand_as(x))


class BiMamba(nn.Module):
    """Non-causal Mamba: a forward and a backward Mamba (separate weights), outputs summed.

    Separate parameter sets (`fwd.*`, `bwd.*`, each with mamba_ssm names) because the two
    directions see different contexts; sharing would halve parameters but tie the two filters.
    The backward direction reverses each sequence within its own length, so right padding never
    leaks into real positions in either direction.
    """

    def __init__(self, d_model: int, **kwargs) -> None:
        super().__init__()
        self.fwd = Mamba(d_model, **kwargs)
        self.bwd = Mamba(d_model, **kwargs)

    def forward(self, hidden: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, L, d_model) -> (B, L, d_model); lengths (B,) = real positions per row."""
        back = reverse_padded(self.bwd(reverse_padded(hidden, lengths)), lengths)
        return self.fwd(hidden) + back
