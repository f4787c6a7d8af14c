"""Workspace tables as HATS catalogs: HEALPix-partitioned Parquet that LSDB opens as it is.

```
TABLE/ hats.properties  partition_info.csv  skymap.fits
       dataset/ _metadata  _common_metadata
                Norder=k/Dir=d/Npix=n.parquet      one file per pixel (catalog, labels)
                Norder=k/Dir=d/Npix=n/*.parquet    or a directory of files per pixel (scores)
```

Data files are written by the stages (one task, one pixel); the metadata files are then written
with the ``hats`` library (:func:`finish_catalog`), so they are what LSDB and hats-import expect.
Rows carry ``_healpix_29`` (HEALPix nested index, order 29) and are sorted on it within a pixel.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from storage.errors import WorkspaceError
from storage.healpix import HEALPIX_ORDER, adaptive_partitions, healpix29

DATASET = "dataset"
SKYMAP_ORDER = 8  # skymap.fits: rows per order-8 pixel (~0.05 square degrees), as LSDB writes by default
PROPERTIES = "hats.properties"
METADATA_FILES = (PROPERTIES, "properties", "partition_info.csv", "skymap.fits", "point_map.fits",
                  f"{DATASET}/_metadata", f"{DATASET}/_common_metadata")  # fmt: skip


@dataclass(frozen=True)
class Written:
    """One data file written: its pixel, rows and rows per order-``SKYMAP_ORDER`` pixel."""

    order: int
    pixel: int
    rows: int
    sky: tuple[np.ndarray, np.ndarray]  # (order-8 pixels, rows in each)


def preload_hats() -> None:
    """Import ``hats`` in a background thread (about 1 s), so that :func:`finish_catalog` need not
    wait for it at the end of a stage."""
    threading.Thread(target=importlib.import_module, args=("hats",), daemon=True).start()


def is_hats(path: Path) -> bool:
    """True for a HATS catalog directory (properties file beside a ``dataset/`` directory)."""
    return ((path / PROPERTIES).is_file() or (path / "properties").is_file()) and (path / DATASET).is_dir()


def check_table(root: Path, make: str) -> None:
    """Raise a :class:`WorkspaceError` naming ``make`` (the command that writes it) unless ``root``
    is a HATS catalog (a missing table, an interrupted write, or one made before tables were HATS)."""
    if is_hats(root):
        return
    if root.is_dir() and any(root.glob("part-*.parquet")):
        raise WorkspaceError(f"{root} was written before workspace tables were HATS catalogs; re-run {make}")
    raise WorkspaceError(f"{root} is missing or incomplete; run {make} first")


def pixel_path(root: Path, order: int, pixel: int, directory: bool = False) -> Path:
    """``root/dataset/Norder=k/Dir=d/Npix=n.parquet`` (or the ``Npix=n/`` directory), ``d`` being
    ``n`` rounded down to a multiple of 10,000 (the HATS layout). Spelled here, not with
    ``hats.io.paths``: importing ``hats`` takes ~1 s, too much for every worker process."""
    name = f"Npix={pixel}" if directory else f"Npix={pixel}.parquet"
    return Path(root) / DATASET / f"Norder={order}" / f"Dir={pixel // 10_000 * 10_000}" / name


def pixel_relpath(order: int, pixel: int, directory: bool = False) -> str:
    """:func:`pixel_path` relative to the catalog's root (``dataset/Norder=k/...``)."""
    return pixel_path(Path("/"), order, pixel, directory).relative_to("/").as_posix()


def write_partition(table: pa.Table | pd.DataFrame, path: Path, order: int, pixel: int,
                    dictionary_columns: Sequence[str] = (), not_null: bool = False) -> Written:  # fmt: skip
    """Write one pixel's rows (a ``_healpix_29`` column, sorted on it) to ``path``.

    No dictionary encoding except for the named low-cardinality columns: on unique floats
    pyarrow's dictionary attempt makes writing ~3x slower for no gain in size. ``not_null``: every
    column of the Arrow table has a value in every row (NaN is a value in Arrow, not in pandas), as
    in the stages' tables, which are built from numpy arrays; the columns are then declared so
    (Parquet "required"), which spares a definition level per value: writing ~25% and reading ~35%
    faster (measured on 500k catalog rows).
    """
    if not_null and isinstance(table, pd.DataFrame):
        raise TypeError("not_null needs an Arrow table: converting a DataFrame makes its NaN nulls")
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    if not_null:
        table = declared_not_null(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="snappy",
                   use_dictionary=list(dictionary_columns) if dictionary_columns else False)  # fmt: skip
    hpx = table.column("_healpix_29").to_numpy()
    return Written(order, pixel, table.num_rows, sky_counts(hpx))


