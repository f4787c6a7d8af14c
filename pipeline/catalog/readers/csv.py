"""CSV (and TSV) text: column kinds from a sample, rows by byte ranges that start where a record starts."""

from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd

from pipeline.catalog.ids import INTEGER, LEADING_ZERO
from pipeline.catalog.readers.base import CatalogSource, Chunk, ColumnKind, Schema
from pipeline.errors import CatalogError

CSV_CHUNK_BYTES = 64 << 20
CSV_SAMPLE_ROWS = 2000  # rows read to tell the type of a CSV column
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip")


def separator(path: str) -> str:
    return "\t" if path.lower().removesuffix(".gz").endswith(".tsv") else ","


def schema(path: str, hdu: int | None = None) -> Schema:
    """Column kinds from the first rows, read as text: ``string`` when no value is a plain number
    (an integer with leading zeros, such as 00123, counts as text), ``int`` or ``float`` when every
    value is one, ``mixed`` otherwise (numeric: each value is checked, and named, when read)."""
    try:
        sample = pd.read_csv(path, nrows=CSV_SAMPLE_ROWS, dtype=str, sep=separator(path))
    except pd.errors.EmptyDataError:
        raise CatalogError(f"{path}: CSV file has no header or rows; re-create it") from None
    except (UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise CatalogError(f"{path}: not a readable CSV file ({exc}); check the file") from None
    if sample.empty:
        raise CatalogError(f"{path}: catalog has no rows; remove it from the inputs")
    return {str(name): text_kind(sample[name]) for name in sample.columns}, None, 0, []


def text_kind(values: pd.Series) -> ColumnKind:
    present = values.dropna().str.strip()
    present = present[present != ""]
    if present.empty:
        return "float"
    numeric = pd.to_numeric(present, errors="coerce").notna() & ~present.str.match(LEADING_ZERO)
    if not numeric.any():
        return "string"
    if not numeric.all():
        return "mixed"
    return "int" if present.str.match(INTEGER).all() else "float"


QUOTE, NEWLINE, CR = ord('"'), ord("\n"), ord("\r")


def chunks(source: CatalogSource, chunk_rows: int = 0) -> list[Chunk]:
    """Read tasks of about ``CSV_CHUNK_BYTES`` bytes each, cut where records start (``chunk_rows``
    is not used: rows are not known before reading); a compressed file is one task."""
    size = source.n_bytes
    if source.path.lower().endswith(COMPRESSED_SUFFIXES):  # no byte ranges in a compressed stream: one task
        return [Chunk(source, 0, 0, size)]
    edges = [0, *record_starts(source.path, CSV_CHUNK_BYTES, separator(source.path)), size]
    return [Chunk(source, i, a, b) for i, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True))]


def record_starts(path: str, step: int, sep: str = ",") -> list[int]:
    """Byte offsets, about every ``step`` bytes, where a CSV record starts; [] when not safe to cut.

    A line end is a record end when an even number of quote characters precede it (RFC 4180:
    fields that hold separators, line breaks or quotes are quoted, and quotes inside are doubled).
    That holds only if every quote sits where the format allows it: an opening quote right after a
    separator or line start, a closing one right before a separator or line end. One quote
    anywhere else (``5"``, ``, "x"``) and the parser's reading of the file can no longer be
    followed by counting, so the whole file is read by one task: never a guessed cut.
    """
    size = os.path.getsize(path)
    if size <= step:
        return []
    data = np.memmap(path, dtype=np.uint8, mode="r")
    fences = np.array([ord(sep), NEWLINE, CR, QUOTE], dtype=np.uint8)
    starts: list[int] = []
    quotes_before = 0
    for a in range(0, size, step):
        block = data[a : a + step]
        quotes = np.flatnonzero(block == QUOTE) + a
        parity = (quotes_before + np.arange(len(quotes))) % 2
        opening, closing = quotes[parity == 0], quotes[parity == 1]
        opening = opening[opening > 0]
        closing = closing[closing < size - 1]
        if not (np.isin(data[opening - 1], fences).all() and np.isin(data[closing + 1], fences).all()):
            return []
        if a > 0:
            ends = np.flatnonzero(block == NEWLINE) + a
            even = (quotes_before + np.searchsorted(quotes, ends)) % 2 == 0
            if even.any() and ends[even][0] + 1 < size:
                starts.append(int(ends[even][0]) + 1)
        quotes_before += len(quotes)
    return starts


class _Prefix(io.RawIOBase):
    """The first ``limit`` bytes of an open file, as a stream."""

    def __init__(self, fh: io.BufferedReader, limit: int):
        self.fh, self.left = fh, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        data = self.fh.read(min(len(buffer), self.left))
        buffer[: len(data)] = data
        self.left -= len(data)
        return len(data)


def read_rows(chunk: Chunk, wanted: list[str]) -> pd.DataFrame:
    """The records in the chunk's bytes [start, stop) (edges from :func:`record_starts`; the first
    line of the file is the header); a compressed file is read whole. Ids are read as text, so that
    they are parsed exactly (no float round trip) and text ids keep their leading zeros."""
    src, start, stop = chunk.source, chunk.start, chunk.stop
    options = {
        "usecols": lambda c: c in set(wanted),
        "low_memory": False,
        "sep": separator(src.path),
        "dtype": {src.mapping["objid"]: str},
    }
    if src.path.lower().endswith(COMPRESSED_SUFFIXES) or (start == 0 and stop >= src.n_bytes):
        return pd.read_csv(src.path, **options)  # one task reads it all (and pandas finds the line ends)
    with open(src.path, "rb") as fh:
        header = fh.readline()
        begin = max(start, len(header))
        fh.seek(begin)
        body = fh.read(max(stop - begin, 0))
    if not body.strip():
        return pd.DataFrame({name: pd.Series(dtype="float64") for name in wanted})
    try:
        return pd.read_csv(io.BytesIO(header + body), **options)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{src.path}: malformed CSV near byte {begin} ({exc}); fix the file") from None


def rows_before(chunk: Chunk) -> int:
    """Data rows of the file before the chunk's first, counted by parsing the bytes before the
    chunk as a stream, in bounded memory."""
    if chunk.start == 0:
        return 0
    with open(chunk.source.path, "rb") as fh:
        prefix = io.BufferedReader(_Prefix(fh, chunk.start))
        parts = pd.read_csv(prefix, usecols=[0], dtype=str, sep=separator(chunk.source.path), chunksize=1 << 20)
        return sum(len(part) for part in parts)
