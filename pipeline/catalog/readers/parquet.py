"""Parquet files: schema from the footer, rows by whole row groups."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.catalog.readers.base import CatalogSource, Chunk, ColumnKind, Schema
from pipeline.errors import CatalogError


def column_kind(typ: pa.DataType) -> ColumnKind:
    if pa.types.is_integer(typ):
        return "int"
    if pa.types.is_floating(typ) or pa.types.is_decimal(typ):
        return "float"
    if pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_binary(typ):
        return "string"
    if pa.types.is_boolean(typ):
        return "bool"
    if pa.types.is_dictionary(typ):
        return column_kind(typ.value_type)
    return "array"


def schema(path: str, hdu: int | None = None) -> Schema:
    try:
        meta = pq.read_metadata(path)
        arrow = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise CatalogError(f"{path}: not a readable Parquet file ({exc}); check it is complete") from None
    return {f.name: column_kind(f.type) for f in arrow}, meta.num_rows, 0, []


def chunks(source: CatalogSource, chunk_rows: int) -> list[Chunk]:
    """Read tasks of whole row groups, about ``chunk_rows`` rows each."""
    meta = pq.read_metadata(source.path)
    out, group, first, rows = [], [], 0, 0
    for rg in range(meta.num_row_groups):
        group.append(rg)
        rows += meta.row_group(rg).num_rows
        if rows - first >= chunk_rows:
            out.append(Chunk(source, len(out), first, rows, tuple(group)))
            group, first = [], rows
    if group:
        out.append(Chunk(source, len(out), first, rows, tuple(group)))
    return out


def read_rows(chunk: Chunk, wanted: list[str]) -> pd.DataFrame:
    return pq.ParquetFile(chunk.source.path).read_row_groups(list(chunk.row_groups), columns=wanted).to_pandas()


def rows_before(chunk: Chunk) -> int:
    return chunk.start
