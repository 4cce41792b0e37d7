"""Collection labels: which part of the corpus a piece comes from, for conditioning and per-collection OA.

The embedded corpus's piece ids start with their collection (`han1/...`, `chorales/bwv10.7`), so
its labels are `embedded/han1`, `embedded/chorales`; every other dataset is one collection.
"""

from __future__ import annotations

from collections.abc import Iterable


def collection_of(dataset: str, piece_id: str) -> str:
    """'embedded' + 'chorales/bwv10.7' -> 'embedded/chorales'; 'pop909' + '001' -> 'pop909'."""
    head, sep, _ = piece_id.partition("/")
    return f"{dataset}/{head}" if dataset == "embedded" and sep else dataset


def collection_index(names: Iterable[str]) -> dict[str, int]:
    """Sorted names -> indices 1..K (0 stays for "none", unconditional): the order saved in checkpoints."""
    return {name: i + 1 for i, name in enumerate(sorted(set(names)))}
