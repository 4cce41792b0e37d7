"""Keys of token sequences: pitch classes per token, a key finder, and transposition.

`sample.key: prior` moves each generated piece to a tonic drawn from the train pieces' tonics.
The confidence sampler commits the most probable pitches first, so nearly every piece lands in
the corpus's two most common keys (C and G: 146 of 150 pieces, against 36 of the 81 test
pieces; docs/sampling_study.md, thirteenth round). Transposing keeps every interval, rhythm and
line, and gives the set the corpus's spread of keys back.

The key finder is the simplest that separates this corpus's keys: the scale, among the 12 major
and 12 harmonic-minor ones, that holds most of a piece's notes. A minor key is reported by its
relative major's tonic, so "tonic" below means the tonic of the piece's major-scale signature.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from smdim.errors import SmdimError

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
# The scales a key is read from (candidate_scales): a minor tune signs for its relative major.
KEY_MODES = {mode: SCALES[mode] for mode in ("major", "harmonic_minor")}
_LETTERS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def candidate_scales() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K, 12) membership of each candidate scale, (K, 12) tie-break weights, and (K,) the major
    tonic each one signs for (a harmonic minor on r: its relative major, r + 3).

    Ties are common (a pentatonic tune fits three major scales): among equally good scales the one
    whose tonic, then fifth, is most used wins, a two-term Krumhansl-style profile.
    """
    member, tie, tonic = [], [], []
    for mode, steps in KEY_MODES.items():
        for root in range(12):
            m = np.zeros(12)
            m[[(root + s) % 12 for s in steps]] = 1.0
            w = np.zeros(12)
            w[root] += 1e-2
            w[(root + 7) % 12] += 1e-3
            member.append(m)
            tie.append(w)
            tonic.append(root if mode == "major" else (root + 3) % 12)
    return np.stack(member), np.stack(tie), np.array(tonic)


_MEMBER, _TIE, _TONIC = candidate_scales()


def pitch_class_counts(names_per_id: Sequence[Sequence[str]]) -> np.ndarray:
    """(V, 12) how many pitches of each class every id holds (BPE ids may hold several)."""
    counts = np.zeros((len(names_per_id), 12))
    for i, names in enumerate(names_per_id):
        for name in names:
            kind, _, value = name.partition("_")
            if kind == "Pitch":
                counts[i, int(value) % 12] += 1
    return counts


def tonic_of(hist: np.ndarray) -> int | None:
    """Major-signature tonic (0 = C .. 11 = B) of a pitch-class histogram (12,); None without notes."""
    if hist.sum() <= 0:
        return None
    return int(_TONIC[int(np.argmax(_MEMBER @ hist + _TIE @ hist))])


def tonic_shares(pieces: Iterable[np.ndarray], counts: np.ndarray) -> list[float]:
    """Share of each tonic (12,) among the pieces (id arrays) that hold a note; uniform when none do."""
    tally = np.zeros(12)
    for ids in pieces:
        t = tonic_of(counts[np.asarray(ids, dtype=np.int64)].sum(0))
        if t is not None:
            tally[t] += 1
    return (tally / tally.sum() if tally.sum() else np.full(12, 1 / 12)).tolist()


def tonic_class(name: str) -> int | None:
    """'C', 'F#', 'Bb', 'a' -> 0, 6, 10, 9; None when `name` is not a letter with sharps or flats
    (the caller says what it expected: a key here, a scale's tonic in smdim.sampling.scales)."""
    n = name.strip()
    if not n or n[0].upper() not in _LETTERS or any(c not in "#b" for c in n[1:]):
        return None
    return (_LETTERS[n[0].upper()] + n.count("#") - n[1:].count("b")) % 12


def parse_tonic(name: str) -> int:
    """'C', 'F#', 'Bb' -> 0, 6, 10; a one-line error otherwise."""
    tonic = tonic_class(name)
    if tonic is None:
        raise SmdimError(f"key {name!r}: expected a tonic such as C, F#, Bb, or 'prior' (the train pieces' keys)")
    return tonic


class Transposer:
    """Moves REMI id sequences by semitones: every Pitch token to the pitch `shift` away.

    Plain REMI only: a BPE id merges several tokens, and its transposed sequence need not be one
    id of the vocabulary.
    """

    def __init__(self, vocab: dict[str, int]):
        self.pitch_of = {i: int(name.split("_", 1)[1]) for name, i in vocab.items() if name.startswith("Pitch_")}
        self.id_of = {p: i for i, p in self.pitch_of.items()}

    def shift_to(self, ids: Sequence[int], counts: np.ndarray, tonic: int) -> tuple[list[int], int]:
        """(ids moved to `tonic`, the shift used): the nearest octave placement (-6..+5 semitones,
        else the next one in range); unchanged when the piece has no notes or cannot move."""
        current = tonic_of(counts[np.asarray(ids, dtype=np.int64)].sum(0)) if len(ids) else None
        pitches = [self.pitch_of[i] for i in ids if i in self.pitch_of]
        if current is None or not pitches:
            return list(ids), 0
        d = (tonic - current) % 12
        used = set(pitches)
        for shift in sorted((d, d - 12, d + 12, d - 24), key=abs):
            if all(p + shift in self.id_of for p in used):
                return [self.id_of[self.pitch_of[i] + shift] if i in self.pitch_of else i for i in ids], shift
        return list(ids), 0
