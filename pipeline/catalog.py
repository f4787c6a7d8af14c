"""Catalog readers: NSA FITS, Parquet and CSV → the canonical schema (DESIGN.md), in chunks.

Source column names are resolved once, here: NSA v0_1_2 names by default, NSA v1_0_1 names where
they exist (positions, radii; v1 has no line fluxes), and a user map (``--column ha_flux=NAME``) for
anything else. Matching is case-insensitive. Files are inspected (header / schema only) before any
data is read, so a missing or mistyped column fails at once, naming the file, the column and a fix.

Reading is by chunks of rows: a FITS table is memory-mapped and only the needed columns of one
chunk are copied (native byte order); Parquet is read by row groups; CSV by byte ranges cut at line
ends. Each chunk becomes one Dask partition, so a 3 GB file never sits in one process's memory.
"""

from __future__ import annotations

import difflib
import glob
import hashlib
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import CANONICAL_COLUMNS
from pipeline.errors import CatalogError

Format = Literal["fits", "parquet", "csv"]

LINE_COLUMNS: tuple[str, ...] = ("ha_flux", "nii_flux", "hb_flux", "oiii_flux")
ERROR_COLUMNS: tuple[str, ...] = tuple(f"{c}_err" for c in LINE_COLUMNS)
REQUIRED: tuple[str, ...] = ("objid", "ra", "dec")
DEFAULT_RADIUS_COLUMN = "PETROTH90"

NSA_V0_1_2: dict[str, str] = {
    "objid": "NSAID",
    "ra": "RA",
    "dec": "DEC",
    "z": "Z",
    "ha_flux": "HAFLUX",
    "nii_flux": "N2FLUX",
    "hb_flux": "HBFLUX",
    "oiii_flux": "O3FLUX",
    "ha_flux_err": "HAFLUXERR",
    "nii_flux_err": "N2FLUXERR",
    "hb_flux_err": "HBFLUXERR",
    "oiii_flux_err": "O3FLUXERR",
}
# NSA v1_0_1 spells the 90 % Petrosian radius differently; tried when PETROTH90 is absent.
V1_RADIUS_FALLBACKS: tuple[str, ...] = ("PETRO_TH90", "ELPETRO_TH90_R")
V1_SIGNATURE: tuple[str, ...] = ("ELPETRO_TH50_R", "ELPETRO_FLUX", "PETRO_TH50", "ELPETRO_MASS")

FLOAT64_COLUMNS = ("ra", "dec")
FLOAT32_COLUMNS = tuple(c for c in CANONICAL_COLUMNS if c not in ("objid", "ra", "dec"))

CSV_CHUNK_BYTES = 64 << 20


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

    @property
    def has_lines(self) -> bool:
        return all(c in self.mapping for c in LINE_COLUMNS)

    @property
    def looks_like_nsa_v1(self) -> bool:
        upper = {c.upper() for c in self.all_columns}
        return not self.has_lines and any(c in upper for c in V1_SIGNATURE)

    def describe(self) -> dict:
        return {
            "path": self.path,
            "format": self.format,
            "bytes": self.n_bytes,
            "rows": self.n_rows,
            "columns": dict(self.mapping),
            "string_id": self.string_id,
            "has_lines": self.has_lines,
            "nsa_v1": self.looks_like_nsa_v1,
        }


@dataclass(frozen=True)
class Chunk:
    """A slice of one source that one task reads: rows [start, stop) or a byte range for CSV."""

    source: CatalogSource
    number: int
    start: int
    stop: int
    row_groups: tuple[int, ...] = ()


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """Files named by paths, globs or Parquet dataset directories, in the order given."""
    paths: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern))) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise CatalogError(f"{pattern}: no file matches this pattern; check the path or quote the glob")
        for match in matches:
            p = Path(match)
            if p.is_dir():
                parts = sorted(str(f) for f in p.rglob("*.parquet") if not f.name.startswith("."))
                if not parts:
                    raise CatalogError(f"{p}: directory holds no *.parquet files; name catalog files instead")
                paths.extend(parts)
            elif not p.exists():
                raise CatalogError(f"{p}: no such file; check the path")
            else:
                paths.append(str(p))
    return paths


