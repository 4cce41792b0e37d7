"""Generation for autoregressive models: one token at a time with a recurrent state.

The causal network's `step` (smdim.model.denoiser) carries Mamba's SSM and conv states and the
attention layers' key/value caches, so every new token costs the same whatever the length:
linear time and, for Mamba blocks, constant memory. Fixed tokens (a prompt, or any position of
`fixed`) are fed instead of drawn; free positions are drawn from the model's next-token
distribution at `temperature`, truncated to the top-k / top-p tokens, under the same constraints
as the diffusion samplers (grammar, scale, pitch range, polyphony).
"""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from smdim.errors import SmdimError
from smdim.model.denoiser import StreamState
from smdim.sampling.constraints import Constraints
from smdim.sampling.samplers import initial_tokens
from smdim.sampling.truncation import draw_tokens


def generate_autoregressive(
    model,
    length: int,
    *,
    bos_id: int,
    mask_id: int,
    batch_size: int = 1,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    fixed: Tensor | None = None,
    constraints: Constraints | None = None,
    progress: bool = False,
    collection: Tensor | None = None,
) -> tuple[Tensor, dict[str, int]]:
    """(B, length) tokens and {"network_calls", "steps"}; fixed: (L,) or (B, L) ids, -1 = free;
    collection: (B,) indices for a model trained with model.collection_cond (None = "none")."""
    if length < 1 or batch_size < 1:
        raise SmdimError(f"length and batch size must be >= 1 (got {length}, {batch_size})")
    if temperature < 0:
        raise SmdimError(f"temperature must be >= 0, got {temperature}")
    device = next(model.parameters()).device
    keep = initial_tokens(length, batch_size, fixed, mask_id, device)  # (B, L): fixed ids, MASK = free
    x = torch.full((batch_size, length), mask_id, dtype=torch.long, device=device)
    c = constraints.to(device) if constraints is not None else None
    state = StreamState(collection=collection)
    token = torch.full((batch_size,), bos_id, dtype=torch.long, device=device)
    boundary = torch.zeros(batch_size, dtype=torch.long, device=device)  # last Bar/Position index
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in tqdm(range(length), desc="generating", disable=not progress, leave=False):
            logits = model.step(token, state).float()  # (B, V): the distribution of token i
            free = keep[:, i] == mask_id
            if free.any():
                drawn = _draw(logits, x, i, boundary, c, mask_id, temperature, top_k, top_p, generator)
                token = torch.where(free, drawn, keep[:, i])
            else:
                token = keep[:, i].clone()
            x[:, i] = token
            if c is not None:
                boundary = torch.where(c.is_boundary[token], i, boundary)
    if was_training:
        model.train()
    return x, {"network_calls": length, "steps": length}


def _draw(logits: Tensor, x: Tensor, i: int, boundary: Tensor, c: Constraints | None, mask_id: int,
          temperature: float, top_k: int | None, top_p: float | None, generator) -> Tensor:
    """One token per row for position i, given x[:, :i]."""
    logits = logits.index_fill(-1, torch.tensor([mask_id], device=logits.device), float("-inf"))
    if c is not None:
        # The constraints look left to the last onset boundary at most (grammar state, position
        # order, polyphony), so they run on that window with position i masked: O(window) per token.
        lo = int(boundary.min())
        window = torch.cat([x[:, lo:i], torch.full_like(x[:, :1], mask_id)], dim=1)  # (B, W)
        full = logits.new_zeros(window.shape[0], window.shape[1], logits.shape[-1])
        full[:, -1] = logits
        key_context = None
        if c.key is not None:  # the key lock (scale "auto") reads the whole piece so far: O(i) per token
            head = x[:, :i]
            key_context = (head, head != mask_id)
        logits = c.apply(full, window, window != mask_id, key_context=key_context)[:, -1]
    return draw_tokens(logits, temperature, generator, top_k, top_p)

