"""Token shards: zstd Parquet files, one row per piece, written byte-reproducibly."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from smdim.errors import SmdimError
from smdim.io import atomic_path

SHARD_GLOB = "shard-*.parquet"
SCHEMA = pa.schema([
    ("dataset", pa.string()),
    ("piece_id", pa.string()),
    ("split", pa.string()),
    ("source_sha256", pa.string()),
    ("n_tokens", pa.int32()),
    ("n_bars", pa.int32()),
    ("tokens", pa.list_(pa.int32())),
])


def plan_shards(n_tokens: Sequence[int], max_rows: int, max_mb: float) -> list[tuple[int, int]]:
    """[start, end) row ranges: at most `max_rows` rows and ~`max_mb` MB of int32 tokens each."""
    ranges, start, size = [], 0, 0
    for i, n in enumerate(n_tokens):
        if i > start and (i - start >= max_rows or size + 4 * n > max_mb * 1e6):
            ranges.append((start, i))
            start, size = i, 0
        size += 4 * n
    if len(n_tokens) > start:
        ranges.append((start, len(n_tokens)))
    return ranges


def to_table(rows: Sequence[dict]) -> pa.Table:
    """Rows (dicts with the SCHEMA columns; tokens as int sequences) -> an Arrow table."""
    lengths = np.array([len(r["tokens"]) for r in rows], dtype=np.int64)
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate([np.asarray(r["tokens"], dtype=np.int32) for r in rows]) if rows else np.zeros(0, np.int32)
    columns = {name: pa.array([r[name] for r in rows], type=SCHEMA.field(name).type)
               for name in SCHEMA.names if name != "tokens"}
    columns["tokens"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.int32()))
    return pa.Table.from_pydict(columns, schema=SCHEMA)


def write_shards(
    rows: Sequence[dict], directory: str | os.PathLike, *, max_rows: int, max_mb: float, zstd_level: int
) -> list[str]:
    """Write `rows` (already in their final order) as shard-00000.parquet, ...; return the names."""
    directory = Path(directory)
    names = []
    for k, (a, b) in enumerate(plan_shards([len(r["tokens"]) for r in rows], max_rows, max_mb)):
        name = f"shard-{k:05d}.parquet"
        with atomic_path(directory / name) as tmp:
            # Every writer option pinned: same rows + same pyarrow -> the same bytes.
            pq.write_table(
                to_table(rows[a:b]), tmp,
                row_group_size=b - a, version="2.6", data_page_version="1.0",
                compression="zstd", compression_level=zstd_level,
                use_dictionary=["dataset", "split"], write_statistics=True,
                store_schema=True, write_page_index=False, write_page_checksum=False,
            )
        names.append(name)
    return names


def read_shards(
    directory: str | os.PathLike, split: str | None = None, columns: list[str] | None = None
) -> pd.DataFrame:
    """All shard rows as a DataFrame (tokens as int32 arrays), optionally one split / some columns."""
    directory = Path(directory)
    files = sorted(directory.glob(SHARD_GLOB))
    if not files:
        raise SmdimError(f"{directory}: no {SHARD_GLOB} files; run `dvc repro tokenize`")
    unknown = [c for c in columns or [] if c not in SCHEMA.names]
    if unknown:
        raise SmdimError(f"read_shards: unknown column {unknown[0]!r}; known: {', '.join(SCHEMA.names)}")
    read = None if columns is None else list(dict.fromkeys([*columns, *(["split"] if split else [])]))
    tables = []
    for f in files:
        t = pq.read_table(f, columns=read)
        if split is not None:
            t = t.filter(pc.equal(t["split"], split))
        tables.append(t)
    table = pa.concat_tables(tables)
    if columns is not None:
        table = table.select(columns)
    return table.to_pandas()
