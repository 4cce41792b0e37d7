"""Tables from any metrics JSON, by its keys: no metric is named here except for friendlier labels.

Confidence intervals are found by their key names and shown next to their value, whichever way the
evaluation nests them: `oa_ci_low: {average: ..}`, `oa: {average_ci_low: ..}`,
`oa: {average: {value: .., ci_low: .., ci_high: ..}}`, `.. {ci: {low: .., high: ..}}` or
`.. {ci: [low, high]}` all give the cell `oa.average` with its interval.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

Path_ = tuple[str, ...]

# A key segment naming a CI bound: "ci_low", "average_ci_high", "oa_ci_lo", "ci-upper", ...
_BOUND = re.compile(r"^(?P<base>.*?)[_.-]?ci[_.-]?(?P<side>low|lo|lower|high|hi|upper)$", re.IGNORECASE)
_CI_LIST = re.compile(r"^(?P<base>.*?)[_.-]?ci$", re.IGNORECASE)  # "ci": [low, high]
_SIDE = {"low": 0, "lo": 0, "lower": 0, "high": 1, "hi": 1, "upper": 1}
# The point estimate's key when a value and its interval share a mapping.
VALUE_KEYS = ("value", "mean", "estimate", "point", "median")

# Friendlier names for keys we know; anything else shows its key.
LABELS = {
    "oa": "generated vs test",
    "oa_ceiling": "ceiling: train vs test",
    "oa_vs_length": "generated vs test",
    "oa_ceiling_vs_length": "ceiling: train vs test",
    "in_average": "in the average",
}
TITLES = {
    "oa": "Overlapping area (OA) per attribute: higher = closer to the test set; the ceiling is real music",
    "oa_vs_length": "Average OA vs generated length (tokens)",
    "memorisation": "Melody memorisation vs the train split",
}


@dataclass(frozen=True)
class Cell:
    """A metric value with its confidence interval when the evaluation gives one."""

    value: Any
    low: float | None = None
    high: float | None = None


@dataclass
class Table:
    """Rows of cells under named columns; `name` is the metrics key it came from."""

    name: str
    title: str
    columns: list[str]
    rows: list[tuple[str, list[Cell | None]]] = field(default_factory=list)


def _leaves(obj: Any, path: Path_ = ()) -> Iterator[tuple[Path_, Any]]:
    """(path, scalar) for every leaf; a two-number list under a `*ci` key yields both bounds."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _leaves(v, (*path, str(k)))
    elif isinstance(obj, (list, tuple)):
        m = _CI_LIST.match(path[-1]) if path else None
        if m and len(obj) == 2 and all(isinstance(v, (int, float)) for v in obj):
            base = [m["base"]] if m["base"] else []
            yield (*path[:-1], *base, "ci_low"), obj[0]
            yield (*path[:-1], *base, "ci_high"), obj[1]
        # other lists (per-piece values) are not table material
    elif obj is None or isinstance(obj, (str, int, float, bool)):
        yield path, obj


def _bound(path: Path_) -> tuple[Path_, int] | None:
    """(base path, 0 = low / 1 = high) if `path` names a CI bound, else None."""
    for i, seg in enumerate(path):
        if seg.lower() == "ci" and i + 1 < len(path) and path[i + 1].lower() in _SIDE:
            return (*path[:i], *path[i + 2:]), _SIDE[path[i + 1].lower()]
        m = _CI_LIST.match(seg)  # {oa_ci: {average: {lo: .., hi: ..}}} -> oa.average
        if m and m["base"] and i < len(path) - 1 and path[-1].lower() in _SIDE:
            return (*path[:i], m["base"], *path[i + 1:-1]), _SIDE[path[-1].lower()]
        m = _BOUND.match(seg)
        if m:
            base = [m["base"]] if m["base"] else []
            return (*path[:i], *base, *path[i + 1:]), _SIDE[m["side"].lower()]
    return None


