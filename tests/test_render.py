"""Piano-roll rendering of real MIDI files."""

from __future__ import annotations

import struct

import pytest

from smdim.errors import SmdimError
from smdim.render.pianoroll import save_contact_sheet, save_pianoroll


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_pianoroll_of_a_pop909_song(shared_data, tmp_path):
    import symusic

    out = tmp_path / "roll.png"
    save_pianoroll(shared_data / "pop909" / "001.mid", out, title="001")
    assert png_size(out) == (1200, 400)
    # A Score works too, and an empty one draws "no notes" instead of failing.
    save_pianoroll(symusic.Score(shared_data / "bad-midi" / "empty.mid"), tmp_path / "empty.png")
    assert png_size(tmp_path / "empty.png") == (1200, 400)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.png", "roll.png"]  # no temp files left


def test_contact_sheet_grid(shared_data, tmp_path):
    paths = sorted((shared_data / "pop909").glob("*.mid"))[:5]
    save_contact_sheet(paths, tmp_path / "sheet.png")
    assert png_size(tmp_path / "sheet.png") == (900, 400)  # 3 x 2 grid of 300 x 200 px cells


def test_unreadable_midi_is_a_one_line_error(shared_data, tmp_path):
    with pytest.raises(SmdimError, match="corrupted_control168.mid: cannot read MIDI"):
        save_pianoroll(shared_data / "bad-midi" / "corrupted_control168.mid", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
