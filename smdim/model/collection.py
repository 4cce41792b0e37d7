"""A denoiser bound to collection indices, called like an unconditioned one (losses, samplers)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class WithCollection(nn.Module):
    """`net(x, t, pad_mask)` -> `net(x, t, pad_mask, collection=...)`; `collection` is (B,) or a
    scalar index broadcast over the batch. Parameters and eval/train are the wrapped net's."""

    def __init__(self, net: nn.Module, collection: Tensor | int) -> None:
        super().__init__()
        self.net = net
        self.collection = torch.as_tensor(collection, dtype=torch.long)

    @property
    def self_conditioned(self) -> bool:
        return getattr(self.net, "self_conditioned", False)

    def forward(self, x: Tensor, t: Tensor | None = None, pad_mask: Tensor | None = None,
                prev: Tensor | None = None, clean: Tensor | None = None) -> Tensor:
        c = self.collection.to(x.device)
        c = c.expand(x.shape[0]) if c.dim() == 0 else c  # (B,)
        return self.net(x, t, pad_mask, collection=c, prev=prev, clean=clean)

    def select(self, rows: Tensor) -> WithCollection:
        """The same net bound to the indices of `rows` only: for samplers that call the network on
        the batch rows with work left (`cached`, ReMDM, the corrector)."""
        c = self.collection
        return self if c.dim() == 0 else WithCollection(self.net, c[rows.to(c.device)])
