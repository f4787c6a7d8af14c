"""The offline sky: an NSA-like galaxy catalog (``agnsurvey sky make``), written fast and in parallel.

``make_sky`` writes, under ``SkyArgs.out``:

- ``nsa_sky.fits``: the NSA v0_1_2 layout (empty primary HDU, one big-endian BINTABLE named
  ``NSA``) with the columns of :data:`COLUMNS`, including the hidden truth ``SIM_CLASS``
  (0 star-forming, 1 composite, 2 Seyfert, 3 LINER) that the image renderer uses;
- ``nsa_sky.parquet/``: the same rows as a Parquet dataset, one ``part-NNNNN.parquet`` per partition
  (native types; IAUNAME and SUBDIR as strings, the 7-band columns as fixed-size lists of float32);
- ``sky_manifest.json``: n, seed, class counts, files and checksums.

How it scales: the FITS header is computed up front and the file pre-sized; each partition is a
Dask task that generates its rows and writes them straight to their byte range of the FITS file
(``os.pwrite``, no locks: ranges are disjoint) and to its own Parquet part. Nothing holds the
whole table. The output directory must be visible to every worker (a local path for a
``LocalCluster``, a shared filesystem on a real cluster).

Determinism: rows are generated in fixed blocks of :data:`BLOCK_ROWS`, block ``b`` from
``np.random.SeedSequence([seed, b])``; a partition generates the blocks it overlaps and keeps its
rows. The bytes therefore depend on ``(n, seed)`` only, never on ``partition_rows``, the number of
workers or the order tasks run in, and a smaller ``n`` gives a prefix of a larger one.

The science (classes, BPT positions, line fluxes, redshifts, radii, photometry, positions) is
:mod:`pipeline.synthetic.population`: pure functions of a ``numpy.random.Generator``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from astropy.io import fits
from distributed import Client

from cluster.client import compute
from pipeline.errors import ConfigError
from pipeline.stage import RunContext, Step
from pipeline.synthetic.args import SkyArgs
from pipeline.synthetic.footprint import footprint_area_deg2
from pipeline.synthetic.population import (
    LINES,
    bpt_positions,
    draw_classes,
    iau_names,
    line_fluxes,
    photometry,
    radii,
    redshifts,
    sky_positions,
)
from storage.manifest import Manifest, atomic_file, file_checksum, write_json_atomic

SKY_FITS = "nsa_sky.fits"
SKY_V1_FITS = "nsa_v1_sky.fits"
SKY_PARQUET = "nsa_sky.parquet"
SKY_MANIFEST = "sky_manifest.json"

BLOCK_ROWS = 10_000
"""Rows per random-number block; part of the output's definition (changing it changes the data)."""

CLASS_NAMES: tuple[str, ...] = ("star-forming", "composite", "seyfert", "liner")

FLUX_UNIT = "10**-17 erg s-1 cm-2"


@dataclass(frozen=True)
class Column:
    """One column: FITS name and TFORM, native numpy dtype, per-row shape, FITS unit."""

    name: str
    tform: str
    dtype: str
    shape: tuple[int, ...] = ()
    unit: str | None = None


COLUMNS: tuple[Column, ...] = (
    Column("NSAID", "J", "i4"),
    Column("IAUNAME", "19A", "S19"),
    Column("SUBDIR", "27A", "S27"),
    Column("RA", "D", "f8", unit="deg"),
    Column("DEC", "D", "f8", unit="deg"),
    Column("Z", "E", "f4"),
    Column("ZDIST", "E", "f4"),
    *(Column(f"{line}FLUX{suffix}", "E", "f4", unit=FLUX_UNIT) for line in LINES for suffix in ("", "ERR")),
    Column("PETROTH50", "E", "f4", unit="arcsec"),
    Column("PETROTH90", "E", "f4", unit="arcsec"),
    Column("SERSIC_TH50", "E", "f4", unit="arcsec"),
    Column("NMGY", "7E", "f4", (7,)),  # nanomaggies (no FITS unit string exists)
    Column("NMGY_IVAR", "7E", "f4", (7,)),  # nanomaggies**-2
    Column("ABSMAG", "7E", "f4", (7,), unit="mag"),
    Column("SIM_CLASS", "I", "i2"),
)
COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)


