"""Audio of MIDI files, offline: FluidSynth with pretty_midi's General MIDI soundfont, or numpy.

Two renderers with one contract, `render(midi_path, sample_rate) -> mono float32 samples`:
- `fluidsynth`: the FluidSynth CLI (Debian package `fluidsynth`) with `TimGM6mb.sf2`, which ships
  inside pretty_midi; ~1 s for a 200 s song here.
- `synth`: decaying harmonics in numpy, so a machine without FluidSynth still gets audio.
`renderer="auto"` takes FluidSynth when it is on PATH and the soundfont exists, else `synth`.

Every clip is normalised to a fixed peak (default -3 dBFS), so none is silent or clipped, and
written by file suffix: `.wav` (16-bit PCM, stdlib) or `.ogg` (Vorbis) / `.flac` via soundfile.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smdim.errors import SmdimError
from smdim.io import atomic_path

RENDERERS = ("fluidsynth", "synth")
FORMATS = {".wav": "WAV", ".ogg": "OGG", ".flac": "FLAC"}
FLUIDSYNTH_GAIN = 0.8  # FluidSynth's master gain; the clip is normalised afterwards anyway
FLUIDSYNTH_TIMEOUT_S = 300.0
EMPTY_SECONDS = 1.0  # a piece without notes becomes this much silence (a playable, honest clip)
SILENCE_PEAK = 1e-3  # below -60 dBFS is dither/rounding noise, not music: never amplified to the peak
# libsndfile's Vorbis encoder crashed (segfault) on one 4.4 M-frame write here; blocks are safe.
WRITE_BLOCK = 8192


@dataclass(frozen=True)
class AudioInfo:
    """What render_audio wrote: the file, the renderer that ran and the clip's level."""

    path: Path
    renderer: str  # fluidsynth | synth
    seconds: float  # duration
    peak_dbfs: float  # -inf for a silent clip (a piece without notes)
    rms_dbfs: float


def soundfont_path() -> Path | None:
    """pretty_midi's bundled General MIDI soundfont (TimGM6mb.sf2), or None if absent."""
    try:
        import pretty_midi
    except ImportError:
        return None
    path = Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"
    return path if path.is_file() else None


def fluidsynth_executable() -> str | None:
    """The `fluidsynth` on PATH, or None."""
    return shutil.which("fluidsynth")


def choose_renderer(name: str = "auto") -> str:
    """'auto' -> 'fluidsynth' when it and the soundfont are available, else 'synth'."""
    if name not in ("auto", *RENDERERS):
        raise SmdimError(f"audio renderer {name!r}: expected auto, {' or '.join(RENDERERS)}")
    fluid_ok = fluidsynth_executable() is not None and soundfont_path() is not None
    if name == "fluidsynth" and not fluid_ok:
        raise SmdimError("renderer fluidsynth: `fluidsynth` is not on PATH or pretty_midi's TimGM6mb.sf2 "
                         "is missing; `apt-get install fluidsynth`, or use renderer auto / synth")
    if name == "auto":
        return "fluidsynth" if fluid_ok else "synth"
    return name


def missing_tools_note() -> str | None:
    """One line on what `auto` lacks for FluidSynth (None when nothing is missing)."""
    if fluidsynth_executable() is None:
        return "FluidSynth not found: audio is a simple numpy synthesis; `apt-get install fluidsynth` for GM sounds"
    if soundfont_path() is None:
        return "pretty_midi's TimGM6mb.sf2 not found: audio is a simple numpy synthesis"
    return None


