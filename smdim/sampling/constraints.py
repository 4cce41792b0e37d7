"""Sampling constraints as logit masks over a REMI vocabulary: grammar, scale, pitch range, polyphony.

The REMI grammar (smdim.sampling.grammar) keeps token streams well formed. The scale and pitch
range bans guard against pitch outliers far outside the training range and a pitch-range or key
the user asks for; the polyphony cap against over-dense vertical stacking (both failure cases
the SMDIM paper reports).

Polyphony in REMI: an onset is `Position_p` followed by (Pitch, Velocity, Duration) triples
until the next Position or Bar token, so "notes sounding together at an onset" = the number of
Pitch tokens between a Position token and the next Position/Bar token. Because diffusion unmasks
in any order, the onset of a still-masked slot is not known yet. We count per *segment*: the
stretch between consecutive known Bar/Position tokens. A masked slot whose segment already holds
`max_polyphony` known Pitch tokens may not become a Pitch, and pitches drawn in the same step
beyond the cap (left to right) are redrawn as non-pitch tokens (`excess_pitches`). A masked slot
that later becomes a Position/Bar only splits a segment, so counts never grow behind our back:
the cap holds exactly in the final sequence. The approximation is on the conservative side: while
masks remain, one segment may span several future onsets, so a pitch can be refused that the
finished sequence would have allowed (and a Position-less stretch after a Bar is capped too).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from smdim.errors import SmdimError
from smdim.sampling.grammar import Grammar, bpe_grammar, nearest_known, remi_grammar
from smdim.sampling.key import KeyLock
from smdim.sampling.scales import AUTO, pitch_classes
from smdim.tokenization.bpe import base_tokens, is_bpe
from smdim.tokenization.keys import pitch_class_counts

SPECIAL_PREFIXES = ("PAD_", "BOS_", "EOS_", "MASK_", "SEP_", "SLACK_")

log = logging.getLogger("smdim.sampling")


@dataclass(frozen=True)
class Constraints:
    """Token masks over the vocabulary; `apply` turns them into -inf logits."""

    banned: Tensor  # (V,) bool: never sampled (special tokens, out-of-range or out-of-scale pitches)
    is_pitch: Tensor  # (V,) bool: Pitch_* tokens
    is_boundary: Tensor  # (V,) bool: Bar_* and Position_* tokens (delimit an onset)
    max_polyphony: int | None = None  # max Pitch tokens per onset (None = no cap)
    grammar: Grammar | None = None  # REMI token-type transitions (None = any order)
    position_of: Tensor | None = None  # (V,) long: value of each Position token, -1 for others;
    # with the grammar on, Positions rise within a bar (REMI time never goes back)
    key: KeyLock | None = None  # scale "auto": each piece keeps to the key of its first pitches

    def to(self, device: torch.device | str) -> Constraints:
        """Same constraints with masks on `device`."""
        return Constraints(
            self.banned.to(device), self.is_pitch.to(device), self.is_boundary.to(device), self.max_polyphony,
            self.grammar.to(device) if self.grammar is not None else None,
            self.position_of.to(device) if self.position_of is not None else None,
            self.key.to(device) if self.key is not None else None,
        )

    def position_order(self, x: Tensor, known: Tensor) -> Tensor:
        """(B, L, V) bool: Position tokens a slot may not take, because the nearest known Position
        on its left (in the same bar) is not earlier or the one on its right is not later."""
        L = x.shape[1]
        pos_val = self.position_of[x].masked_fill(~known, -1)  # (B, L)
        left, right = nearest_known(known & self.is_boundary[x])  # nearest known Bar or Position
        left_val = torch.where(left >= 0, pos_val.gather(1, left.clamp(min=0)), -1)  # Bar/start: -1
        right_val = torch.where(right < L, pos_val.gather(1, right.clamp(max=L - 1)), -1)
        right_val = right_val.masked_fill(right_val < 0, torch.iinfo(torch.long).max)  # Bar/end: none
        v = self.position_of  # (V,)
        return (v >= 0) & ((v <= left_val[..., None]) | (v >= right_val[..., None]))

    def _segment_pitch_counts(self, x: Tensor, counted: Tensor) -> tuple[Tensor, Tensor]:
        """Segment id (B, L) of each slot and the number of `counted` pitches per segment (B, L+1)."""
        known_boundary = counted & self.is_boundary[x]  # (B, L)
        seg = known_boundary.long().cumsum(1)  # (B, L), 0..L
        pitches = (counted & self.is_pitch[x]).long()
        counts = torch.zeros(x.shape[0], x.shape[1] + 1, dtype=torch.long, device=x.device)
        counts.scatter_add_(1, seg, pitches)
        return seg, counts

    def pitch_blocked(self, x: Tensor, known: Tensor) -> Tensor:
        """(B, L) bool: masked slots whose segment already holds max_polyphony known pitches."""
        if self.max_polyphony is None:
            return torch.zeros_like(known)
        seg, counts = self._segment_pitch_counts(x, known)
        return ~known & (counts.gather(1, seg) >= self.max_polyphony)

    def over_cap(self, x: Tensor, known: Tensor) -> Tensor:
        """(B, L) bool: slots whose segment holds more than max_polyphony known pitches (a remasked
        Bar/Position merges two segments: the remasking sampler keeps those that would overfill)."""
        if self.max_polyphony is None:
            return torch.zeros_like(known)
        seg, counts = self._segment_pitch_counts(x, known)
        return counts.gather(1, seg) > self.max_polyphony

    def remaskable(self, x: Tensor, remask: Tensor, mask_id: int) -> Tensor:
        """`remask` (B, L) less the Bar/Position tokens whose removal would merge two onsets over
        the polyphony cap (the remasking samplers keep those)."""
        if self.max_polyphony is None:
            return remask
        after = x.masked_fill(remask, mask_id)
        return remask & ~(self.over_cap(after, after != mask_id) & self.is_boundary[x])

    def apply(self, logits: Tensor, x: Tensor, known: Tensor,
              key_context: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Logits (B, L, V) with disallowed tokens set to -inf, given the current x (B, L).

        key_context: (x, known) of the whole piece where x is a window of it (streaming), so the
        key lock reads every pitch decided so far."""
        banned = self.banned  # (V,), or (B, 1, V) with a key per piece
        if self.key is not None:
            banned = banned | self.key.banned(*(key_context or (x, known)))[:, None, :]
        logits = logits.masked_fill(banned, float("-inf"))
        if self.grammar is not None:
            ok = self.grammar.allowed(x, known) & ~banned  # (B, L, V)
            if self.position_of is not None:
                # The order rule is conservative (a Bar may still come between): where it would
                # leave a slot nothing, the grammar alone decides.
                ordered = ok & ~self.position_order(x, known)
                modelled = (ordered & (self.grammar.type_of >= 0)).any(-1, keepdim=True)
                ok = torch.where(modelled, ordered, ok)
            # A slot the grammar cannot fill under the bans (e.g. an infill with Bar tokens banned)
            # keeps every token the bans allow.
            ok = torch.where(ok.any(-1, keepdim=True), ok, ~banned)
            logits = logits.masked_fill(~ok, float("-inf"))
        if self.max_polyphony is not None:
            blocked = self.pitch_blocked(x, known)  # (B, L)
            logits = logits.masked_fill(blocked[..., None] & self.is_pitch, float("-inf"))
        return logits

    def excess_pitches(self, x: Tensor, known_before: Tensor, new: Tensor) -> Tensor:
        """(B, L) bool: pitches drawn this step (`new`) that push their segment over the cap."""
        if self.max_polyphony is None:
            return torch.zeros_like(new)
        known = known_before | new
        seg, old_counts = self._segment_pitch_counts(x, known & ~new)
        new_pitch = new & self.is_pitch[x]  # (B, L)
        cs = new_pitch.long().cumsum(1)  # (B, L)
        # Running count inside each segment = cumsum minus its value just before the segment.
        before = torch.full_like(old_counts, x.shape[1] + 1)
        before.scatter_reduce_(1, seg, cs - new_pitch.long(), reduce="amin")
        rank = cs - before.gather(1, seg)  # 1-based rank of each new pitch in its segment
        return new_pitch & (old_counts.gather(1, seg) + rank > self.max_polyphony)


