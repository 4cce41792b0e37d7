"""`scale: auto`: keep each piece in the key its own first pitches set.

A user-named scale (`scale: C:major`) is one fixed mask. `auto` is the same mask chosen per piece,
from the pitches the sampler has already decided: once a piece holds `min_notes` known pitches,
the candidate scale (smdim.tokenization.keys: a major or a harmonic-minor scale on any of the 12
tonics) that holds most of them is its key, and Pitch tokens outside that scale are banned for the
slots still open. The key is re-read at every step, so it follows the piece while it takes shape,
but it only narrows what is *added*: pitches already decided stay (a corrector round may redraw
them into the key).

Not the default: on the embedded corpus it holds the key (scale consistency 0.999) but leaves
fewer distinct pitches per piece than the corpus has (docs/sampling_study.md, thirteenth round).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from smdim.tokenization.keys import candidate_scales


@dataclass(frozen=True)
class KeyLock:
    """Bans, per piece, the Pitch tokens outside the scale its known pitches fit best."""

    class_counts: Tensor  # (V, 12) float: pitches of each pitch class a token holds (BPE: several)
    sets: Tensor  # (K, 12) float: candidate scales
    tie: Tensor  # (K, 12) float: tie-break weights among equally good scales
    min_notes: int = 8  # known pitches before a piece's key is fixed

    @classmethod
    def for_vocab(cls, class_counts: Tensor, min_notes: int) -> KeyLock:
        member, tie, _ = candidate_scales()
        as_t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
        return cls(class_counts.float(), as_t(member), as_t(tie), min_notes)

    def to(self, device: torch.device | str) -> KeyLock:
        return KeyLock(self.class_counts.to(device), self.sets.to(device), self.tie.to(device), self.min_notes)

    def scale_of(self, x: Tensor, known: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 12) bool pitch classes of each row's key, and (B,) bool: the key is fixed (enough notes)."""
        hist = (self.class_counts[x] * known[..., None]).sum(1)  # (B, 12) known pitches per class
        best = (hist @ self.sets.T + hist @ self.tie.T).argmax(-1)  # (B,)
        return self.sets[best] > 0, hist.sum(-1) >= self.min_notes

    def banned(self, x: Tensor, known: Tensor) -> Tensor:
        """(B, V) bool: tokens holding a pitch outside the row's key (none before the key is fixed)."""
        in_key, fixed = self.scale_of(x, known)
        outside = self.class_counts @ (~in_key).T.to(self.class_counts.dtype)  # (V, B)
        return (outside.T > 0) & fixed[:, None]
