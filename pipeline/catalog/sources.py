"""Catalog inputs: NSA FITS, Parquet, CSV and HATS → the canonical schema (DESIGN.md), in chunks.

Source column names are resolved once, here: NSA v0_1_2 names by default, NSA v1_0_1 names where
they exist (positions, radii; v1 has no line fluxes), and a user map (``--column ha_flux=NAME``) for
anything else. Matching is case-insensitive. Files are inspected (header / schema only) before any
data is read, so a missing or mistyped column fails at once, naming the file, the column and a fix.

Reading is by chunks of rows, one reader module per format (:mod:`pipeline.catalog.readers`),
chosen here by the file's format: a FITS table is memory-mapped and only the needed columns of one
chunk are copied (native byte order); Parquet is read by row groups; CSV by byte ranges that start
where a record starts (a scan of the quotes finds them; a file whose quoting cannot be followed
exactly is read by one task). Each chunk becomes one Dask partition, so a 3 GB file never sits in
one process's memory.

Ids are never changed silently: an integer id column must hold exact int64 integers in every row
(an error names the file, column, row and value otherwise); ids that are text (``--id-kind
string``, or a text column) are kept exactly as ``source_id`` with their stable hash as ``objid``.
"""

from __future__ import annotations

import difflib
import glob
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd

from pipeline.catalog.canonical import canonical_frame
from pipeline.catalog.readers import csv, fits, hats, parquet
from pipeline.catalog.readers.base import CatalogSource, Chunk, ColumnKind, Format
from pipeline.catalog.schema import (
    DEFAULT_RADIUS_COLUMN,
    NSA_V0_1_2,
    REQUIRED,
    V1_RADIUS_FALLBACKS,
    IdKind,
)
from pipeline.errors import CatalogError
from storage.hats_catalog import is_hats

READERS: dict[str, ModuleType] = {"fits": fits, "parquet": parquet, "csv": csv}


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """Files named by paths, globs, Parquet dataset directories or HATS catalog directories (their
    data files), in the order given."""
    paths: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern))) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise CatalogError(f"{pattern}: no file matches this pattern; check the path or quote the glob")
        for match in matches:
            p = Path(match)
            if p.is_dir() and ((p / "collection.properties").is_file() or is_hats(p)):
                paths.extend(str(f) for f in hats.input_files(p))
            elif p.is_dir():
                parts = sorted(str(f) for f in p.rglob("*.parquet") if not f.name.startswith("."))
                if not parts:
                    raise CatalogError(f"{p}: directory holds no *.parquet files; name catalog files instead")
                paths.extend(parts)
            elif not p.exists():
                raise CatalogError(f"{p}: no such file; check the path")
            else:
                paths.append(str(p))
    return paths


def file_stats(paths: tuple[str, ...]) -> dict[str, list]:
    """Catalog files by absolute path, size and modification time: a file replaced in place differs."""
    found = [os.path.abspath(p) for p in expand_inputs(paths)]
    stats = [os.stat(p) for p in found]
    return {"catalog": found, "bytes": [st.st_size for st in stats], "mtime_ns": [st.st_mtime_ns for st in stats]}


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


@dataclass(frozen=True)
class ReadOptions:
    """How input files are read: the user's column map (canonical → source), the radius column,
    the format (``auto``: by extension, then content), the FITS HDU (None: the first table), the
    kind of ids (``string`` keeps them as text in ``source_id``, ``int`` requires integers,
    ``auto`` goes by the column's type: a CSV column is text when none of its first values is a
    plain number) and the canonical columns every file must have."""

    columns: Mapping[str, str] | None = None
    radius_column: str = DEFAULT_RADIUS_COLUMN
    fmt: str = "auto"
    hdu: int | None = None
    id_kind: IdKind = "auto"
    required: Sequence[str] = REQUIRED


def inspect_source(path: str, options: ReadOptions) -> CatalogSource:
    """Read a file's header or schema (no data) and resolve + type-check the canonical columns."""
    kind: Format = sniff_format(path) if options.fmt == "auto" else options.fmt  # type: ignore[assignment]
    n_bytes = os.path.getsize(path)
    if n_bytes == 0:
        raise CatalogError(f"{path}: file is empty; re-create or re-download it")
    if options.hdu is not None and kind != "fits":
        raise CatalogError(f"{path}: --hdu applies to FITS files only; this one is {kind}")
    kinds, n_rows, hdu, tables = READERS[kind].schema(path, options.hdu)
    if n_rows == 0:
        raise CatalogError(f"{path}: catalog has no rows; remove it from the inputs")
    try:
        mapping = resolve_columns(path, list(kinds), options.columns or {}, options.radius_column, options.required)
    except CatalogError as exc:
        if len(tables) > 1 or (tables and hdu != 1):
            raise CatalogError(f"{exc}\n  {fits.hdu_note(hdu, tables)}") from None
        raise
    return CatalogSource(
        path=path,
        format=kind,
        n_bytes=n_bytes,
        n_rows=n_rows,
        mapping=mapping,
        string_id=_check_types(path, mapping, kinds, options.id_kind),
        hdu=hdu,
        all_columns=tuple(kinds),
        id_kind=options.id_kind,
    )