def declared_not_null(table: pa.Table) -> pa.Table:
    """``table`` with every field declared not null (no data copied); a ValueError names a column
    that does hold nulls."""
    nulls = [name for name, column in zip(table.column_names, table.columns, strict=True) if column.null_count]
    if nulls:
        raise ValueError(f"columns {nulls} hold nulls: they cannot be declared not null")
    schema = pa.schema([f.with_nullable(False) for f in table.schema], metadata=table.schema.metadata)
    return pa.Table.from_arrays(table.columns, schema=schema)


def sky_counts(healpix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows per order-``SKYMAP_ORDER`` pixel of order-29 indices (sparse: pixels, counts)."""
    pixels = np.asarray(healpix, dtype=np.int64) >> np.int64(2 * (HEALPIX_ORDER - SKYMAP_ORDER))
    if pixels.size and (pixels[1:] >= pixels[:-1]).all():  # sorted, as partitions are: no sort needed
        starts = np.flatnonzero(np.r_[True, pixels[1:] != pixels[:-1]])
        return pixels[starts], np.diff(np.r_[starts, pixels.size])
    return np.unique(pixels, return_counts=True)


def finish_catalog(root: Path, name: str, written: Sequence[Written], directories: bool = False) -> int:
    """Write the HATS metadata of the data files under ``root/dataset`` with the ``hats`` library:
    ``_metadata`` and ``_common_metadata``, ``partition_info.csv``, ``skymap.fits`` and
    ``hats.properties``. ``written`` lists every data file; returns the catalog's rows."""
    import hats
    from hats.catalog import CatalogType, PartitionInfo, TableProperties
    from hats.io.skymap import write_skymap
    from hats.pixel_math import HealpixPixel

    pixels = sorted({(w.order, w.pixel) for w in written})
    total = hats.io.write_parquet_metadata(root)
    if total != sum(w.rows for w in written):
        raise RuntimeError(f"{root}: the files hold {total} rows, the tasks wrote {sum(w.rows for w in written)}")
    info = PartitionInfo.from_healpix([HealpixPixel(o, p) for o, p in pixels])
    info.write_to_file(root / "partition_info.csv")
    histogram = np.zeros(12 * 4**SKYMAP_ORDER, dtype=np.int64)
    for w in written:
        np.add.at(histogram, w.sky[0], w.sky[1])
    write_skymap(histogram, root)
    per_pixel: dict[tuple[int, int], int] = {}
    for w in written:
        per_pixel[(w.order, w.pixel)] = per_pixel.get((w.order, w.pixel), 0) + w.rows
    properties = TableProperties(
        catalog_name=name,
        catalog_type=CatalogType.OBJECT,
        total_rows=total,
        ra_column="ra",
        dec_column="dec",
        healpix_column="_healpix_29",
        healpix_order=HEALPIX_ORDER,
        npix_suffix="/" if directories else ".parquet",
        skymap_order=SKYMAP_ORDER,
        hats_max_rows=max(per_pixel.values(), default=0),
        moc_sky_fraction=float(f"{info.calculate_fractional_coverage():.5g}"),
        hats_order=max((o for o, _ in pixels), default=0),
        hats_builder=f"agnsurvey {_version('agnsurvey')}, hats v{_version('hats')}",
    )
    properties.to_properties_file(root)
    return total


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:  # run from a source tree without installing
        return "unknown"


def clear_metadata(root: Path) -> None:
    """Remove the catalog-level metadata (data files stay): done before data files are rewritten in
    place, so no reader trusts a ``_metadata`` that no longer matches them."""
    for name in METADATA_FILES:
        (root / name).unlink(missing_ok=True)


def partition_files(root: Path) -> list[tuple[int, int, Path]]:
    """``(order, pixel, path)`` of every partition, in sky order (nested index of its first cell),
    from ``partition_info.csv`` and ``hats.properties`` (read directly: no ``hats`` import)."""
    table = pd.read_csv(root / "partition_info.csv")
    directories = read_properties(root).get("hats_npix_suffix", ".parquet") == "/"
    pixels = sorted(zip(table["Norder"].tolist(), table["Npix"].tolist(), strict=True),
                    key=lambda op: op[1] << (2 * (HEALPIX_ORDER - op[0])))  # fmt: skip
    return [(int(k), int(p), pixel_path(root, k, p, directory=directories)) for k, p in pixels]


def read_properties(root: Path, name: str = PROPERTIES) -> dict[str, str]:
    """A HATS properties file (``hats.properties``, or ``properties`` in older catalogs;
    ``collection.properties``) as key/value text, comments skipped."""
    path = root / name
    if name == PROPERTIES and not path.is_file() and (root / "properties").is_file():
        path = root / "properties"
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            out[key.strip()] = value.strip()
    return out


def data_files(root: Path) -> list[Path]:
    """Every data file of a HATS catalog (not its metadata files), in path order."""
    base = root / DATASET
    return sorted(
        p for p in base.rglob("*.parquet") if not any(part.startswith(("_", ".")) for part in p.relative_to(base).parts)
    )


def table_columns(root: Path) -> list[str]:
    """Column names of a HATS catalog, from ``dataset/_common_metadata`` (no data read)."""
    return pq.read_schema(root / DATASET / "_common_metadata").names


def describe_files(root: Path) -> list[Written]:
    """:class:`Written` of every data file under ``root/dataset`` (pixel from its path, rows and
    sky counts from its ``_healpix_29``): for files written by earlier runs."""
    from hats.io.paths import get_healpix_from_path

    out = []
    for path in data_files(root):
        pixel = get_healpix_from_path(path.relative_to(root).as_posix())
        hpx = pq.read_table(path, columns=["_healpix_29"]).column(0).to_numpy()
        out.append(Written(pixel.order, pixel.pixel, len(hpx), sky_counts(hpx)))
    return out


MADE_BY = {"catalog": "agnsurvey ingest", "labels": "agnsurvey label", "scores": "agnsurvey score"}


def damaged(path: Path, exc: BaseException) -> WorkspaceError:
    """The error for a missing or unreadable data file of a workspace table, naming the stage that
    writes the table again."""
    table = next((p for p in (Path(path), *Path(path).parents) if p.name in MADE_BY), None)
    again = MADE_BY[table.name] if table is not None else "the stage that wrote it"
    text = str(exc).splitlines()[0] if str(exc) else repr(exc)
    why = "missing" if isinstance(exc, FileNotFoundError) else f"damaged ({text})"
    return WorkspaceError(f"{path} is {why}; re-run `{again}` to write the table again")


def read_partition(path: Path, columns: Sequence[str] | None = None, use_threads: bool = True) -> pa.Table:
    """One data file of a workspace table (a :class:`WorkspaceError` if it is missing or damaged)."""
    try:
        return pq.read_table(path, columns=columns, use_threads=use_threads)
    except (OSError, pa.ArrowException) as exc:
        raise damaged(path, exc) from None


def listed_files(root: Path) -> tuple[list[Path], list[Path], int]:
    """(data files, missing partitions, partitions listed) of a HATS catalog: the files of the
    partitions ``partition_info.csv`` lists (no stray file beside them), or, for a catalog without
    that file, every data file under ``dataset/``."""
    if not (root / "partition_info.csv").is_file():
        return (data_files(root) if (root / DATASET).is_dir() else []), [], 0
    listed = [path for _, _, path in partition_files(root)]
    files = [f for p in listed if p.exists() for f in ([p] if p.is_file() else sorted(p.glob("*.parquet")))]
    return files, [p for p in listed if not p.exists()], len(listed)


def read_table(root: Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """All rows of a HATS catalog's partitions (or ``columns`` of them) as one DataFrame; the
    hive-style ``Norder``/``Dir``/``Npix`` directory names are not turned into columns. Every
    partition ``partition_info.csv`` lists must be there."""
    files, missing, _ = listed_files(root)
    if missing:
        raise damaged(missing[0], FileNotFoundError(missing[0]))
    try:
        dataset = pads.dataset([str(p) for p in files], format="parquet")
        return dataset.to_table(columns=list(columns) if columns is not None else None).to_pandas()
    except (OSError, pa.ArrowException) as exc:
        raise damaged(root, exc) from None


def write_frame(frame: pd.DataFrame, root: Path, name: str, max_rows: int = 500_000) -> list[Written]:
    """Write a whole DataFrame (columns ``ra``, ``dec`` in degrees) as a HATS catalog at ``root``:
    ``_healpix_29`` is computed if absent, rows are sorted on it and partitioned adaptively. For
    small tables (fixtures, benchmarks, notebooks); the stages write their partitions in parallel."""
    frame = frame.copy()
    if "_healpix_29" not in frame:
        frame["_healpix_29"] = healpix29(frame["ra"].to_numpy(), frame["dec"].to_numpy())
    frame = frame.sort_values("_healpix_29", kind="stable").reset_index(drop=True)
    hpx = frame["_healpix_29"].to_numpy()
    written, start = [], 0
    for order, pixel, rows in adaptive_partitions(hpx, max_rows):
        part = frame.iloc[start : start + rows]
        written.append(write_partition(part, pixel_path(root, order, pixel), order, pixel))
        start += rows
    finish_catalog(root, name, written)
    return written