def render_fluidsynth(midi_path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Mono float32 samples (n,) of `midi_path` rendered by the FluidSynth CLI."""
    exe, sf2 = fluidsynth_executable(), soundfont_path()
    if exe is None or sf2 is None:
        raise SmdimError("fluidsynth or TimGM6mb.sf2 not found; `apt-get install fluidsynth` or use renderer synth")
    with tempfile.TemporaryDirectory(prefix="smdim-fluidsynth-") as tmp:
        wav = Path(tmp) / "out.wav"
        cmd = [exe, "-ni", "-q", "-g", str(FLUIDSYNTH_GAIN), "-F", str(wav), "-r", str(sample_rate),
               str(sf2), str(midi_path)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=FLUIDSYNTH_TIMEOUT_S,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise SmdimError(f"{midi_path}: fluidsynth ran over {FLUIDSYNTH_TIMEOUT_S:.0f} s; "
                             "use renderer synth") from None
        if p.returncode != 0 or not wav.is_file():
            tail = " | ".join((p.stderr or p.stdout).strip().splitlines()[-3:]) or "(no output)"
            raise SmdimError(f"{midi_path}: fluidsynth exited {p.returncode}: {tail}")
        return read_wav(wav)


def render_synth(midi_path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Mono float32 samples (n,): every note as decaying harmonics (no soundfont needed)."""
    import symusic

    try:
        score = symusic.Score(str(midi_path)).to("second")
    except Exception as e:  # symusic raises plain RuntimeError/ValueError on bad files
        raise SmdimError(f"{midi_path}: cannot read MIDI ({e}); check the file") from None
    notes = [t.notes.numpy() for t in score.tracks if not t.is_drum and len(t.notes)]
    if not notes:
        return np.zeros(int(EMPTY_SECONDS * sample_rate), np.float32)
    start = np.concatenate([n["time"] for n in notes]).astype(np.float64)
    dur = np.concatenate([n["duration"] for n in notes]).astype(np.float64)
    pitch = np.concatenate([n["pitch"] for n in notes]).astype(np.float64)
    vel = np.concatenate([n["velocity"] for n in notes]).astype(np.float64)
    release = 0.08  # s: fade-out after the note ends, so notes do not click off
    length = np.minimum(np.maximum(dur, 0.02), 4.0) + release  # s, long notes are capped
    out = np.zeros(int(np.ceil((start + length).max() * sample_rate)) + 1, np.float64)
    k = np.arange(1, 7)[:, None]  # harmonics 1..6
    for s, L, p, v in zip(start, length, pitch, vel, strict=True):
        n = int(L * sample_rate)
        t = np.arange(n) / sample_rate  # (n,)
        f0 = 440.0 * 2.0 ** ((p - 69.0) / 12.0)
        # Piano-like: higher harmonics are weaker and die faster; nothing above Nyquist.
        amp = np.where(k * f0 < sample_rate / 2, 0.6 ** (k - 1), 0.0)  # (6, 1)
        tone = (amp * np.exp(-t * (1.5 + 1.2 * k)) * np.sin(2 * np.pi * k * f0 * t)).sum(0)  # (n,)
        env = np.minimum(t / 0.005, 1.0) * np.clip((L - t) / release, 0.0, 1.0)  # attack, release
        i = int(s * sample_rate)
        out[i : i + n] += (v / 127.0) ** 1.5 * tone * env
    return out.astype(np.float32)


def read_wav(path: str | os.PathLike) -> np.ndarray:
    """A 16-bit PCM WAV file as mono float32 samples (n,) in [-1, 1] (channels averaged)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise SmdimError(f"{path}: expected 16-bit PCM WAV, got {8 * w.getsampwidth()}-bit")
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        channels = w.getnchannels()
    return (frames.reshape(-1, channels).astype(np.float32) / 32768.0).mean(axis=1)


def normalise(x: np.ndarray, peak_dbfs: float = -3.0) -> np.ndarray:
    """Scale `x` so its peak is `peak_dbfs`; a clip below SILENCE_PEAK becomes exact silence."""
    peak = float(np.abs(x).max()) if len(x) else 0.0
    if peak < SILENCE_PEAK:
        return np.zeros_like(x, dtype=np.float32)
    return (x * (10 ** (peak_dbfs / 20) / peak)).astype(np.float32)


def write_audio(path: str | os.PathLike, x: np.ndarray, sample_rate: int) -> None:
    """Write mono samples (n,) by suffix: .wav (16-bit PCM), .ogg (Vorbis) or .flac (atomic)."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise SmdimError(f"{path}: unknown audio format; use .wav, .ogg or .flac")
    pcm = np.round(np.clip(x, -1.0, 32767 / 32768) * 32768).astype("<i2")
    with atomic_path(path) as tmp:
        if fmt == "WAV":
            with wave.open(str(tmp), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(sample_rate)
                w.writeframes(pcm.tobytes())
            return
        try:
            import soundfile
        except ImportError:
            raise SmdimError(f"{path}: writing {fmt} needs the soundfile package (`pip install soundfile`); "
                             "or use .wav") from None
        subtype = "VORBIS" if fmt == "OGG" else "PCM_16"
        with soundfile.SoundFile(str(tmp), "w", sample_rate, 1, format=fmt, subtype=subtype) as f:
            for i in range(0, len(pcm), WRITE_BLOCK):
                f.write(pcm[i : i + WRITE_BLOCK])


def compressed_formats() -> list[str]:
    """Compressed suffixes this installation can write ('.ogg', '.flac'), via soundfile."""
    try:
        import soundfile
    except ImportError:
        return []
    have = soundfile.available_formats()
    return [suffix for suffix, fmt in FORMATS.items() if fmt != "WAV" and fmt in have]


def render_audio(
    midi_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    renderer: str = "auto",
    sample_rate: int = 22050,
    peak_dbfs: float = -3.0,
) -> AudioInfo:
    """Render `midi_path` to `out_path` (.wav/.ogg/.flac), peak-normalised; returns what ran."""
    if not 8000 <= sample_rate <= 96000:
        raise SmdimError(f"sample rate {sample_rate}: expected 8000..96000 Hz")
    if not -40.0 <= peak_dbfs < 0.0:
        raise SmdimError(f"peak {peak_dbfs} dBFS: expected -40 <= peak < 0 (below full scale)")
    name = choose_renderer(renderer)
    x = (render_fluidsynth if name == "fluidsynth" else render_synth)(midi_path, sample_rate)
    if len(x) == 0:
        x = np.zeros(int(EMPTY_SECONDS * sample_rate), np.float32)
    x = normalise(x, peak_dbfs)
    write_audio(out_path, x, sample_rate)
    return AudioInfo(Path(out_path), name, len(x) / sample_rate, *_levels(x))


def _levels(x: np.ndarray) -> tuple[float, float]:
    """(peak, rms) in dBFS; -inf for silence."""
    peak, rms = float(np.abs(x).max()), float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return tuple(20 * np.log10(v) if v > 0 else float("-inf") for v in (peak, rms))
