"""How well-formed a token sequence is in REMI grammar."""

from __future__ import annotations

import miditok

from smdim.tokenization.bpe import base_ids


def token_error_rate(tokenizer: miditok.REMI, ids: list[int]) -> float:
    """Share of tokens that are ill-formed (0 = perfect).

    PAD/BOS/EOS/SLACK are framing and ignored; MASK or unknown ids count as one error each; the rest
    is checked by miditok's REMI grammar (token-type successions, time going back, duplicates).
    With BPE, each id is first expanded to the base tokens it stands for, and the share is over
    base tokens (the same unit with and without BPE).
    """
    framing = {tokenizer[f"{t}_None"] for t in ("PAD", "BOS", "EOS", "SLACK") if f"{t}_None" in tokenizer.vocab}
    kept = [int(i) for i in ids if int(i) not in framing]
    if not kept:
        return 0.0
    special = set(tokenizer.special_tokens_ids)
    n = len(tokenizer)
    musical = [i for i in kept if 0 <= i < n and i not in special]
    errors = len(kept) - len(musical)
    table = base_ids(tokenizer)
    base = [b for i in musical for b in table[i]]
    if base:
        # miditok's public tokens_errors() divides by a length that would ignore the MASKs.
        errors += tokenizer._tokens_errors([tokenizer[i] for i in base])
    return min(1.0, errors / max(len(kept) - len(musical) + len(base), 1))
