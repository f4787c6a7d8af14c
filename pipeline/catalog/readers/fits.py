"""FITS binary tables: schema from the header, rows memory-mapped, a chunk's columns copied block by block."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.catalog.readers.base import CatalogSource, Chunk, ColumnKind, Schema
from pipeline.errors import CatalogError


def schema(path: str, wanted: int | None) -> Schema:
    """Column kinds, rows and number of the table HDU read (``wanted``, or the first table),
    and every table HDU of the file as (number, name, rows) for messages."""
    from astropy.io import fits

    try:
        with warnings.catch_warnings(), fits.open(path, memmap=True) as hdul:
            warnings.simplefilter("ignore")  # astropy's own warnings: our error below says what is wrong
            tables = [
                (number, hdu.name, int(hdu.header.get("NAXIS2", 0)))
                for number, hdu in enumerate(hdul)
                if isinstance(hdu, fits.BinTableHDU | fits.TableHDU)
            ]
            if not tables:
                raise CatalogError(
                    f"{path}: FITS file has no table HDU (it has {len(hdul)} HDUs, none a table); "
                    "the NSA catalog keeps its table in HDU 1"
                )
            number = tables[0][0] if wanted is None else wanted
            if number not in [t[0] for t in tables]:
                what = "does not exist" if not 0 <= number < len(hdul) else "is not a table"
                raise CatalogError(f"{path}: HDU {number} {what}. {hdu_note(None, tables)}")
            hdu = hdul[number]
            kinds = {c.name: column_kind(c.format) for c in hdu.columns}
            info = hdu.fileinfo()
            needed = info["datLoc"] + int(hdu.header["NAXIS1"]) * int(hdu.header.get("NAXIS2", 0))
            if not path.endswith(".gz") and os.path.getsize(path) < needed:
                raise CatalogError(
                    f"{path}: FITS table is truncated ({os.path.getsize(path):,} of {needed:,} bytes); "
                    "the file is incomplete: re-download it"
                )
            return kinds, int(hdu.header.get("NAXIS2", 0)), number, tables
    except (OSError, ValueError, TypeError) as exc:
        raise CatalogError(
            f"{path}: not a readable FITS file ({exc}); check it is complete (re-download) "
            "or give --format if it is not FITS"
        ) from None


def hdu_note(read: int | None, tables: Sequence[tuple[int, str, int]]) -> str:
    """Which HDU was read and which hold tables, with the option that picks another."""
    listed = ", ".join(f"HDU {n} {name!r} ({rows:,} rows)" for n, name, rows in tables)
    head = f"Read the table in HDU {read}; " if read is not None else ""
    return f"{head}tables in this file: {listed}. Pick another with --hdu N."


def column_kind(tform: object) -> ColumnKind:
    code = str(tform).strip().upper()
    repeat = "".join(ch for ch in code if ch.isdigit())
    letter = code.lstrip("0123456789")[:1]
    if letter == "A":
        return "string"
    if letter == "L":
        return "bool"
    if repeat and int(repeat) > 1:
        return "array"
    if letter in ("B", "I", "J", "K"):
        return "int"
    return "float"


def chunks(source: CatalogSource, chunk_rows: int) -> list[Chunk]:
    """Read tasks of ``chunk_rows`` consecutive rows."""
    n = int(source.n_rows or 0)
    return [Chunk(source, i, a, min(a + chunk_rows, n)) for i, a in enumerate(range(0, n, chunk_rows))]


def read_rows(chunk: Chunk, wanted: list[str]) -> dict[str, np.ndarray]:
    """The chunk's ``wanted`` columns from the memory-mapped table: text without its trailing
    blanks, numbers as native-byte-order copies."""
    from astropy.io import fits

    src = chunk.source
    with fits.open(src.path, memmap=True) as hdul:
        data = hdul[src.hdu].data
        fields = {name: np.asarray(data.field(name)[chunk.start : chunk.stop]) for name in wanted}
        text = {name: np.char.rstrip(column.astype("U"))  # trailing blanks pad FITS text; leading ones are data
                for name, column in fields.items() if column.dtype.kind in "SU"}  # fmt: skip
        numbers = native_copies({name: column for name, column in fields.items() if name not in text},
                                data.dtype.itemsize)  # fmt: skip
    return {name: text[name] if name in text else numbers[name] for name in wanted}


def rows_before(chunk: Chunk) -> int:
    return chunk.start


COPY_BLOCK_BYTES = 4 << 20  # rows of a table copied at a time: they stay in the CPU's cache for all columns


def native_copies(columns: Mapping[str, np.ndarray], row_bytes: int) -> dict[str, np.ndarray]:
    """Contiguous native-byte-order copies of equal-length columns (views into a memory-mapped,
    row-major FITS table, rows of ``row_bytes`` bytes). Copied a block of rows at a time, every
    column from the same block, so each row is read from memory once rather than once per column:
    2.5x faster for 13 columns of a 204-byte row (measured: 26 against 65 ms for 500k rows)."""
    out = {name: np.empty(column.shape, dtype=column.dtype.newbyteorder("=")) for name, column in columns.items()}
    n = len(next(iter(columns.values()))) if columns else 0
    step = max(1024, COPY_BLOCK_BYTES // max(row_bytes, 1))
    for begin in range(0, n, step):
        for name, column in columns.items():
            out[name][begin : begin + step] = column[begin : begin + step]
    return out
