"""BPE over REMI: train miditok's BPE on base-token pieces, encode with it, and see through BPE ids.

A BPE id stands for a run of base REMI tokens (e.g. Velocity_91 Duration_0.4.8). Everything
downstream that looks at token meaning (bars, pitches, grammar, validity) asks this module what
an id stands for, so the same code serves plain REMI (every id stands for itself) and BPE.

Merges never cross a bar line: training sees one word per bar, each starting with its Bar token
(pieces start with a Bar), so no merge can put anything before a Bar. Hence a BPE id holds at most
one Bar, always as its first base token: bars start exactly at token boundaries, crops can start
at them, `keep_bars` cuts at them, and encoding a whole piece gives the same ids as encoding it bar
by bar. miditok's own per-bar split (`encode_ids_split="bar"`) gives the same guarantee but
prefixes every bar with a Metaspace marker, i.e. a vocabulary entry that decodes to no token at
all; we split ourselves and tell miditok not to ("no").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import miditok
import numpy as np
from miditok import TokSequence

from smdim.errors import SmdimError

BAR = "Bar_None"
NOTE_KINDS = ("Pitch", "PitchDrum")  # base token types that each start one note


def is_bpe(tokenizer: miditok.REMI) -> bool:
    """True when the tokenizer carries a trained BPE model (its ids are BPE ids)."""
    return tokenizer.is_trained


def bar_words(tokenizer: miditok.REMI, ids: Sequence[int]) -> list[str]:
    """Base ids of one piece -> one byte string per bar (what BPE trains and encodes on)."""
    ids = [int(i) for i in ids]
    bar = tokenizer[BAR]
    cuts = [i for i, t in enumerate(ids) if t == bar and i > 0]
    bounds = [0, *cuts, len(ids)]
    # miditok's own training iterator calls this private helper too: ids -> bytes before training.
    return [tokenizer._ids_to_bytes(ids[a:b], as_one_str=True) for a, b in zip(bounds, bounds[1:], strict=False)
            if b > a]


def train_bpe(tokenizer: miditok.REMI, pieces: Iterable[Sequence[int]], vocab_size: int) -> None:
    """Train BPE in place on `pieces` (base ids, normally the train split) up to `vocab_size` ids.

    Deterministic: Hugging Face's BPE trainer breaks frequency ties by the pair itself. Base ids
    keep their values (PAD stays 0); learned tokens get ids from the base size upwards.
    """
    words = [bar_words(tokenizer, p) for p in pieces]
    words = [w for w in words if w]
    if not words:
        raise SmdimError("tokenize.bpe_vocab: the train split has no tokens to learn BPE merges from")
    tokenizer.config.encode_ids_split = "no"  # we split per bar ourselves (module docstring)
    tokenizer.train(vocab_size=vocab_size, model="BPE", iterator=words)
    ids = set(tokenizer.vocab_model.values())
    if ids != set(range(len(tokenizer))) or any(tokenizer.vocab_model[tokenizer._vocab_base_id_to_byte[i]] != i
                                                 for i in tokenizer.vocab.values()):
        raise SmdimError("miditok BPE renumbered the base tokens; smdim needs them unchanged (miditok 3.1.0)")


def encode_bpe(tokenizer: miditok.REMI, pieces: Sequence[Sequence[int]]) -> list[list[int]]:
    """Base ids of each piece -> its BPE ids (one batched call to the trained model)."""
    seqs = [TokSequence(ids=[int(i) for i in p]) for p in pieces]
    nonempty = [s for s in seqs if len(s.ids)]
    if nonempty:
        tokenizer.encode_token_ids(nonempty)
    return [list(s.ids) for s in seqs]


def base_tokens(tokenizer: miditok.REMI) -> list[tuple[str, ...]]:
    """For every id 0..len(tokenizer)-1, the base token names it stands for, in order."""
    if not is_bpe(tokenizer):
        inv = {i: name for name, i in tokenizer.vocab.items()}
        return [(inv[i],) if i in inv else () for i in range(len(tokenizer))]
    # miditok's decoding table (model byte string -> base token names), built when it trains or loads.
    learned = tokenizer._vocab_learned_bytes_to_tokens
    table: list[tuple[str, ...]] = [()] * len(tokenizer)
    for byte_, i in tokenizer.vocab_model.items():
        table[i] = tuple(learned[byte_])
    return table


def base_ids(tokenizer: miditok.REMI) -> list[list[int]]:
    """For every id, the base ids it stands for (special tokens stand for themselves)."""
    vocab = tokenizer.vocab
    return [[vocab[name] for name in names] for names in base_tokens(tokenizer)]


def expand_ids(tokenizer: miditok.REMI, ids: Sequence[int]) -> list[int]:
    """BPE ids -> base ids. Ids outside the vocabulary are kept as they are (callers count them)."""
    table = base_ids(tokenizer)
    n = len(table)
    out: list[int] = []
    for i in ids:
        i = int(i)
        out.extend(table[i] if 0 <= i < n else (i,))
    return out


def note_counts(tokenizer: miditok.REMI) -> np.ndarray:
    """(V,) int64: notes each id starts = its number of Pitch_* (or PitchDrum_*) base tokens.

    1 for a plain Pitch token, 0 for Bar/Position/Velocity/Duration/special tokens, k for a BPE
    token holding k pitches. Sum it over a sequence's ids for its note count; divide a sequence's
    log-likelihood by that sum for a per-note likelihood comparable across tokenizers.
    """
    return np.array([sum(n.split("_", 1)[0] in NOTE_KINDS for n in names) for names in base_tokens(tokenizer)],
                    dtype=np.int64)


def bar_counts(tokenizer: miditok.REMI) -> np.ndarray:
    """(V,) int64: Bar tokens each id holds (0 or 1, see the module docstring)."""
    return np.array([sum(n.startswith("Bar_") for n in names) for names in base_tokens(tokenizer)],
                    dtype=np.int64)


def bar_start_ids(tokenizer: miditok.REMI) -> frozenset[int]:
    """Ids whose first base token is a Bar: where bars (and Bar-aligned crops) start.

    Plain REMI: {Bar_None}. BPE: also every merged token that begins with the Bar, e.g.
    (Bar_None, Position_0). These are exactly the ids that hold a Bar (module docstring), so
    counting them counts bars.
    """
    return frozenset(i for i, names in enumerate(base_tokens(tokenizer)) if names and names[0].startswith("Bar_"))