def fits_dtype() -> np.dtype:
    """The big-endian, unpadded row dtype of the FITS table (204 bytes a row)."""
    return np.dtype([(c.name, (">" + c.dtype) if c.dtype[0] != "S" else c.dtype, c.shape) for c in COLUMNS])


def generate_block(seed: int, block: int) -> dict[str, np.ndarray]:
    """All columns (native dtypes) of rows [block*BLOCK_ROWS, (block+1)*BLOCK_ROWS) of sky ``seed``."""
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence([seed, block]).spawn(7)]
    n = BLOCK_ROWS
    cls = draw_classes(streams[0], n)
    x, y = bpt_positions(streams[1], cls)
    z = redshifts(streams[2], n)
    ra, dec = sky_positions(streams[3], n)
    iauname, subdir = iau_names(ra, dec)
    zdist = np.maximum(z + streams[2].normal(0.0, 0.0005, n), 0.001)  # peculiar velocities ~150 km/s
    cols: dict[str, np.ndarray] = {
        "NSAID": np.arange(block * n, (block + 1) * n, dtype=np.int32),
        "IAUNAME": iauname,
        "SUBDIR": subdir,
        "RA": ra,
        "DEC": dec,
        "Z": z.astype(np.float32),
        "ZDIST": zdist.astype(np.float32),
        **line_fluxes(streams[4], cls, x, y, z),
        **radii(streams[5], cls, z),
        **photometry(streams[6], cls, z),
        "SIM_CLASS": cls,
    }
    return {name: cols[name] for name in COLUMN_NAMES}


def generate_rows(seed: int, start: int, stop: int) -> dict[str, np.ndarray]:
    """Columns of global rows [start, stop) of sky ``seed``: the blocks they overlap, sliced."""
    first, last = start // BLOCK_ROWS, (stop - 1) // BLOCK_ROWS
    blocks = [generate_block(seed, b) for b in range(first, last + 1)]
    lo = start - first * BLOCK_ROWS
    hi = lo + (stop - start)
    if len(blocks) == 1:
        return {name: col[lo:hi] for name, col in blocks[0].items()}
    return {name: np.concatenate([b[name] for b in blocks])[lo:hi] for name in COLUMN_NAMES}


def to_fits_rows(cols: dict[str, np.ndarray]) -> np.ndarray:
    """Columns → one C-contiguous big-endian structured array in the FITS row layout."""
    rows = np.empty(len(cols["NSAID"]), dtype=fits_dtype())
    for name in COLUMN_NAMES:
        rows[name] = cols[name]
    return rows


def to_arrow(cols: dict[str, np.ndarray]) -> pa.Table:
    """Columns → Arrow table: strings for IAUNAME/SUBDIR, fixed_size_list<float32>[7] for arrays."""
    arrays: dict[str, pa.Array] = {}
    for c in COLUMNS:
        data = cols[c.name]
        if c.dtype[0] == "S":
            width = data.dtype.itemsize
            offsets = np.arange(len(data) + 1, dtype=np.int32) * width
            raw = np.ascontiguousarray(data).view(np.uint8)
            arrays[c.name] = pa.StringArray.from_buffers(len(data), pa.py_buffer(offsets), pa.py_buffer(raw))
        elif c.shape:
            flat = pa.array(np.ascontiguousarray(data).ravel())
            arrays[c.name] = pa.FixedSizeListArray.from_arrays(flat, c.shape[0])
        else:
            arrays[c.name] = pa.array(data)
    fields = [
        pa.field(c.name, arrays[c.name].type, nullable=False, metadata={"unit": c.unit} if c.unit else None)
        for c in COLUMNS
    ]
    return pa.Table.from_arrays(list(arrays.values()), schema=pa.schema(fields))


