"""What every reader shares: an inspected input file (:class:`CatalogSource`) and the slice of it
one task reads (:class:`Chunk`).

Every reader module (:mod:`~pipeline.catalog.readers.fits`, ``parquet``, ``csv``) offers the same
four functions, which :mod:`pipeline.catalog.sources` calls by the file's format:

- ``schema(path, hdu)`` → ``(kinds, rows, hdu, tables)``: each column's :data:`ColumnKind`, the
  row count (None when only reading would tell), the FITS HDU read and the file's table HDUs
  (``0`` and ``[]`` for other formats); no data is read;
- ``chunks(source, chunk_rows)`` → the :class:`Chunk` list of one file;
- ``read_rows(chunk, wanted)`` → the chunk's ``wanted`` source columns, as stored;
- ``rows_before(chunk)`` → data rows of the file before the chunk (to name a bad row).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pipeline.catalog.schema import LINE_COLUMNS, V1_SIGNATURE, IdKind

Format = Literal["fits", "parquet", "csv"]
ColumnKind = Literal["int", "float", "string", "bool", "array", "mixed"]  # mixed: CSV text, some numbers


@dataclass(frozen=True)
class CatalogSource:
    """One input file after inspection: its format, size, rows and the resolved column map."""

    path: str
    format: Format
    n_bytes: int
    n_rows: int | None
    mapping: Mapping[str, str]  # canonical → source column, only for columns present
    string_id: bool = False
    hdu: int = 1
    all_columns: tuple[str, ...] = field(default=(), repr=False)
    id_kind: IdKind = "auto"

    @property
    def has_lines(self) -> bool:
        return not self.missing_lines

    @property
    def missing_lines(self) -> tuple[str, ...]:
        """The canonical line-flux columns this file has no source column for."""
        return tuple(c for c in LINE_COLUMNS if c not in self.mapping)

    @property
    def looks_like_nsa_v1(self) -> bool:
        upper = {c.upper() for c in self.all_columns}
        return not self.has_lines and any(c in upper for c in V1_SIGNATURE)

    def describe(self) -> dict:
        return {
            "path": self.path,
            "format": self.format,
            **({"hdu": self.hdu} if self.format == "fits" else {}),
            "bytes": self.n_bytes,
            "rows": self.n_rows,
            "columns": dict(self.mapping),
            "string_id": self.string_id,
            "has_lines": self.has_lines,
            "nsa_v1": self.looks_like_nsa_v1,
        }


@dataclass(frozen=True)
class Chunk:
    """A slice of one source that one task reads: rows [start, stop) of a FITS or Parquet file
    (Parquet: whole ``row_groups``), or for CSV the bytes [start, stop), where records start."""

    source: CatalogSource
    number: int
    start: int
    stop: int
    row_groups: tuple[int, ...] = ()


Schema = tuple[dict[str, ColumnKind], int | None, int, list[tuple[int, str, int]]]