def resolve_columns(path: str, available: Sequence[str], user: Mapping[str, str], radius_column: str,
                    required: Sequence[str] = REQUIRED) -> dict[str, str]:  # fmt: skip
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
    for canonical in required:
        if canonical not in mapping:
            raise CatalogError(_missing_message(path, canonical, defaults[canonical], available, False))
    users: dict[str, list[str]] = {}
    for canonical, source in mapping.items():
        users.setdefault(source, []).append(canonical)
    for source, canonicals in users.items():
        if len(canonicals) > 1:
            raise CatalogError(
                f"{path}: column {source!r} would be read as {' and '.join(canonicals)}; map each of them to its own "
                f"column, e.g. --column {canonicals[-1]}=NAME"
            )
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


def _check_types(path: str, mapping: Mapping[str, str], kinds: Mapping[str, ColumnKind], id_kind: IdKind) -> bool:
    """Raise on a non-numeric science column; returns True when ids are kept as text."""
    string_id = False
    for canonical, source in mapping.items():
        kind = kinds[source]
        if canonical == "objid":
            if kind not in ("int", "float", "mixed", "string"):
                raise CatalogError(
                    f"{path}: id column {source!r} has type {kind}; map an integer or string id "
                    "with --column objid=NAME"
                )
            string_id = id_kind == "string" or (id_kind == "auto" and kind == "string")
            continue
        if kind == "array":
            raise CatalogError(
                f"{path}: column {source!r} ({canonical}) holds several values per row; map a "
                f"single-valued column with --column {canonical}=NAME"
            )
        if kind not in ("int", "float", "mixed"):
            raise CatalogError(
                f"{path}: column {source!r} ({canonical}) has type {kind}, not a number; map a "
                f"numeric column with --column {canonical}=NAME"
            )
    return string_id


def plan_chunks(source: CatalogSource, chunk_rows: int) -> list[Chunk]:
    """Split one source into read tasks of about ``chunk_rows`` rows (CSV: ~64 MiB byte ranges)."""
    return READERS[source.format].chunks(source, chunk_rows)


def read_raw(chunk: Chunk, extra: Sequence[str] = ()) -> Mapping[str, np.ndarray] | pd.DataFrame:
    """The chunk's mapped source columns, plus ``extra`` source columns, as read (no renaming)."""
    wanted = list(dict.fromkeys([*chunk.source.mapping.values(), *extra]))
    return READERS[chunk.source.format].read_rows(chunk, wanted)


def read_chunk(chunk: Chunk) -> pd.DataFrame:
    """The chunk's rows in the canonical schema, in file order."""
    return canonical_frame(read_raw(chunk), chunk.source, first_row=lambda: rows_before(chunk))


def rows_before(chunk: Chunk) -> int:
    """Data rows of the file before the chunk's first (for messages; a CSV's are counted by parsing
    the bytes before the chunk as a stream, in bounded memory)."""
    return READERS[chunk.source.format].rows_before(chunk)


def inspect_all(
    patterns: Sequence[str],
    columns: Mapping[str, str] | None = None,
    radius_column: str = DEFAULT_RADIUS_COLUMN,
    fmt: str = "auto",
    hdu: int | None = None,
    id_kind: IdKind = "auto",
    required: Sequence[str] = REQUIRED,
) -> list[CatalogSource]:
    """Inspect every input (no data read); errors name the file. Sources keep the input order.
    The options are those of :class:`ReadOptions`."""
    options = ReadOptions(columns, radius_column, fmt, hdu, id_kind, required)
    sources = [inspect_source(p, options) for p in expand_inputs(patterns)]
    kinds = {s.string_id for s in sources}
    if len(kinds) > 1:
        mixed = ", ".join(s.path for s in sources if s.string_id)
        raise CatalogError(
            f"some inputs have text ids ({mixed}) and others integer ids; keep them all as text with "
            "--id-kind string, ingest them separately, or map ids of one kind with --column objid=NAME"
        )
    return sources


def missing_lines_text(path: str, missing: Sequence[str]) -> str:
    """'a.fits has no column for hb_flux (HBFLUX), oiii_flux (O3FLUX)'."""
    named = ", ".join(f"{c} ({NSA_V0_1_2[c]})" for c in missing)
    return f"{Path(path).name} has no column for {named}"


def map_lines_hint(missing: Sequence[str]) -> str:
    return " ".join(f"--column {c}=NAME" for c in missing)


def nsa_v1_message(paths: Sequence[str]) -> str:
    names = ", ".join(Path(p).name for p in paths)
    return (
        f"{names} has no emission-line columns (HAFLUX, N2FLUX, HBFLUX, O3FLUX).\n"
        "  NSA v1_0_1 carries no line fluxes; label with NSA v0_1_2, or map other columns with\n"
        "  --column ha_flux=NAME ... at ingest; this catalog can still be scored (agnsurvey score)."
    )
