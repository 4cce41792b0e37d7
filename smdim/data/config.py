"""The `download` section of params.yaml: which datasets to fetch and how."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Collection = Literal["han1", "han2", "chorales"]
DATASETS = ("embedded", "maestro", "pop909", "folkdb", "local")

MAESTRO_URL = "https://storage.googleapis.com/magentadata/datasets/maestro/v3.0.0/maestro-v3.0.0-midi.zip"
MAESTRO_SHA256 = "70470ee253295c8d2c71e6d9d4a815189e35c89624b76d22fce5a019d5dde12c"
POP909_URL = "https://github.com/music-x-lab/POP909-Dataset/archive/refs/heads/master.zip"


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or null, got {limit}")


@dataclass(frozen=True)
class EmbeddedConfig:
    collections: list[Collection] = field(default_factory=lambda: ["han1", "han2", "chorales"])
    limit: int | None = None  # max pieces per collection; null = all

    def __post_init__(self) -> None:
        _check_limit(self.limit)
        if not self.collections:
            raise ValueError("embedded.collections is empty; list at least one of han1, han2, chorales")


@dataclass(frozen=True)
class ArchiveConfig:
    url: str | None = None  # archive (.zip/.tar.*) to fetch over HTTP(S)
    sha256: str | None = None  # pinned checksum of the archive; null = record what we got
    path: str | None = None  # a local directory of MIDI files (used instead of url)
    mirror: str | None = None  # local dir, local archive or file:// URL replacing the network
    limit: int | None = None  # max MIDI files kept (sorted by path); null = all
    max_extract_mb: float = 2048.0  # cap on the total extracted size (MB) against archive bombs

    def __post_init__(self) -> None:
        _check_limit(self.limit)
        if self.max_extract_mb <= 0:
            raise ValueError(f"max_extract_mb must be > 0, got {self.max_extract_mb}")
        if self.sha256 is not None and len(self.sha256) != 64:
            raise ValueError(f"sha256 must be 64 hex digits, got {self.sha256!r}")


@dataclass(frozen=True)
class MaestroConfig(ArchiveConfig):
    url: str | None = MAESTRO_URL
    sha256: str | None = MAESTRO_SHA256


@dataclass(frozen=True)
class Pop909Config(ArchiveConfig):
    url: str | None = POP909_URL


@dataclass(frozen=True)
class DownloadConfig:
    datasets: list[Literal["embedded", "maestro", "pop909", "folkdb", "local"]] = field(
        default_factory=lambda: ["embedded"]
    )
    out_dir: str = "data/raw"  # where data/raw/<dataset>/ is built (the dvc out)
    cache_dir: str = "data/downloads"  # archives and resumable .part files (kept between runs)
    retries: int = 5  # HTTP attempts after the first one
    backoff_s: float = 1.0  # first retry delay in seconds, doubled each retry
    timeout_s: float = 60.0  # socket timeout per HTTP request
    embedded: EmbeddedConfig = field(default_factory=EmbeddedConfig)
    maestro: MaestroConfig = field(default_factory=MaestroConfig)
    pop909: Pop909Config = field(default_factory=Pop909Config)
    folkdb: ArchiveConfig = field(default_factory=ArchiveConfig)
    local: ArchiveConfig = field(default_factory=ArchiveConfig)

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ValueError("datasets is empty; list at least one of " + ", ".join(DATASETS))
        if len(set(self.datasets)) != len(self.datasets):
            raise ValueError(f"datasets lists a name twice: {self.datasets}")
        if self.retries < 0 or self.backoff_s < 0 or self.timeout_s <= 0:
            raise ValueError("retries and backoff_s must be >= 0 and timeout_s > 0")