def cells(metrics: Mapping[str, Any]) -> dict[Path_, Cell]:
    """Every metric as path -> Cell, CI bounds folded into the cell they belong to."""
    values: dict[Path_, Any] = {}
    bounds: dict[Path_, list[float | None]] = {}
    for path, v in _leaves(metrics):
        b = _bound(path)
        if b is not None and isinstance(v, (int, float)):
            bounds.setdefault(b[0], [None, None])[b[1]] = v
        else:
            values[path] = v
    # {average: {value: x, ci_low: ..}}: the value's path is its parent's.
    for path in list(values):
        if path[-1] in VALUE_KEYS and path[:-1] in bounds and path[:-1] not in values:
            values[path[:-1]] = values.pop(path)
    # {generated: {metric: {mean: .., sd: .., n: ..}}}: one "mean ± sd" cell per metric.
    folded: dict[Path_, Any] = {}
    for path, v in values.items():
        stats = path[:-1]
        if path[-1] == "mean":
            sd = values.get((*stats, "sd"))
            folded[stats] = f"{fmt(v)} ± {fmt(sd)}" if isinstance(sd, (int, float)) else v
        elif not (path[-1] in ("sd", "n") and (*stats, "mean") in values):
            folded[path] = v
    values = folded
    out = {p: Cell(v, *bounds.get(p, (None, None))) for p, v in values.items()}
    for p, (lo, hi) in bounds.items():  # bounds without a value still show
        out.setdefault(p, Cell(None, lo, hi))
    return out


def tables(metrics: Mapping[str, Any]) -> list[Table]:
    """One table per top-level mapping (same-row mappings merged as columns), scalars in `summary`."""
    found = cells(metrics)
    groups: dict[str, dict[Path_, Cell]] = {}
    summary = Table("summary", "Headline (average OA x usable rate) and counts", ["value"])
    for path, cell in found.items():
        if len(path) == 1:
            summary.rows.append((path[0], [cell]))
        else:
            groups.setdefault(path[0], {})[path[1:]] = cell
    result: list[Table] = []
    singles: dict[frozenset[str], list[tuple[str, dict[Path_, Cell]]]] = {}  # same rows -> merged
    for name, sub in groups.items():
        depths = {len(p) for p in sub}
        if depths == {1}:
            singles.setdefault(frozenset(p[0] for p in sub), []).append((name, sub))
        elif depths == {2}:  # {column: {row: v}}, e.g. {generated: {metric: v}, test: {metric: v}}
            cols = list(dict.fromkeys(p[0] for p in sub))
            rows = list(dict.fromkeys(p[1] for p in sub))
            result.append(Table(name, TITLES.get(name, name), cols,
                                [(r, [sub.get((c, r)) for c in cols]) for r in rows]))
        else:
            result.append(Table(name, TITLES.get(name, name), ["value"],
                                [(".".join(p), [c]) for p, c in sub.items()]))
    # A mapping over some of another's rows joins it as a column (e.g. in_average beside oa).
    for key in sorted(singles, key=len):
        bigger = [k for k in singles if k != key and key < k]
        if bigger:
            singles[bigger[0]] += singles.pop(key)
    for members in singles.values():
        # The shortest key names the table and comes first: oa, then oa_ceiling.
        members.sort(key=lambda m: (len(m[0]), m[0]))
        name, first = members[0]
        rows = list(dict.fromkeys(p[0] for _, sub in members for p in sub))
        result.append(Table(name, TITLES.get(name, name), [LABELS.get(n, n) for n, _ in members],
                            [(r, [sub.get((r,)) for _, sub in members]) for r in rows]))
    # Known tables first in TITLES order (the OA table is the headline), the scalars last.
    order = list(TITLES)
    result.sort(key=lambda t: order.index(t.name) if t.name in order else len(order))
    return ([summary] if summary.rows else []) + result  # the headline is a scalar: first


def fmt(v: Any) -> str:
    """A number for a table: 3 decimals below 1000, whole above; anything else as text."""
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v).lower()
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return str(v)
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.3g}" if 0 < abs(v) < 0.001 else f"{v:.3f}"
    return str(v)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> {"a.b": leaf}; lists stay whole (params such as `lengths`)."""
    if not isinstance(obj, Mapping):
        return {prefix: obj} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(flatten(v, key) if isinstance(v, Mapping) and v else {key: v})
    return out
