"""Block-causal Mamba (block diffusion's Mamba sublayer) equals its block-by-block reference twin."""

from __future__ import annotations

import pytest
import torch

from smdim.model.block_mamba import block_causal_mamba, block_causal_mamba_ref
from smdim.model.mamba import BiMamba, Mamba

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# Mamba casts A_log, D and the dt bias to float32 (as mamba_ssm does), so their gradients carry
# float32 rounding even in a float64 run; everything else matches to float64 rounding.
FLOAT32_CAST = {"A_log", "D", "dt_proj.bias"}


@pytest.mark.parametrize("cls", [BiMamba, Mamba])
@pytest.mark.parametrize("cb", [1, 3, 4])
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_fast_block_causal_mamba_matches_its_reference(cls, cb, padded):
    torch.manual_seed(0)
    layer = cls(16, d_state=16, d_conv=4).double()
    Ls = 4 * cb
    hidden = torch.randn(3, 2 * Ls, 16, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([Ls, Ls - 3, 2]) if padded else None
    out = block_causal_mamba(layer, hidden, Ls, cb, lengths)
    ref = block_causal_mamba_ref(layer, hidden, Ls, cb, lengths)
    if padded:  # the reference leaves padded positions zero; only real ones count
        real = torch.arange(Ls)[None] < lengths[:, None]
        out = out * torch.cat([real, real], dim=1)[..., None]
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    weight = torch.randn_like(out)
    names = ["hidden", *(n for n, _ in layer.named_parameters())]
    wrt = [hidden, *layer.parameters()]
    grads = torch.autograd.grad((out * weight).sum(), wrt)
    ref_grads = torch.autograd.grad((ref * weight).sum(), wrt)
    for name, g, rg in zip(names, grads, ref_grads, strict=True):
        tol = 1e-6 if any(name.endswith(cast) for cast in FLOAT32_CAST) else 1e-11
        torch.testing.assert_close(g, rg, rtol=tol, atol=tol * rg.abs().max().item(), msg=name)


def test_x_t_blocks_read_the_clean_prefix_through_the_scan_and_the_conv():
    """Changing x0's last position before block b moves x_t's block b (the conv and the state)."""
    torch.manual_seed(1)
    layer = Mamba(8, d_state=8).double()
    Ls, cb = 8, 2
    hidden = torch.randn(1, 2 * Ls, 8, dtype=torch.float64)
    out = block_causal_mamba(layer, hidden, Ls, cb, None)
    moved = hidden.clone()
    moved[0, Ls + 3] += 1.0  # x0 position 3: the end of x0's block 1
    out2 = block_causal_mamba(layer, moved, Ls, cb, None)
    assert torch.equal(out[0, :4], out2[0, :4])  # x_t blocks 0 and 1 cannot see it
    assert not torch.allclose(out[0, 4:Ls], out2[0, 4:Ls])  # blocks 2 and 3 do
