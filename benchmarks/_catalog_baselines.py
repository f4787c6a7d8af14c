"""What ``bench_catalog.py`` compares agnsurvey with, on the same files: the I/O floor (one process,
pyarrow, the same 13 columns, the pipeline's writer settings), the paper's single-process pandas,
and hats-import, the peer importer, on the same cluster.

Written independently of the stages they are compared with: their row counts and classes check
agnsurvey's (``bench_catalog.verify``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from astropy.io import fits
from astropy.table import Table
from distributed import Client

from pipeline.catalog.args import IngestArgs
from pipeline.catalog.readers.fits import native_copies
from storage.hats_catalog import declared_not_null

SOURCE_COLUMNS: tuple[str, ...] = (
    "NSAID", "RA", "DEC", "Z", "PETROTH90",
    "HAFLUX", "N2FLUX", "HBFLUX", "O3FLUX",
    "HAFLUXERR", "N2FLUXERR", "HBFLUXERR", "O3FLUXERR",
)  # fmt: skip
LINE_FLUXES = ("HAFLUX", "N2FLUX", "HBFLUX", "O3FLUX")
PARQUET_OPTIONS: dict[str, Any] = {"compression": "snappy", "use_dictionary": False}  # as storage/hats_catalog.py
MAX_ROWS = IngestArgs.max_rows  # rows per HEALPix partition, for agnsurvey and hats-import alike

now: Callable[[], float] = time.perf_counter


# --------------------------------------------------------------------------------------------------
# 4. hats-import, the peer importer, on the same cluster


def run_hats_import(fits_path: Path, out: Path, client: Client) -> dict[str, Any]:
    """FITS → HATS catalog with hats-import (13 columns, partition threshold ``MAX_ROWS``)."""
    from hats.catalog import TableProperties
    from hats_import.catalog.arguments import ImportArguments
    from hats_import.catalog.file_readers import FitsReader
    from hats_import.pipeline import pipeline_with_client

    args = ImportArguments(
        output_artifact_name="nsa", output_path=out, tmp_dir=out / "tmp", input_file_list=[str(fits_path)],
        file_reader=FitsReader(chunksize=500_000, column_names=list(SOURCE_COLUMNS)), ra_column="RA",
        dec_column="DEC", pixel_threshold=MAX_ROWS, progress_bar=False, resume=False,
    )  # fmt: skip
    t0 = now()
    pipeline_with_client(args, client)
    seconds = now() - t0
    return {"seconds": seconds, "rows": TableProperties.read_from_dir(out / "nsa").total_rows}


# --------------------------------------------------------------------------------------------------
# 2. The I/O floor: one process, pyarrow, the same columns, the pipeline's writer settings


def read_fits_columns(fits_path: Path) -> pa.Table:
    """The 13 source columns from the FITS table (memmap, copied to native byte order with the
    pipeline's own cache-blocked copy: the floor reads no slower than the pipeline does)."""
    with fits.open(fits_path, memmap=True) as hdul:
        data = hdul[1].data
        arrays = native_copies({name: data.field(name) for name in SOURCE_COLUMNS}, data.dtype.itemsize)
    return declared_not_null(pa.table(arrays))


def floor_parquet(sky_parquet: Path, out: Path) -> dict[str, float]:
    """Read the columns from the sky's Parquet dataset, write them to one Parquet file."""
    t0 = now()
    table = declared_not_null(pq.read_table(sky_parquet, columns=list(SOURCE_COLUMNS)))
    t1 = now()
    pq.write_table(table, out / "floor.parquet", **PARQUET_OPTIONS)
    t2 = now()
    return {"read_s": t1 - t0, "write_s": t2 - t1, "rows": table.num_rows}


def floor_fits(fits_path: Path, out: Path) -> dict[str, float]:
    """FITS → Parquet (one pass), then that file → Parquet again (the second pass of 'floor x2')."""
    t0 = now()
    table = read_fits_columns(fits_path)
    t1 = now()
    pq.write_table(table, out / "pass1.parquet", **PARQUET_OPTIONS)
    t2 = now()
    del table
    again = pq.read_table(out / "pass1.parquet")
    t3 = now()
    pq.write_table(again, out / "pass2.parquet", **PARQUET_OPTIONS)
    t4 = now()
    return {"read_s": t1 - t0, "write_s": t2 - t1, "read2_s": t3 - t2, "write2_s": t4 - t3, "rows": again.num_rows}


# --------------------------------------------------------------------------------------------------
# 3. The paper's way: single-process pandas


def run_pandas(fits_path: Path, out: Path) -> dict[str, Any]:
    """Table.read → pandas → cleaning → x, y, paper rule → to_parquet; returns time, kept rows, classes.

    Written independently of ``pipeline`` (its numbers check agnsurvey's). Ratios are taken in
    float64, as the pipeline does, so that points on a dividing line fall the same way.
    """
    t0 = now()
    table = Table.read(fits_path, hdu=1, memmap=True)
    frame = table[list(SOURCE_COLUMNS)].to_pandas()
    del table
    rows_in = len(frame)
    good_coords = frame["RA"].between(0, 360, inclusive="left") & frame["DEC"].between(-90, 90)
    frame = frame[good_coords]
    frame = frame[~frame["NSAID"].duplicated(keep="first")]
    rows_clean = len(frame)
    fluxes = frame[list(LINE_FLUXES)]
    frame = frame[(np.isfinite(fluxes) & (fluxes > 0)).all(axis=1)].copy()
    x = np.log10(frame["N2FLUX"].astype("float64") / frame["HAFLUX"].astype("float64"))
    y = np.log10(frame["O3FLUX"].astype("float64") / frame["HBFLUX"].astype("float64"))
    star_forming = (y < 0.61 / (x - 0.05) + 1.3) & (x < -0.1)
    frame["x"] = x
    frame["y"] = y
    frame["label"] = (~star_forming).astype("int8")  # AGN = 1
    frame.to_parquet(out / "pandas.parquet", index=False, **PARQUET_OPTIONS)
    seconds = now() - t0
    n_sf = int(star_forming.sum())
    return {
        "seconds": seconds,
        "rows_in": rows_in,
        "rows_after_coords_and_ids": rows_clean,
        "rows_kept": len(frame),
        "classes": {"sf": n_sf, "agn": len(frame) - n_sf},
    }
