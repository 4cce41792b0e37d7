"""The `tokenize` section of params.yaml: REMI settings, splits and Parquet sharding."""

from __future__ import annotations

from dataclasses import dataclass, field

from smdim.tokenization.tokenizer import build_tokenizer

REQUIRED_SPECIAL = ("PAD", "MASK")  # PAD pads batches (id 0), MASK is the absorbing state


@dataclass(frozen=True)
class TokenizeConfig:
    raw_dir: str = "data/raw"  # input: data/raw/<dataset>/ from the download stage
    out_dir: str = "data/tokens"  # output: shards, tokenizer.json, manifest.json
    metrics_path: str = "results/tokenize/metrics.json"  # dvc metrics (data stats, throughput)
    # REMI: {"<first beat>_<last beat>": positions per beat}, as miditok's beat_res.
    beat_res: dict[str, int] = field(default_factory=lambda: {"0_4": 8, "4_12": 4})
    num_velocities: int = 32  # velocity bins (1..127 quantised into this many)
    # Velocity tokens after each Pitch. Off: notes are (Pitch, Duration) and decode at miditok's
    # default velocity, for corpora whose velocities carry nothing (the embedded one is all 91).
    use_velocities: bool = True
    pitch_range: list[int] = field(default_factory=lambda: [21, 109])  # MIDI pitches kept, [low, high)
    use_tempos: bool = False  # add Tempo tokens
    use_time_signatures: bool = False  # add TimeSig tokens (off: bars assume 4/4)
    merge_tracks: bool = True  # merge all non-drum tracks into one piano track (one stream)
    # SLACK: the filler of diffusion.slack (never in the token streams themselves).
    special_tokens: list[str] = field(default_factory=lambda: ["PAD", "BOS", "EOS", "MASK", "SLACK"])
    # BPE vocabulary size (miditok's BPE, learned on the train split's bars; null = plain REMI).
    # Must exceed the base REMI vocabulary of the settings above (285 with the defaults).
    bpe_vocab: int | None = None
    min_notes: int = 1  # pieces with fewer notes (after preprocessing) are skipped
    valid_fraction: float = 0.05  # share of pieces in the valid split (hash of the piece id)
    test_fraction: float = 0.05  # share of pieces in the test split
    # Seed of the train/valid/test assignment; null = base.seed. A sweep over base.seed pins it, so
    # every seed is scored on the same test pieces (flows.ablations --seeds).
    split_seed: int | None = None
    shard_rows: int = 5000  # max rows per Parquet shard
    shard_mb: float = 64.0  # max (uncompressed token) MB per shard
    zstd_level: int = 9  # zstd compression level of the shards (1..22)

    def split_seed_for(self, base_seed: int) -> int:
        """The seed of the train/valid/test assignment: split_seed if pinned, else base.seed."""
        return base_seed if self.split_seed is None else self.split_seed

    def __post_init__(self) -> None:
        missing = [t for t in REQUIRED_SPECIAL if t not in self.special_tokens]
        if missing or self.special_tokens[0] != "PAD":
            raise ValueError(f"special_tokens must start with PAD and include MASK, got {self.special_tokens}")
        if len(self.pitch_range) != 2 or not 0 <= self.pitch_range[0] < self.pitch_range[1] <= 128:
            raise ValueError(f"pitch_range must satisfy 0 <= low < high <= 128, got {self.pitch_range}")
        if self.num_velocities < 1 or self.num_velocities > 127:
            raise ValueError(f"num_velocities must be in 1..127, got {self.num_velocities}")
        for k, v in self.beat_res.items():
            a, _, b = k.partition("_")
            if not (a.isdigit() and b.isdigit() and int(a) < int(b)) or v < 1:
                raise ValueError(f"beat_res key {k!r}: use '<start>_<end>' beats with a resolution >= 1")
        if not (0 <= self.valid_fraction and 0 <= self.test_fraction
                and self.valid_fraction + self.test_fraction < 1):
            raise ValueError("valid_fraction and test_fraction must be >= 0 and sum to < 1")
        if self.shard_rows < 1 or self.shard_mb <= 0 or not 1 <= self.zstd_level <= 22:
            raise ValueError("shard_rows >= 1, shard_mb > 0 and zstd_level in 1..22 are required")
        if self.min_notes < 0:
            raise ValueError(f"min_notes must be >= 0, got {self.min_notes}")
        if self.bpe_vocab is not None:
            # The base size depends on every setting above, so ask miditok (a 2 ms build).
            base = len(build_tokenizer(self))
            if self.bpe_vocab <= base:
                raise ValueError(f"bpe_vocab={self.bpe_vocab} must be larger than the {base} base REMI tokens "
                                 "of these settings (null = no BPE)")