def sniff_format(path: str) -> Format:
    """Format from the extension, else from the first bytes (FITS 'SIMPLE', Parquet 'PAR1', text)."""
    name = path.lower()
    if name.endswith((".fits", ".fit", ".fits.gz", ".fts")):
        return "fits"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".csv.gz", ".txt", ".tsv")):
        return "csv"
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError as exc:
        raise CatalogError(f"{path}: cannot be read ({exc.strerror}); check permissions") from None
    if head.startswith(b"SIMPLE  ="):
        return "fits"
    if head.startswith(b"PAR1"):
        return "parquet"
    if not head:
        raise CatalogError(f"{path}: file is empty; re-create or re-download it")
    if b"\x00" not in head:
        return "csv"
    raise CatalogError(f"{path}: format not recognised (not FITS, Parquet or CSV); pass --format")


def inspect_source(
    path: str,
    columns: Mapping[str, str] | None = None,
    radius_column: str = DEFAULT_RADIUS_COLUMN,
    fmt: str = "auto",
) -> CatalogSource:
    """Read a file's header or schema (no data) and resolve + type-check the canonical columns."""
    kind: Format = sniff_format(path) if fmt == "auto" else fmt  # type: ignore[assignment]
    n_bytes = os.path.getsize(path)
    if n_bytes == 0:
        raise CatalogError(f"{path}: file is empty; re-create or re-download it")
    reader = {"fits": _fits_schema, "parquet": _parquet_schema, "csv": _csv_schema}[kind]
    kinds, n_rows, hdu = reader(path)
    if n_rows == 0:
        raise CatalogError(f"{path}: catalog has no rows; remove it from the inputs")
    mapping = resolve_columns(path, list(kinds), columns or {}, radius_column)
    string_id = _check_types(path, mapping, kinds)
    return CatalogSource(
        path=path,
        format=kind,
        n_bytes=n_bytes,
        n_rows=n_rows,
        mapping=mapping,
        string_id=string_id,
        hdu=hdu,
        all_columns=tuple(kinds),
    )


ColumnKind = Literal["int", "float", "string", "bool", "array"]


def _fits_schema(path: str) -> tuple[dict[str, ColumnKind], int, int]:
    from astropy.io import fits

    try:
        with fits.open(path, memmap=True) as hdul:
            for number, hdu in enumerate(hdul):
                if isinstance(hdu, fits.BinTableHDU | fits.TableHDU):
                    kinds = {c.name: _fits_kind(c.format) for c in hdu.columns}
                    info = hdu.fileinfo()
                    needed = info["datLoc"] + int(hdu.header["NAXIS1"]) * int(hdu.header.get("NAXIS2", 0))
                    if not path.endswith(".gz") and os.path.getsize(path) < needed:
                        raise CatalogError(
                            f"{path}: FITS table is truncated ({os.path.getsize(path):,} of {needed:,} bytes); "
                            "the file is incomplete: re-download it"
                        )
                    return kinds, int(hdu.header.get("NAXIS2", 0)), number
    except (OSError, ValueError, TypeError) as exc:
        raise CatalogError(
            f"{path}: not a readable FITS file ({exc}); check it is complete (re-download) "
            "or give --format if it is not FITS"
        ) from None
    raise CatalogError(f"{path}: FITS file has no table HDU; the NSA catalog keeps its table in HDU 1")


def _fits_kind(tform: object) -> ColumnKind:
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


def _arrow_kind(typ: pa.DataType) -> ColumnKind:
    if pa.types.is_integer(typ):
        return "int"
    if pa.types.is_floating(typ) or pa.types.is_decimal(typ):
        return "float"
    if pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_binary(typ):
        return "string"
    if pa.types.is_boolean(typ):
        return "bool"
    if pa.types.is_dictionary(typ):
        return _arrow_kind(typ.value_type)
    return "array"


def _parquet_schema(path: str) -> tuple[dict[str, ColumnKind], int, int]:
    try:
        meta = pq.read_metadata(path)
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise CatalogError(f"{path}: not a readable Parquet file ({exc}); check it is complete") from None
    return {f.name: _arrow_kind(f.type) for f in schema}, meta.num_rows, 0


COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip")


def _csv_separator(path: str) -> str:
    return "\t" if path.lower().removesuffix(".gz").endswith(".tsv") else ","


def _csv_schema(path: str) -> tuple[dict[str, ColumnKind], int | None, int]:
    try:
        sample = pd.read_csv(path, nrows=2000, low_memory=False, sep=_csv_separator(path))
    except pd.errors.EmptyDataError:
        raise CatalogError(f"{path}: CSV file has no header or rows; re-create it") from None
    except (UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise CatalogError(f"{path}: not a readable CSV file ({exc}); check the file") from None
    if sample.empty:
        raise CatalogError(f"{path}: catalog has no rows; remove it from the inputs")
    kinds: dict[str, ColumnKind] = {}
    for name, dtype in sample.dtypes.items():
        if pd.api.types.is_bool_dtype(dtype):
            kinds[str(name)] = "bool"
        elif pd.api.types.is_integer_dtype(dtype):
            kinds[str(name)] = "int"
        elif pd.api.types.is_float_dtype(dtype):
            kinds[str(name)] = "float"
        else:
            kinds[str(name)] = "string"
    return kinds, None, 0


def resolve_columns(path: str, available: Sequence[str], user: Mapping[str, str], radius_column: str) -> dict[str, str]:
    """Canonical → source column for one file; raises when a required or user-named column is absent."""
    by_upper = {name.upper(): name for name in available}
    mapping: dict[str, str] = {}
    for canonical, source in user.items():
        found = by_upper.get(source.upper())
        if found is None:
            raise CatalogError(_missing_message(path, canonical, source, available, user_given=True))
        mapping[canonical] = found
    defaults = dict(NSA_V0_1_2)
    defaults["radius_arcsec"] = radius_column
    for canonical, source in defaults.items():
        if canonical in mapping:
            continue
        found = by_upper.get(source.upper())
        if found is None and canonical == "radius_arcsec" and radius_column == DEFAULT_RADIUS_COLUMN:
            found = next((by_upper[f] for f in V1_RADIUS_FALLBACKS if f in by_upper), None)
        if found is None and canonical == "radius_arcsec" and radius_column != DEFAULT_RADIUS_COLUMN:
            raise CatalogError(_missing_message(path, canonical, radius_column, available, user_given=True))
        if found is not None:
            mapping[canonical] = found
    for canonical in REQUIRED:
        if canonical not in mapping:
            raise CatalogError(_missing_message(path, canonical, defaults[canonical], available, False))
    return mapping


def _missing_message(path: str, canonical: str, source: str, available: Sequence[str], user_given: bool) -> str:
    close = difflib.get_close_matches(source, list(available), n=3, cutoff=0.5)
    hint = f" Similar columns: {', '.join(close)}." if close else ""
    flag = "--radius-column NAME" if canonical == "radius_arcsec" else f"--column {canonical}=NAME"
    what = "was asked for" if user_given else "is needed"
    return (
        f"{path}: has no column {source!r} ({canonical}), which {what}.{hint}\n"
        f"  Map the column that holds it with {flag} (or [ingest.columns] in the config file)."
    )


def _check_types(path: str, mapping: Mapping[str, str], kinds: Mapping[str, ColumnKind]) -> bool:
    """Raise on a non-numeric science column; returns True when the id column holds strings."""
    string_id = False
    for canonical, source in mapping.items():
        kind = kinds[source]
        if canonical == "objid":
            if kind == "string":
                string_id = True
            elif kind not in ("int", "float"):
                raise CatalogError(
                    f"{path}: id column {source!r} has type {kind}; map an integer or string id "
                    "with --column objid=NAME"
                )
            continue
        if kind == "array":
            raise CatalogError(
                f"{path}: column {source!r} ({canonical}) holds several values per row; map a "
                f"single-valued column with --column {canonical}=NAME"
            )
        if kind not in ("int", "float"):
            raise CatalogError(
                f"{path}: column {source!r} ({canonical}) has type {kind}, not a number; map a "
                f"numeric column with --column {canonical}=NAME"
            )
    return string_id


def plan_chunks(source: CatalogSource, chunk_rows: int) -> list[Chunk]:
    """Split one source into read tasks of about ``chunk_rows`` rows (CSV: ~64 MiB byte ranges)."""
    if source.format == "fits":
        n = int(source.n_rows or 0)
        return [Chunk(source, i, a, min(a + chunk_rows, n)) for i, a in enumerate(range(0, n, chunk_rows))]
    if source.format == "parquet":
        meta = pq.read_metadata(source.path)
        chunks, group, rows = [], [], 0
        for rg in range(meta.num_row_groups):
            group.append(rg)
            rows += meta.row_group(rg).num_rows
            if rows >= chunk_rows:
                chunks.append(Chunk(source, len(chunks), 0, rows, tuple(group)))
                group, rows = [], 0
        if group:
            chunks.append(Chunk(source, len(chunks), 0, rows, tuple(group)))
        return chunks
    size = source.n_bytes
    if source.path.lower().endswith(COMPRESSED_SUFFIXES):  # no byte ranges in a compressed stream: one task
        return [Chunk(source, 0, 0, size)]
    return [Chunk(source, i, a, min(a + CSV_CHUNK_BYTES, size)) for i, a in enumerate(range(0, size, CSV_CHUNK_BYTES))]


def read_raw(chunk: Chunk, extra: Sequence[str] = ()) -> Mapping[str, np.ndarray] | pd.DataFrame:
    """The chunk's mapped source columns, plus ``extra`` source columns, as read (no renaming)."""
    src = chunk.source
    wanted = list(dict.fromkeys([*src.mapping.values(), *extra]))
    if src.format == "fits":
        return _read_fits_rows(src, wanted, chunk.start, chunk.stop)
    if src.format == "parquet":
        return pq.ParquetFile(src.path).read_row_groups(list(chunk.row_groups), columns=wanted).to_pandas()
    return _read_csv_range(src, wanted, chunk.start, chunk.stop)


def read_chunk(chunk: Chunk) -> pd.DataFrame:
    """The chunk's rows in the canonical schema, in file order."""
    return canonical_frame(read_raw(chunk), chunk.source)


def _read_fits_rows(src: CatalogSource, wanted: list[str], start: int, stop: int) -> dict[str, np.ndarray]:
    from astropy.io import fits

    out: dict[str, np.ndarray] = {}
    with fits.open(src.path, memmap=True) as hdul:
        data = hdul[src.hdu].data
        for name in wanted:
            column = np.asarray(data.field(name)[start:stop])
            if column.dtype.kind in "SU":
                out[name] = np.char.strip(column.astype("U"))
            else:
                out[name] = column.astype(column.dtype.newbyteorder("="))
    return out


def _read_csv_range(src: CatalogSource, wanted: list[str], start: int, stop: int) -> pd.DataFrame:
    """Rows whose line starts in bytes [start, stop) (the first line of the file is the header);
    a compressed file is read whole. String ids are read as text (keeps leading zeros)."""
    options = {
        "usecols": lambda c: c in set(wanted),
        "low_memory": False,
        "sep": _csv_separator(src.path),
        "dtype": {src.mapping["objid"]: str} if src.string_id else None,
    }
    if src.path.lower().endswith(COMPRESSED_SUFFIXES):
        return pd.read_csv(src.path, **options)
    with open(src.path, "rb") as fh:
        header = fh.readline()
        if start > 0:
            fh.seek(start - 1)
            fh.readline()  # finish the line that began before start
        begin = max(fh.tell(), len(header))
        fh.seek(begin)
        body = fh.read(max(stop - begin, 0))
        if body and not body.endswith(b"\n"):
            body += fh.readline()
    if not body.strip():
        return pd.DataFrame({name: pd.Series(dtype="float64") for name in wanted})
    try:
        return pd.read_csv(io.BytesIO(header + body), **options)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{src.path}: malformed CSV near byte {begin} ({exc}); fix the file") from None


def canonical_frame(raw: Mapping[str, np.ndarray] | pd.DataFrame, src: CatalogSource) -> pd.DataFrame:
    """Rename and cast source columns to the canonical schema; absent optional columns are NaN."""
    n = len(next(iter(raw.values()))) if isinstance(raw, Mapping) else len(raw)
    out: dict[str, np.ndarray | pd.Series] = {}
    id_values = raw[src.mapping["objid"]]
    if src.string_id:
        missing = pd.isna(pd.Series(np.asarray(id_values, dtype=object))) | (
            pd.Series(np.asarray(id_values, dtype=object)).astype(str).str.strip() == ""
        )
        if missing.any():
            raise CatalogError(
                f"{src.path}: id column {src.mapping['objid']!r} is empty in {int(missing.sum())} rows; every row "
                "needs an id (fill them, or map a complete id with --column objid=NAME)"
            )
        ids = np.asarray(id_values, dtype=object).astype(str)
        out["objid"] = stable_id_hash(ids)
        out["source_id"] = pd.array(ids, dtype="string")
    else:
        out["objid"] = _integer_ids(src, id_values)
    for canonical in FLOAT64_COLUMNS + FLOAT32_COLUMNS:
        dtype = np.float64 if canonical in FLOAT64_COLUMNS else np.float32
        source = src.mapping.get(canonical)
        if source is None:
            out[canonical] = np.full(n, np.nan, dtype=dtype)
        else:
            out[canonical] = _numeric(src, canonical, source, raw[source]).astype(dtype)
    columns = ["objid", *(["source_id"] if src.string_id else []), *FLOAT64_COLUMNS, *FLOAT32_COLUMNS]
    return pd.DataFrame({c: out[c] for c in columns})


def _numeric(src: CatalogSource, canonical: str, source: str, values: object) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind in "iufb":
        return arr
    converted = pd.to_numeric(pd.Series(arr), errors="coerce")
    bad = converted.isna() & pd.Series(arr).notna() & (pd.Series(arr).astype(str).str.strip() != "")
    if bad.any():
        example = pd.Series(arr)[bad].iloc[0]
        raise CatalogError(
            f"{src.path}: column {source!r} ({canonical}) holds non-numeric values such as {example!r}; "
            f"clean the file or map another column with --column {canonical}=NAME"
        )
    return converted.to_numpy(dtype=np.float64)


def _integer_ids(src: CatalogSource, values: object) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    as_float = _numeric(src, "objid", src.mapping["objid"], arr).astype(np.float64)
    if not np.all(np.isfinite(as_float)) or not np.all(as_float == np.round(as_float)):
        raise CatalogError(
            f"{src.path}: id column {src.mapping['objid']!r} has missing or non-integer values; "
            "every row needs an id (map a complete id with --column objid=NAME)"
        )
    return as_float.astype(np.int64)


def stable_id_hash(ids: np.ndarray) -> np.ndarray:
    """Non-negative int64 from a string id: the first 8 bytes of BLAKE2b, stable across runs."""
    out = np.empty(len(ids), dtype=np.int64)
    for i, value in enumerate(ids):
        digest = hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF
    return out


def inspect_all(
    patterns: Sequence[str],
    columns: Mapping[str, str] | None = None,
    radius_column: str = DEFAULT_RADIUS_COLUMN,
    fmt: str = "auto",
) -> list[CatalogSource]:
    """Inspect every input (no data read); errors name the file. Sources keep the input order."""
    paths = expand_inputs(patterns)
    sources = [inspect_source(p, columns, radius_column, fmt) for p in paths]
    kinds = {s.string_id for s in sources}
    if len(kinds) > 1:
        mixed = ", ".join(s.path for s in sources if s.string_id)
        raise CatalogError(
            f"some inputs have string ids ({mixed}) and others integer ids; ingest them separately "
            "or map ids of one kind with --column objid=NAME"
        )
    return sources


def nsa_v1_message(paths: Sequence[str]) -> str:
    names = ", ".join(Path(p).name for p in paths)
    return (
        f"{names} has no emission-line columns (HAFLUX, N2FLUX, HBFLUX, O3FLUX).\n"
        "  NSA v1_0_1 carries no line fluxes; label with NSA v0_1_2, or map other columns with\n"
        "  --column ha_flux=NAME ... at ingest; this catalog can still be scored (agnsurvey score)."
    )
