"""Audio of real MIDI files: both renderers, every format, levels below full scale and not silent."""

from __future__ import annotations

import numpy as np
import pytest

from smdim.errors import SmdimError
from smdim.render.audio import choose_renderer, fluidsynth_executable, render_audio, soundfont_path

needs_fluidsynth = pytest.mark.skipif(
    fluidsynth_executable() is None or soundfont_path() is None,
    reason="fluidsynth not on PATH (apt-get install fluidsynth) or TimGM6mb.sf2 missing",
)
RENDERERS = [pytest.param("fluidsynth", marks=needs_fluidsynth), "synth"]


def read(path) -> tuple[np.ndarray, int]:
    import soundfile

    x, sr = soundfile.read(str(path), dtype="float32")
    return x, sr


@pytest.mark.parametrize("renderer", RENDERERS)
@pytest.mark.parametrize("suffix", [".ogg", ".wav", ".flac"])
def test_real_song_is_audible_and_not_clipped(shared_data, tmp_path, renderer, suffix):
    out = tmp_path / f"song{suffix}"
    info = render_audio(shared_data / "pop909" / "001.mid", out, renderer=renderer, sample_rate=16000)
    assert info.renderer == renderer and info.path == out
    x, sr = read(out)
    assert sr == 16000 and x.ndim == 1
    assert len(x) / sr == pytest.approx(info.seconds, rel=1e-3)
    assert info.seconds > 150  # the song is ~199 s
    rms, peak = float(np.sqrt(np.mean(x**2))), float(np.abs(x).max())
    assert rms > 0.01  # not silent
    assert peak < 0.99  # not clipped (-3 dBFS target; Vorbis overshoots a little)
    assert info.peak_dbfs == pytest.approx(-3.0, abs=0.01)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temp files left


@pytest.mark.parametrize("renderer", RENDERERS)
def test_piece_without_notes_is_one_second_of_silence(shared_data, tmp_path, renderer):
    # FluidSynth's output for it is rounding noise (+-1 LSB): never amplified to -3 dBFS.
    info = render_audio(shared_data / "bad-midi" / "empty.mid", tmp_path / "e.wav", renderer=renderer)
    x, _ = read(info.path)
    assert info.seconds >= 1.0 and not x.any() and info.peak_dbfs == float("-inf")


def test_errors_are_one_line(shared_data, tmp_path):
    song = shared_data / "pop909" / "001.mid"
    with pytest.raises(SmdimError, match=r"x\.mp3: unknown audio format; use \.wav, \.ogg or \.flac"):
        render_audio(song, tmp_path / "x.mp3", renderer="synth")
    with pytest.raises(SmdimError, match="corrupted_control168.mid: cannot read MIDI"):
        render_audio(shared_data / "bad-midi" / "corrupted_control168.mid", tmp_path / "x.wav", renderer="synth")
    with pytest.raises(SmdimError, match="expected auto, fluidsynth or synth"):
        choose_renderer("timidity")
    with pytest.raises(SmdimError, match="below full scale"):
        render_audio(song, tmp_path / "x.wav", peak_dbfs=0.0)
    assert not any(tmp_path.iterdir())


def test_auto_prefers_fluidsynth_when_installed():
    have = fluidsynth_executable() is not None and soundfont_path() is not None
    assert choose_renderer("auto") == ("fluidsynth" if have else "synth")
