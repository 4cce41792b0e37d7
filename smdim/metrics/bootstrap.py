"""Bootstrap confidence intervals of OA and the headline, over the generated pieces.

The reference set is fixed (its intra-set distances are the yardstick); the generated set is
resampled with replacement, unusable pieces included: a resample of N pieces draws from all N
generated files, its usable ones give the OA per attribute and their average, and its usable share
scales the headline (average OA x usable rate). The interval is the percentile interval of
`resamples` draws (seeded). Distances to the reference are computed once, resamples pick rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from smdim.metrics.oa import Support, intra_set_distances, mean_oa, overlap_area, pairwise_distances

LEVEL = 0.95  # two-sided coverage of the reported intervals


def interval(values: Sequence[float], level: float = LEVEL) -> dict[str, float]:
    """Percentile interval {"lo", "hi"} of bootstrap values."""
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(np.asarray(values, dtype=np.float64), [tail, 100 - tail])
    return {"lo": float(lo), "hi": float(hi)}


def bootstrap_oa(
    gen: Mapping[str, np.ndarray],
    ref: Mapping[str, np.ndarray],
    n_unusable: int,
    *,
    excluded: Sequence[str] = (),
    resamples: int = 1000,
    seed: int = 0,
    resolution: int = 10,
    support: Support = "data",
    level: float = LEVEL,
) -> dict[str, dict[str, float]]:
    """95% intervals of OA per attribute (keys of ref), "average" and "headline".

    gen[a]: (N_usable, D) features of the usable generated pieces; ref[a]: (N_ref, D);
    `n_unusable` generated pieces had no features (they count in the resampled usable rate).
    """
    names = list(ref)
    n_usable = len(next(iter(gen.values()))) if gen else 0
    n_total = n_usable + n_unusable
    if n_total == 0:
        raise ValueError("bootstrap_oa needs at least one generated piece")
    intra = {a: intra_set_distances(ref[a]) for a in names}
    inter = {a: pairwise_distances(gen[a], ref[a]) for a in names}  # (N_usable, N_ref)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {a: [] for a in [*names, "average", "headline"]}
    for _ in range(resamples):
        idx = rng.integers(0, n_total, n_total)
        idx = idx[idx < n_usable]  # the usable pieces drawn
        if len(idx) == 0:
            oa = {a: 0.0 for a in names}
        else:
            oa = {a: overlap_area(intra[a], inter[a][idx].ravel(), resolution=resolution, support=support)
                  for a in names}
        average = mean_oa(oa, excluded)
        for a in names:
            draws[a].append(oa[a])
        draws["average"].append(average)
        draws["headline"].append(average * len(idx) / n_total)
    return {k: interval(v, level) for k, v in draws.items()}