def _vocab(tokenizer_or_vocab) -> tuple[dict[str, int], list[str], list[tuple[str, ...]] | None]:
    """(base vocab, special token names, base token names of every id if the ids are BPE ids)."""
    if isinstance(tokenizer_or_vocab, Mapping):
        vocab = dict(tokenizer_or_vocab)
        specials = [k for k in vocab if k.startswith(SPECIAL_PREFIXES)]
        return vocab, specials, None
    vocab = dict(tokenizer_or_vocab.vocab)
    specials = list(tokenizer_or_vocab.special_tokens)
    return vocab, specials, base_tokens(tokenizer_or_vocab) if is_bpe(tokenizer_or_vocab) else None


def make_constraints(
    tokenizer_or_vocab,
    *,
    pitch_range: Sequence[int] | None = None,
    max_polyphony: int | None = None,
    ban_special: bool = True,
    ban_prefixes: Sequence[str] = (),
    scale: str | None = None,
    grammar: bool = True,
    slack_id: int | None = None,
    scale_notes: int = 8,
) -> Constraints:
    """Constraints for a miditok tokenizer (or its vocab dict token -> id).

    pitch_range: inclusive [lo, hi] MIDI pitches allowed for Pitch_* tokens (None = all).
    max_polyphony: max Pitch tokens per REMI onset (None = no cap).
    ban_special: never sample PAD/BOS/EOS/MASK/SEP (they decode to nothing).
    ban_prefixes: token types never sampled, e.g. ("Bar_",) so an infill keeps the bar count.
    scale: 'TONIC:MODE' (e.g. 'C:major', 'C:pentatonic'): only Pitch tokens in it (None = any);
    'auto': each piece keeps to the scale its first `scale_notes` decided pitches fit (smdim.sampling.key).
    grammar: follow the REMI token-type grammar (smdim.sampling.grammar).
    slack_id: the SLACK token of a model trained with slack (diffusion.slack): sampled like any
    token, and the grammar reads through it.

    With a BPE tokenizer every mask covers all BPE ids: an id counts as a pitch, a boundary or
    banned when any base token it stands for does (e.g. a merged note with an out-of-range pitch
    is banned); the grammar runs on BPE token types and max_polyphony is refused.
    """
    in_scale = pitch_classes(scale) if scale is not None and scale != AUTO else None
    vocab, specials, bpe_tokens = _vocab(tokenizer_or_vocab)
    # Every id with the base tokens it stands for: itself in plain REMI, a run of them with BPE.
    per_id = bpe_tokens if bpe_tokens is not None else [(name,) for name in vocab]
    ids = range(len(per_id)) if bpe_tokens is not None else vocab.values()
    size = max(ids) + 1
    banned = torch.zeros(size, dtype=torch.bool)
    is_pitch = torch.zeros(size, dtype=torch.bool)
    is_boundary = torch.zeros(size, dtype=torch.bool)
    position_of = torch.full((size,), -1, dtype=torch.long)
    for i, names in zip(ids, per_id, strict=True):
        for name in names:  # an id is banned when any base token it holds is
            kind, _, value = name.partition("_")
            if kind == "Pitch":
                is_pitch[i] = True
                if pitch_range is not None and not pitch_range[0] <= int(value) <= pitch_range[1]:
                    banned[i] = True
                if in_scale is not None and int(value) % 12 not in in_scale:
                    banned[i] = True
            elif kind in ("Bar", "Position"):
                is_boundary[i] = True
                if kind == "Position":
                    position_of[i] = int(value)
            if ban_prefixes and name.startswith(tuple(ban_prefixes)):
                banned[i] = True
    if ban_special:
        for name in specials:
            banned[vocab[name]] = True
    if slack_id is not None:
        banned[slack_id] = False
    if (pitch_range is not None or scale is not None) and not (is_pitch & ~banned).any():
        raise SmdimError(f"pitch_range {list(pitch_range or [])} and scale {scale!r} together allow no "
                         "Pitch token of the vocabulary; widen the range")
    if max_polyphony is not None and max_polyphony < 1:
        raise SmdimError(f"max_polyphony must be >= 1 or null, got {max_polyphony}")
    if max_polyphony is not None and bpe_tokens is not None:
        # A BPE token can hold an onset boundary between its pitches, which the per-segment count
        # (module docstring) cannot split: the cap would not be exact, so it is refused.
        raise SmdimError(f"max_polyphony={max_polyphony} needs a plain REMI tokenizer; this model was trained "
                         "with BPE (tokenize.bpe_vocab): set sample.max_polyphony to null")
    if not (~banned & ~is_pitch).any():
        raise SmdimError("constraints ban every non-pitch token; check the tokenizer vocabulary")
    if scale_notes < 1:
        raise SmdimError(f"scale_notes must be >= 1, got {scale_notes}")
    key = None
    if scale == AUTO:
        counts = np.zeros((size, 12))
        counts[list(ids)] = pitch_class_counts(per_id)
        key = KeyLock.for_vocab(torch.from_numpy(counts), scale_notes)
    if not grammar:
        return Constraints(banned, is_pitch, is_boundary, max_polyphony, key=key)
    if bpe_tokens is None:
        rules = remi_grammar(vocab)
        if rules is not None and slack_id is not None:
            rules = rules.with_slack(slack_id)
        return Constraints(banned, is_pitch, is_boundary, max_polyphony, rules,
                           position_of if rules is not None else None, key)
    # BPE: token types through (first, last) base types (grammar.bpe_grammar). The rule that
    # Positions rise within a bar needs each token's single Position value; BPE tokens hold several
    # or none, so it is off and only miditok's validity check sees time going back.
    log.info("BPE tokenizer: grammar masks on BPE token types; the Position-order rule is off")
    rules = bpe_grammar(bpe_tokens, ~banned)
    if rules is not None and slack_id is not None:
        rules = rules.with_slack(slack_id)
    return Constraints(banned, is_pitch, is_boundary, max_polyphony, rules, key=key)
