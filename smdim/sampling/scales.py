"""Scales for the `scale` sampling constraint: 'C:major', 'D:dorian', 'C:pentatonic' -> pitch classes."""

from __future__ import annotations

from smdim.errors import SmdimError
from smdim.tokenization.keys import SCALES, tonic_class

AUTO = "auto"  # scale: the key each piece's own first pitches set (smdim.sampling.key)


def pitch_classes(scale: str) -> frozenset[int]:
    """'D:dorian' -> {2, 4, 5, 7, 9, 11, 0}; one-line error naming what is allowed."""
    tonic, sep, mode = scale.partition(":")
    mode = mode.strip().lower()
    root = tonic_class(tonic)
    if not sep or root is None or mode not in SCALES:
        raise SmdimError(
            f"scale {scale!r}: expected TONIC:MODE, e.g. C:major, F#:minor, C:pentatonic; "
            f"modes: {', '.join(SCALES)}"
        )
    return frozenset((root + step) % 12 for step in SCALES[mode])
