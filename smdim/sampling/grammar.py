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

With BPE a token stands for a run of base tokens (smdim.tokenization.bpe). `bpe_grammar` runs the
same automaton on BPE tokens: a token may stand where its first base token may, and what follows
it is what may follow its last. Its automaton type is that (first, last) pair, and the pairs'
transitions are again a plain automaton, so `Grammar` works on it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

NOTE_TYPES = ("Pitch", "Velocity", "Duration")
SLACK = -2  # automaton type of the slack token (Grammar.with_slack)
ALIASES = {"PitchDrum": "Pitch"}


@dataclass(frozen=True)
class Grammar:
    """Token types and k-step reachability of the REMI automaton over a vocabulary."""

    type_of: Tensor  # (V,) long: automaton type of each token id; -1 for wildcards, SLACK for slack
    reach: Tensor  # (K+1, T, T) bool: reach[k, a, b] = b can stand exactly k tokens after a
    start: int  # the virtual type before the first token
    has_slack: bool = False  # a token of type SLACK exists (with_slack): allowed() rates it

    def to(self, device: torch.device | str) -> Grammar:
        """Same grammar with tables on `device`."""
        return Grammar(self.type_of.to(device), self.reach.to(device), self.start, self.has_slack)

    def with_slack(self, slack_id: int) -> Grammar:
        """The grammar of a model trained with slack tokens (`slack_id`): they decode to nothing, so
        the automaton reads through them, and a gap of k slots holds at most k tokens."""
        type_of = self.type_of.clone()
        type_of[slack_id] = SLACK
        # at most k: any j in 1..k real tokens, the other slots slack (reach[0] is the identity).
        at_most = torch.cat([self.reach[:1], self.reach[1:].cummax(0).values])
        return Grammar(type_of, at_most, self.start, has_slack=True)

    def _steps(self, d: Tensor) -> Tensor:
        # Beyond the table's length reachability is periodic-stable: every long gap is completable.
        return d.clamp(max=self.reach.shape[0] - 1)

    def allowed(self, x: Tensor, known: Tensor) -> Tensor:
        """(B, L, V) bool: tokens each slot may take so that its gaps to the known tokens of x
        (B, L) on either side can still be completed."""
        B, L = x.shape
        T = self.reach.shape[1]
        types = self.type_of[x]  # (B, L), -1 = wildcard, SLACK = read through
        slack = known & (types == SLACK)
        # Slots up to each index that real tokens may use (known slack takes none): distances
        # between tokens count these, so a gap holding slack has that much less room.
        room = (~slack).long().cumsum(1)  # (B, L)
        left_idx, right_idx = nearest_known(known & ~slack)  # the virtual start is index -1
        room_left = torch.where(left_idx >= 0, room.gather(1, left_idx.clamp(min=0)), 0)
        room_right = room.gather(1, right_idx.clamp(max=L - 1))
        left_t = torch.where(left_idx >= 0, types.gather(1, left_idx.clamp(min=0)), self.start)
        ok = self.reach[self._steps(room - room_left), left_t.clamp(min=0)]  # (B, L, T)
        ok |= (left_t < 0)[..., None]  # a wildcard on the left constrains nothing
        right_t = torch.where(right_idx < L, types.gather(1, right_idx.clamp(max=L - 1)), -1)
        to_right = self.reach[self._steps(room_right - room)]  # (B, L, T, T)
        to_right = to_right.gather(3, right_t.clamp(min=0)[..., None, None].expand(B, L, T, 1))[..., 0]
        ok &= to_right | (right_t < 0)[..., None]
        token_ok = ok.gather(2, self.type_of.clamp(min=0).expand(B, L, -1))  # (B, L, V)
        token_ok |= self.type_of == -1  # wildcards are always allowed
        if self.has_slack:
            # Slack here leaves one slot fewer between the known tokens on either side.
            gap = self.reach[self._steps(room_right - room_left - 1), left_t.clamp(min=0)]  # (B, L, T)
            fits = gap.gather(2, right_t.clamp(min=0)[..., None])[..., 0]  # (B, L)
            fits |= (left_t < 0) | (right_t < 0)
            token_ok[..., self.type_of == SLACK] = fits[..., None]
        return token_ok

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
        slack = known & (types == SLACK)
        # Slots a stretch's real tokens may use: its length less the slack already in it.
        room = np.cumsum(~slack, axis=1)
        for b in range(x.shape[0]):
            prev_i, prev_t, last_pos = -1, self.start, -1
            for i in (known[b] & ~slack[b]).nonzero()[0]:
                t, v = types[b, i], values[b, i]
                d = room[b, i] - (room[b, prev_i] if prev_i >= 0 else 0)
                fits = t < 0 or prev_t < 0 or bool(reach[min(d, kmax), prev_t, t])
                if fresh[b, i] and (not fits or 0 <= v <= last_pos):
                    bad[b, i] = True
                    continue
                if not fits:  # two known tokens only part because of slack drawn between them now
                    bad[b, prev_i + 1 : i] |= slack[b, prev_i + 1 : i] & fresh[b, prev_i + 1 : i]
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


