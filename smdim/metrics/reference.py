"""Ground-truth pieces for OA: a deterministic sample of a split, cropped to the generated length.

Generated pieces are `L` tokens long while a test song is thousands; features such as pitch range
or used-pitch count grow with length, so comparing a 512-token sample to whole songs would measure
length, not quality. Ground-truth pieces are therefore cropped to the same number of tokens: a
window of `length` tokens starting at a Bar token chosen at random (seeded), as training crops are
drawn (with BPE: at any id that starts with a Bar, `bar_id` being that set of ids), or the first `length` tokens (`start="start"`). Pieces shorter than the window stay whole
in the main comparison; OA vs length leaves them out (`at_least`), so an L-token sample is only
ever compared with L-token windows.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import symusic

CropStart = Literal["bar_random", "start"]


def select_pieces(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """Up to `n` rows (all if None), the same ones for the same seed whatever the shard order."""
    df = df.sort_values(["dataset", "piece_id"], kind="stable").reset_index(drop=True)
    if n is None or len(df) <= n:
        return df
    idx = np.sort(np.random.default_rng(seed).choice(len(df), size=n, replace=False))
    return df.iloc[idx].reset_index(drop=True)


def at_least(df: pd.DataFrame, length: int) -> pd.DataFrame:
    """The rows whose token list has at least `length` tokens."""
    return df[[len(t) >= length for t in df["tokens"]]]


def crop_ids(
    ids: Sequence[int],
    length: int | None,
    rng: np.random.Generator,
    *,
    bar_id: int | Collection[int] | None = None,
    start: CropStart = "bar_random",
) -> list[int]:
    """A `length`-token window of `ids` (whole if shorter or length None), see the module doc."""
    ids = list(ids)
    if length is None or len(ids) <= length:
        return ids
    first = 0
    if start == "bar_random":
        arr = np.asarray(ids)
        if bar_id is not None:
            bars = sorted(bar_id) if isinstance(bar_id, Collection) else [bar_id]
            cands = np.flatnonzero(np.isin(arr[: len(ids) - length + 1], bars))
        else:
            cands = np.arange(len(ids) - length + 1)
        if len(cands):
            first = int(rng.choice(cands))
    return ids[first : first + length]


def crop_scores(
    token_lists: Sequence[Sequence[int]],
    length: int | None,
    decode: Callable[[list[int]], symusic.Score],
    seed: int,
    *,
    bar_id: int | Collection[int] | None = None,
    start: CropStart = "bar_random",
) -> list[symusic.Score]:
    """Crop every token list (seeded by `seed` and `length`) and decode it to a Score."""
    rng = np.random.default_rng([seed, length or 0])
    return [decode(crop_ids(ids, length, rng, bar_id=bar_id, start=start)) for ids in token_lists]