def fits_headers(n: int, seed: int) -> bytes:
    """Primary header + BINTABLE header (each padded to 2880 bytes) of an n-row sky table."""
    columns = [fits.Column(name=c.name, format=c.tform, unit=c.unit) for c in COLUMNS]
    table = fits.BinTableHDU.from_columns(columns, nrows=0, name="NSA")
    header = table.header
    header["NAXIS2"] = n
    if header["NAXIS1"] != fits_dtype().itemsize:
        raise AssertionError(f"FITS row is {header['NAXIS1']} bytes, dtype {fits_dtype().itemsize}")
    header["ORIGIN"] = ("agnsurvey", "synthetic NSA-like sky (pipeline.synthetic)")
    header["SIMSEED"] = (seed, "random seed of the synthetic sky")
    header["SIMBLOCK"] = (BLOCK_ROWS, "rows per random-number block")
    header["COMMENT"] = "Line fluxes in 1e-17 erg/s/cm2; NMGY in nanomaggies, bands FUV NUV u g r i z."
    header["COMMENT"] = "SIM_CLASS: true class 0 star-forming, 1 composite, 2 Seyfert, 3 LINER."
    primary = fits.PrimaryHDU().header
    return primary.tostring().encode("ascii") + header.tostring().encode("ascii")


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        written = os.pwrite(fd, data, offset)
        data = data[written:]
        offset += written


def _write_partition(
    fits_path: str, parquet_dir: str, index: int, start: int, stop: int, seed: int, data_offset: int
) -> dict[str, Any]:
    """Generate rows [start, stop); write them into the pre-sized FITS file and a Parquet part."""
    cols = generate_rows(seed, start, stop)
    rows = to_fits_rows(cols)
    fd = os.open(fits_path, os.O_WRONLY)
    try:
        _pwrite_all(fd, memoryview(rows.view(np.uint8)), data_offset + start * rows.dtype.itemsize)
    finally:
        os.close(fd)
    part = f"part-{index:05d}.parquet"
    # Dictionary encoding only pays on the class code; on unique floats it doubles write and read time.
    pq.write_table(to_arrow(cols), os.path.join(parquet_dir, part), compression="zstd", use_dictionary=["SIM_CLASS"])
    counts = np.bincount(cols["SIM_CLASS"], minlength=len(CLASS_NAMES))
    return {"index": index, "file": part, "rows": stop - start, "class_counts": counts.tolist()}


def _prepare_out(out: Path, needed_bytes: int) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"sky output {out} exists and is not a directory; pass another --out") from None
    except OSError as exc:
        raise ConfigError(f"cannot create the sky output directory {out}: {exc.strerror}; pass another --out") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"sky output directory {out} is not writable; pass another --out or fix its permissions")
    free = shutil.disk_usage(out).free
    if free < needed_bytes:
        raise ConfigError(
            f"sky output {out} has {free / 1e9:.1f} GB free but the catalog needs about "
            f"{needed_bytes / 1e9:.1f} GB; pass a smaller --n or another --out"
        )


