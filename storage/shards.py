"""Parquet shard datasets (``part-00000.parquet`` ...): one file per task, then renumbered.

Shards are written without dictionary encoding except for named low-cardinality columns: on
unique floats pyarrow's dictionary attempt makes writing ~3x slower for no gain in size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SHARD_NAME = "part-{:05d}.parquet"
SHARD_GLOB = "part-*.parquet"


def write_shard(frame: pd.DataFrame, path: Path, dictionary_columns: Sequence[str] = ()) -> int:
    """Write one shard (no pandas index); returns its row count."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(
        table, path, compression="snappy", use_dictionary=list(dictionary_columns) if dictionary_columns else False
    )
    return table.num_rows


def shard_number(path: Path) -> int:
    """The k of ``part-k.parquet``."""
    return int(path.stem.removeprefix("part-"))


def finish_shards(directory: Path) -> list[int]:
    """Remove zero-row shards and renumber the rest in order; returns the rows of each shard."""
    rows = []
    for path in sorted(directory.glob(SHARD_GLOB), key=shard_number):  # numeric: part-100000 after part-99999
        n = pq.read_metadata(path).num_rows
        if n == 0:
            path.unlink()
            continue
        path.rename(directory / SHARD_NAME.format(len(rows)))
        rows.append(n)
    return rows
