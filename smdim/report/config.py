"""The `report` section of params.yaml: what the report stage renders and how."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ReportConfig:
    renderer: Literal["auto", "fluidsynth", "synth"] = "auto"  # audio: auto = FluidSynth if on PATH, else numpy synth
    audio_format: Literal["ogg", "flac", "wav"] = "ogg"  # ogg (Vorbis, ~10x smaller than wav) needs soundfile
    sample_rate: int = 22050  # Hz of the audio clips
    peak_dbfs: float = -3.0  # every clip is normalised to this peak (< 0: never clipped)
    test_pieces: int = 4  # test-split pieces rendered next to the generated ones (0 = none)
    test_tokens: int | Literal["auto"] | None = "auto"  # their crop: auto = median generated length, null = whole
    by_length: bool = True  # also render the OA-vs-length sets (results/samples/by_length/<L>/)
    experiments: bool = True  # table of `dvc exp show --json` (params that vary, headline metrics)
    headline_metrics: tuple[str, ...] = ("oa.average", "usable_rate", "val_loss", "token_error_rate",
                                         "memorisation.generated")  # experiment columns (those present)

    def __post_init__(self) -> None:
        if not 8000 <= self.sample_rate <= 96000:
            raise ValueError("sample_rate must be in 8000..96000 Hz")
        if not -40.0 <= self.peak_dbfs < 0.0:
            raise ValueError("peak_dbfs must be in [-40, 0): a peak at 0 dBFS clips")
        if self.test_pieces < 0:
            raise ValueError("test_pieces must be >= 0")
        if isinstance(self.test_tokens, int) and self.test_tokens < 1:
            raise ValueError("test_tokens must be >= 1, auto or null")