def _kind(name: str) -> str:
    kind = name.split("_", 1)[0]
    return ALIASES.get(kind, kind)


def _automaton(kinds: set[str]) -> tuple[dict[str, int], Tensor] | None:
    """Type index (Bar first, `start` last) and one-step transitions (T, T) of the base automaton."""
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
    return index, step


def _reach(step: Tensor, max_steps: int, last: Tensor | None = None) -> Tensor:
    """(K+1, T, T) k-step reachability; intermediate types go through `step`, the last one through
    `last` (default `step`), so a last step may land on a type that only known tokens have."""
    last = step if last is None else last
    reach = [torch.eye(step.shape[0], dtype=torch.bool)]
    inner = reach[0]
    for _ in range(max_steps):
        reach.append((inner.float() @ last.float()) > 0)
        inner = (inner.float() @ step.float()) > 0
    return torch.stack(reach)


def remi_grammar(vocab: Mapping[str, int], max_steps: int = 64) -> Grammar | None:
    """The grammar of a REMI vocabulary (token -> id); None if it lacks Bar, Position or Pitch."""
    built = _automaton({_kind(name) for name in vocab})
    if built is None:
        return None
    index, step = built
    type_of = torch.full((max(vocab.values()) + 1,), -1, dtype=torch.long)
    for name, i in vocab.items():
        kind = _kind(name)
        if kind in index and kind != "start":
            type_of[i] = index[kind]
    return Grammar(type_of, _reach(step, max_steps), index["start"])


def bpe_grammar(tokens: Sequence[Sequence[str]], usable: Tensor, max_steps: int = 64) -> Grammar | None:
    """The grammar over BPE ids: `tokens` (V) gives each id's base token names, `usable` (V,) bool
    the ids a free slot may take (not banned). None if the base vocabulary lacks Bar, Position or
    Pitch.

    Each id's type is the (first, last) pair of its modelled base types (an id with none is a
    wildcard). Pair p may follow pair q when the base automaton lets first(p) follow last(q).
    Paths through free slots only use pairs some usable id has, so a gap judged completable can
    be filled with tokens that are not banned.
    """
    built = _automaton({_kind(name) for names in tokens for name in names})
    if built is None:
        return None
    index, base_step = built
    pairs: dict[tuple[int, int], int] = {}
    type_of = torch.full((len(tokens),), -1, dtype=torch.long)
    for i, names in enumerate(tokens):
        modelled = [index[k] for k in map(_kind, names) if k in index]
        if modelled:
            type_of[i] = pairs.setdefault((modelled[0], modelled[-1]), len(pairs))
    start = len(pairs)
    first = torch.tensor([p[0] for p in pairs] + [index["start"]])  # the virtual start: (start, start)
    last = torch.tensor([p[1] for p in pairs] + [index["start"]])
    step = base_step[last][:, first]  # (P+1, P+1): q -> p when first(p) may follow last(q)
    avail = torch.zeros(start + 1, dtype=torch.bool)
    avail[type_of[usable & (type_of >= 0)]] = True
    return Grammar(type_of, _reach(step & avail, max_steps, last=step), start)
