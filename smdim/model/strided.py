"""The denoiser's length changes: a strided Conv1d down and a ConvTranspose1d up, kernel = stride."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


# Both convolutions have kernel == stride, so they are reshapes around one matmul; written that
# way because CPU autograd of Conv1d/ConvTranspose1d is far slower than a Linear of the same size.
def strided_conv(h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Conv1d with kernel = stride = s on (B, Ls*s, Din) -> (B, Ls, Dout); weight (Dout, Din, s)."""
    B, Lp, Din = h.shape
    s = weight.shape[-1]
    windows = h.view(B, Lp // s, s, Din).transpose(2, 3).reshape(B, Lp // s, Din * s)
    return F.linear(windows, weight.reshape(weight.shape[0], Din * s), bias)


def transposed_conv(h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """ConvTranspose1d with kernel = stride = s: (B, Ls, Din) -> (B, Ls*s, Dout); weight (Din, Dout, s)."""
    B, Ls, Din = h.shape
    Dout, s = weight.shape[1], weight.shape[2]
    out = (h @ weight.reshape(Din, Dout * s)).view(B, Ls, Dout, s).transpose(2, 3)  # (B, Ls, s, Dout)
    return out.reshape(B, Ls * s, Dout) + bias
