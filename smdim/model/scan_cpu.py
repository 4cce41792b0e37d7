"""Fused CPU selective scan: a C++ kernel (forward and backward) built on first use, with fallback.

`selective_scan_cpu` takes `selective_scan_fast`'s arguments and returns the same values. The
kernel (csrc/selective_scan_cpu.cpp) runs one pass over L per (batch, channel) with the N-wide
state in registers, and its backward recomputes the states of one channel at a time into a
per-thread scratch, so nothing of size (L, D, N) is saved or allocated. It is compiled with
torch.utils.cpp_extension (g++, -O3, AVX2+FMA when torch reports that CPU capability, never
-march=native or AVX-512) into torch's extension cache ($TORCH_EXTENSIONS_DIR, default
~/.cache/torch_extensions), one build per source text, shared by every copy of the project (clones,
test projects, `dvc exp` workspaces). cpp_extension's file lock makes a first use from several
processes at once safe (one builds, the others wait and load; a build killed midway leaves a `lock`
file in that directory, which must be deleted before the next try). Where it cannot be built or
loaded (no compiler, say) one warning is logged and the chunked PyTorch scan `selective_scan_fast`
runs.

Dtypes: computes in float32 (float64 for float64 inputs, as the tests use) and returns `out` in
u's dtype, exactly as `selective_scan_fast` and `selective_scan_ref` do; inside a bf16 CPU autocast
region the inputs are cast up, the scan runs in float32 and `out` comes back in u's dtype.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from smdim.model.scan import CHUNK, check_segment, selective_scan_fast

log = logging.getLogger(__name__)

MAX_STATE = 64  # d_state the kernel handles (mamba uses 16); larger ones take the fallback
SOURCE = Path(__file__).parent / "csrc" / "selective_scan_cpu.cpp"


def _build_flags() -> tuple[str, list[str]]:
    """Extension name and compiler flags for this CPU: AVX2+FMA where torch uses them, else baseline."""
    # -fopenmp: at::parallel_for's OpenMP loop lives in a header; the libgomp it links is the one
    # torch already loaded (same soname), so torch.set_num_threads sizes the kernel's threads too.
    # No -ffast-math: it folds the exp's rounding trick and the log1p correction (measured wrong).
    flags = ["-O3", "-fopenmp"]
    name = "smdim_selective_scan"
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        name, flags = name + "_avx2", flags + ["-mavx2", "-mfma"]
    # One build per (source text, torch install, flags). The source's text, not its path: every
    # clone, test project and `dvc exp` workspace holds a copy at its own path, and keying on the
    # path rebuilt the kernel (~30 s) in each of them.
    key = hashlib.sha256("\0".join([SOURCE.read_text(encoding="utf-8"), torch.__file__,
                                     torch.__version__, *flags]).encode()).hexdigest()[:10]
    return f"{name}_{key}", flags


def _staged_source(name: str) -> tuple[Path, Path]:
    """The build directory for `name` and a copy of SOURCE inside it, written once (atomically).

    cpp_extension writes the source's path into build.ninja, and ninja rebuilds when that line
    changes; compiling from one copy per build keeps the path, and so the build, shared."""
    from torch.utils.cpp_extension import get_default_build_root

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    build = Path(root) / name
    build.mkdir(parents=True, exist_ok=True)
    staged = build / SOURCE.name
    text = SOURCE.read_bytes()
    if not staged.is_file() or staged.read_bytes() != text:
        tmp = staged.with_name(f"{staged.name}.{os.getpid()}.tmp")
        tmp.write_bytes(text)
        os.replace(tmp, staged)  # concurrent first uses write the same bytes; the rename is atomic
    return build, staged


@functools.lru_cache(maxsize=1)
def load_kernel() -> ModuleType | None:
    """The compiled kernel module, built on first call; None (after one warning) if that fails."""
    try:
        from torch.utils.cpp_extension import load

        cxx = os.environ.get("CXX", "c++")  # what cpp_extension calls
        if shutil.which(cxx) is None:  # say so plainly (torch would warn about it, then fail)
            raise RuntimeError(f"no C++ compiler: {cxx!r} is not on PATH (install g++ or set CXX)")
        name, flags = _build_flags()
        build, source = _staged_source(name)
        return load(name=name, sources=[str(source)], extra_cflags=flags, extra_ldflags=["-fopenmp"],
                    build_directory=str(build), verbose=False)
    except Exception as exc:  # no compiler, no headers, a read-only cache, ...
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [""]
        reason = next((line for line in lines if "error:" in line or "not found" in line), lines[0])
        log.warning("fused CPU selective scan unavailable (%s: %s); using the chunked PyTorch scan",
                    type(exc).__name__, reason[:300])
        return None


def kernel_name() -> str:
    """What `selective_scan_cpu` runs here: the kernel's build name, or the fallback."""
    kernel = load_kernel()
    return "fallback: chunked PyTorch scan" if kernel is None else kernel.__name__