def make_sky(args: SkyArgs, client: Client | None = None) -> Manifest:
    """Write the synthetic NSA-like catalog (FITS + Parquet + manifest) under ``args.out``.

    ``client``: a ``distributed.Client`` to run the partitions on (None: dask's default scheduler).
    Returns the manifest also written to ``args.out / SKY_MANIFEST``.
    """
    if args.n > np.iinfo(np.int32).max:
        raise ConfigError(f"sky.n must be < 2**31 (NSAID is a 32-bit integer, got {args.n})")
    if args.layout == "v1":
        return make_sky_v1(args)
    manifest = Manifest(stage="sky", parameters={"n": args.n, "seed": args.seed, "partition_rows": args.partition_rows})
    out = Path(args.out).absolute()
    row_bytes = fits_dtype().itemsize
    header = fits_headers(args.n, args.seed)
    data_bytes = args.n * row_bytes
    fits_size = len(header) + -(-data_bytes // 2880) * 2880
    _prepare_out(out, needed_bytes=2 * fits_size)

    tag = uuid.uuid4().hex[:8]
    fits_tmp = out / f".{SKY_FITS}.{tag}.tmp"
    parquet_tmp = out / f".{SKY_PARQUET}.{tag}.tmp"
    try:
        with open(fits_tmp, "wb") as fh:
            fh.write(header)
            fh.truncate(fits_size)  # zero data and padding; partitions fill in their byte ranges
        parquet_tmp.mkdir()
        starts = range(0, args.n, args.partition_rows)
        write = dask.delayed(_write_partition, pure=False)
        tasks = [
            write(
                fits_path=str(fits_tmp),
                parquet_dir=str(parquet_tmp),
                index=i,
                start=start,
                stop=min(start + args.partition_rows, args.n),
                seed=args.seed,
                data_offset=len(header),
                dask_key_name=f"sky-partition-{tag}-{i:05d}",
            )
            for i, start in enumerate(starts)
        ]
        parts = sorted(compute(*tasks, client=client), key=lambda p: p["index"])
        _check_fits(fits_tmp, args.n)
        os.replace(fits_tmp, out / SKY_FITS)
        parquet_dir = out / SKY_PARQUET
        if parquet_dir.exists():
            shutil.rmtree(parquet_dir)
        os.replace(parquet_tmp, parquet_dir)
    finally:
        fits_tmp.unlink(missing_ok=True)
        if parquet_tmp.exists():
            shutil.rmtree(parquet_tmp, ignore_errors=True)

    counts = np.sum([p["class_counts"] for p in parts], axis=0)
    manifest.rows_out = args.n
    manifest.outputs = {
        "fits": {"path": str(out / SKY_FITS), "bytes": fits_size, "checksum": file_checksum(out / SKY_FITS)},
        "parquet": {
            "path": str(out / SKY_PARQUET),
            "files": [{"file": p["file"], "rows": p["rows"]} for p in parts],
        },
    }
    manifest.extra = {
        "class_counts": {name: int(c) for name, c in zip(CLASS_NAMES, counts, strict=True)},
        "partitions": len(parts),
        "block_rows": BLOCK_ROWS,
        "footprint_deg2": round(footprint_area_deg2(), 1),
    }
    manifest.finish()
    manifest.extra["rows_per_second"] = round(args.n / max(manifest.seconds, 1e-9))
    write_json_atomic(out / SKY_MANIFEST, manifest.to_dict())
    return manifest


V1_RENAMES = {"PETROTH50": "PETRO_TH50", "PETROTH90": "PETRO_TH90", "SERSIC_TH50": "ELPETRO_TH50_R",
              "NMGY": "ELPETRO_FLUX", "NMGY_IVAR": "ELPETRO_FLUX_IVAR", "ABSMAG": "ELPETRO_ABSMAG"}  # fmt: skip


def make_sky_v1(args: SkyArgs) -> Manifest:
    """The same galaxies in the NSA v1_0_1 layout (``nsa_v1_sky.fits``): v1 column names (PETRO_TH90,
    ELPETRO_*), no emission lines. Such a catalog can be scored, not labelled. Written in one piece
    (about 120 bytes a row in memory); the hidden ``SIM_CLASS`` stays for the offline server."""
    manifest = Manifest(stage="sky", parameters={"n": args.n, "seed": args.seed, "layout": "v1"})
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    rows = generate_rows(args.seed, 0, args.n)
    columns = []
    for c in COLUMNS:
        if c.name.startswith(LINES) and "FLUX" in c.name:
            continue
        name = V1_RENAMES.get(c.name, c.name)
        columns.append(fits.Column(name=name, format=c.tform, unit=c.unit, array=rows[c.name]))
    hdu = fits.BinTableHDU.from_columns(columns, name="NSA")
    with atomic_file(out / SKY_V1_FITS) as tmp:
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp)
    manifest.rows_out = args.n
    manifest.outputs = {"fits": {"path": str(out / SKY_V1_FITS), "checksum": file_checksum(out / SKY_V1_FITS)}}
    manifest.extra = {"class_counts": {name: int((rows["SIM_CLASS"] == k).sum()) for k, name in enumerate(CLASS_NAMES)}}
    manifest.finish()
    return manifest


def _check_fits(path: Path, n: int) -> None:
    """Cheap end-to-end check: astropy opens the file and sees n rows and the first/last NSAID."""
    with fits.open(path, memmap=True) as hdul:
        data = hdul["NSA"].data
        if len(data) != n or int(data["NSAID"][0]) != 0 or int(data["NSAID"][-1]) != n - 1:
            raise RuntimeError(f"{path}: written table does not read back as {n} rows; the file is corrupt")


def _make_for_run(args: SkyArgs, run: RunContext, before: dict, fingerprint: str, tokens: list) -> Manifest:
    manifest = make_sky(args, client=run.client)
    run.workspace.write_manifest("sky", manifest.to_dict())
    return manifest


STEP = Step(
    "sky",
    settings=lambda args, run: ({"n": args.n, "seed": args.seed}, []),
    complete=lambda args, run, made: (args.out / SKY_FITS).exists(),
    execute=_make_for_run,
    title="sky make",
)
