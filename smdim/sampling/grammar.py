"""REMI grammar as a token-type automaton, for logit masks that keep sampled streams well formed.

In a REMI stream (one track, no tempo or time-signature tokens) every note is Pitch, Velocity,
Duration, each onset starts with a Position, and each bar with a Bar:

    start -> Bar                 Bar -> Bar | Position        Position -> Pitch
    Pitch -> Velocity            Velocity -> Duration         Duration -> Pitch | Position | Bar

(with the note types the vocabulary has: without Velocity tokens, Pitch -> Duration; PitchDrum
counts as Pitch). Other token types (Tempo, TimeSig, Program, specials) are wildcards: allowed
anywhere, and a known wildcard constrains nothing, so the grammar never refuses what it does not
model.

Diffusion fills slots in any order, so a slot's neighbours may still be masked. A slot may take
type z when the stretch to the nearest known token on its left (type a, d steps away) and on its
right (type b, e steps away) can still be completed: a reaches z in exactly d steps and z reaches
b in exactly e (powers of the transition matrix). Drawing one slot that way keeps every gap
completable, so a sequence filled one token at a time is always well formed; tokens drawn in the
same step can still clash, and `clashes` finds them for the sampler to redraw one at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

NOTE_TYPES = ("Pitch", "Velocity", "Duration")
ALIASES = {"PitchDrum": "Pitch"}


@dataclass(frozen=True)
class Grammar:
    """Token types and k-step reachability of the REMI automaton over a vocabulary."""

    type_of: Tensor  # (V,) long: automaton type of each token id; -1 for wildcards
    reach: Tensor  # (K+1, T, T) bool: reach[k, a, b] = b can stand exactly k tokens after a
    start: int  # the virtual type before the first token

    def to(self, device: torch.device | str) -> Grammar:
        """Same grammar with tables on `device`."""
        return Grammar(self.type_of.to(device), self.reach.to(device), self.start)

    def _steps(self, d: Tensor) -> Tensor:
        # Beyond the table's length reachability is periodic-stable: every long gap is completable.
        return d.clamp(max=self.reach.shape[0] - 1)

    def allowed(self, x: Tensor, known: Tensor) -> Tensor:
        """(B, L, V) bool: tokens each slot may take so that its gaps to the known tokens of x
        (B, L) on either side can still be completed."""
        B, L = x.shape
        T = self.reach.shape[1]
        types = self.type_of[x]  # (B, L), -1 = wildcard
        pos = torch.arange(L, device=x.device).expand(B, L)
        left_idx, right_idx = nearest_known(known)  # the virtual start is index -1
        left_t = torch.where(left_idx >= 0, types.gather(1, left_idx.clamp(min=0)), self.start)
        ok = self.reach[self._steps(pos - left_idx), left_t.clamp(min=0)]  # (B, L, T)
        ok |= (left_t < 0)[..., None]  # a wildcard on the left constrains nothing
        right_t = torch.where(right_idx < L, types.gather(1, right_idx.clamp(max=L - 1)), -1)
        to_right = self.reach[self._steps(right_idx - pos)]  # (B, L, T, T)
        to_right = to_right.gather(3, right_t.clamp(min=0)[..., None, None].expand(B, L, T, 1))[..., 0]
        ok &= to_right | (right_t < 0)[..., None]
        token_ok = ok.gather(2, self.type_of.clamp(min=0).expand(B, L, -1))  # (B, L, V)
        return token_ok | (self.type_of < 0)  # wildcards are always allowed

    def clashes(self, x: Tensor, known_before: Tensor, new: Tensor,
                position_of: Tensor | None = None) -> Tensor:
        """(B, L) bool: tokens drawn together (`new`) that break the grammar with each other.

        Scanning left to right, a new token is kept when the stretch from the last kept token to it
        can be completed (and, with `position_of` (V,), a new Position is later than the bar's last
        kept one). Tokens known before were consistent and every new one was drawn to fit them, so
        only new tokens are refused; the sampler redraws those one at a time.
        """
        types = self.type_of[x].cpu().numpy()
        values = (position_of[x] if position_of is not None else torch.full_like(x, -1)).cpu().numpy()
        bar = 0  # the automaton type of Bar (see remi_grammar)
        reach = self.reach.cpu().numpy()
        kmax = reach.shape[0] - 1
        known, fresh = (known_before | new).cpu().numpy(), new.cpu().numpy()
        bad = torch.zeros_like(new, device="cpu").numpy()
        for b in range(x.shape[0]):
            prev_i, prev_t, last_pos = -1, self.start, -1
            for i in known[b].nonzero()[0]:
                t, v = types[b, i], values[b, i]
                if fresh[b, i] and ((t >= 0 and prev_t >= 0 and not reach[min(i - prev_i, kmax), prev_t, t])
                                    or 0 <= v <= last_pos):
                    bad[b, i] = True
                    continue
                prev_i, prev_t = i, t
                last_pos = -1 if t == bar else max(last_pos, v)
        return torch.from_numpy(bad).to(x.device)


def nearest_known(known: Tensor) -> tuple[Tensor, Tensor]:
    """(B, L) bool -> indices (B, L) of the nearest True strictly left of each slot (-1 if none)
    and strictly right of it (L if none)."""
    B, L = known.shape
    pos = torch.arange(L, device=known.device).expand(B, L)
    left = torch.where(known, pos, -1).cummax(1).values  # includes the slot itself: shift by one
    right = torch.where(known, pos, L).flip(1).cummin(1).values.flip(1)
    return (torch.cat([torch.full_like(left[:, :1], -1), left[:, :-1]], 1),
            torch.cat([right[:, 1:], torch.full_like(right[:, :1], L)], 1))


def remi_grammar(vocab: Mapping[str, int], max_steps: int = 64) -> Grammar | None:
    """The grammar of a REMI vocabulary (token -> id); None if it lacks Bar, Position or Pitch."""
    kinds = {ALIASES.get(k, k) for k in (name.split("_", 1)[0] for name in vocab)}
    if not {"Bar", "Position", "Pitch"} <= kinds:
        return None
    note = [k for k in NOTE_TYPES if k in kinds]
    names = ["Bar", "Position", *note, "start"]
    index = {k: i for i, k in enumerate(names)}
    step = torch.zeros(len(names), len(names), dtype=torch.bool)

    def allow(a: str, *bs: str) -> None:
        for b in bs:
            step[index[a], index[b]] = True

    allow("start", "Bar")
    allow("Bar", "Bar", "Position")
    allow("Position", note[0])
    for a, b in zip(note, note[1:], strict=False):
        allow(a, b)
    allow(note[-1], note[0], "Position", "Bar")
    reach = [torch.eye(len(names), dtype=torch.bool)]
    for _ in range(max_steps):
        reach.append((reach[-1].float() @ step.float()) > 0)
    type_of = torch.full((max(vocab.values()) + 1,), -1, dtype=torch.long)
    for name, i in vocab.items():
        kind = name.split("_", 1)[0]
        kind = ALIASES.get(kind, kind)
        if kind in index and kind != "start":
            type_of[i] = index[kind]
    return Grammar(type_of, torch.stack(reach), index["start"])