class _FusedScan(torch.autograd.Function):
    """The kernel as an autograd op; saves only its inputs (B, C time-major) for backward.

    Both outputs are differentiable: a gradient of the last states (absent when unused) flows back
    through the states, and on to the initial states h0 when they were given. The scan restarts
    every `seg` positions; h0 and the last states are (B, D, L / seg, N).
    """

    @staticmethod
    def forward(ctx, kernel, u, delta, A, Bt, Ct, D, z, delta_bias, softplus, h0, seg):  # noqa: D102
        out, last = kernel.fwd(u, delta, A, Bt, Ct, D, z, delta_bias, h0, softplus, seg)
        ctx.kernel, ctx.softplus, ctx.seg = kernel, softplus, seg
        ctx.save_for_backward(u, delta, A, Bt, Ct, D, z, delta_bias, h0)
        ctx.set_materialize_grads(False)  # an unused last state sends None: no zeros to read
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):  # noqa: D102
        u, delta, A, Bt, Ct, D, z, delta_bias, h0 = ctx.saved_tensors
        dout = torch.zeros_like(u) if dout is None else dout.contiguous()
        du, ddelta, dA, dBt, dCt, dD, dz, dbias, dh0 = ctx.kernel.bwd(
            u, delta, A, Bt, Ct, D, z, delta_bias, h0, ctx.softplus, ctx.seg, dout,
            None if dlast is None else dlast.contiguous(),
        )
        return None, du, ddelta, dA, dBt, dCt, dD, dz, dbias, None, dh0, None


def selective_scan_cpu(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    chunk: int = CHUNK,
    initial_state: Tensor | None = None,
    segment: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Fused CPU scan, same signature and shapes as `selective_scan_ref` / `selective_scan_fast`.

    u: (B, D, L); delta: (B, D, L); A: (D, N); B: (B, N, L); C: (B, N, L); D: (D,); z: (B, D, L);
    delta_bias: (D,); initial_state: (B, D, N) (None = zero). Returns out (B, D, L) [and
    last_state (B, D, N), differentiable]. With `segment` the scan restarts every `segment`
    positions and initial_state, last_state are (B, D, L / segment, N), one per segment. `chunk`
    is only used by the fallback (`selective_scan_fast`, when the kernel is unavailable or inputs
    are not on CPU).
    """
    n, L = A.shape[1], u.shape[-1]
    check_segment(segment, L)
    kernel = load_kernel() if u.device.type == "cpu" and n <= MAX_STATE else None
    if kernel is None:
        return selective_scan_fast(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                   return_last_state, chunk, initial_state, segment)
    if initial_state is not None and segment is None:
        initial_state = initial_state[:, :, None]  # one segment
    dtype_in = u.dtype
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32

    pad = -n % 8  # the kernel works on packs of 8 states; padded ones (A = B = C = 0) stay 0

    def prep(t: Tensor | None, pad_last: int = 0) -> Tensor | None:
        if t is None:
            return None
        t = t.to(compute)
        return (F.pad(t, (0, pad_last)) if pad_last else t).contiguous()

    with torch.autocast("cpu", enabled=False):
        out, last = _FusedScan.apply(
            kernel, prep(u), prep(delta), prep(A, pad),
            prep(B.transpose(1, 2), pad), prep(C.transpose(1, 2), pad),  # (B, L, N): time-major
            prep(D), prep(z), prep(delta_bias), bool(delta_softplus), prep(initial_state, pad),
            L if segment is None else segment,
        )
    out, last = out.to(dtype_in), last[..., :n]
    if segment is None:
        last = last[:, :, 0]
    return (out, last) if return_last_state else out
