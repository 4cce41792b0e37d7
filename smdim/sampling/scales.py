"""Scales for the `scale` sampling constraint: 'C:major', 'D:dorian', 'C:pentatonic' -> pitch classes."""

from __future__ import annotations

from smdim.errors import SmdimError
from smdim.tokenization.keys import tonic_class

# Semitones above the tonic. `pentatonic` is the Chinese gong mode (C D E G A from C); its other
# modes (shang, jue, zhi, yu) are the same five notes started elsewhere, e.g. A:yu = C:gong.
SCALES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "harmonic_minor": (0, 2, 3, 5, 7, 8, 11),
    "melodic_minor": (0, 2, 3, 5, 7, 9, 11),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "phrygian": (0, 1, 3, 5, 7, 8, 10),
    "lydian": (0, 2, 4, 6, 7, 9, 11),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "locrian": (0, 1, 3, 5, 6, 8, 10),
    "pentatonic": (0, 2, 4, 7, 9),
    "gong": (0, 2, 4, 7, 9),
    "shang": (0, 2, 5, 7, 10),
    "jue": (0, 3, 5, 8, 10),
    "zhi": (0, 2, 5, 7, 9),
    "yu": (0, 3, 5, 7, 10),
    "minor_pentatonic": (0, 3, 5, 7, 10),
    "blues": (0, 3, 5, 6, 7, 10),
    "chromatic": tuple(range(12)),
}
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
