"""The offline sky as a Legacy Surveys brick mirror (``agnsurvey sky bricks``): survey-bricks + coadds.

Geometry (DR9/DR10, as legacypipe / desiutil ``Bricks(0.25)``): rows of 0.25° in Dec, centres at
-90, -89.75, ..., 90 (DEC1/DEC2 = centre ∓ 0.125, clipped to ±90); a row has ncol bricks, the even
number ``ceil(1440 cos(|dec| - 0.125°) / 2) * 2`` (the row's edge nearest the equator), 1 at each
pole; RA edges ``linspace(0, 360, ncol + 1)``, RA the middle (180 at the poles). BRICKNAME is
``f"{ra*1e4:07.0f}"[:4] + ("p" if dec >= 0 else "m") + f"{abs(dec)*1e4:06.0f}"[:3]`` (e.g. 1126p222),
BRICKID counts from 1 row by row from the south pole.

Files under ``ROOT``:

- ``survey-bricks.fits.gz``: every brick of the sky (a gzipped FITS binary table);
- ``coadd/<AAA>/<brick>/legacysurvey-<brick>-{image,invvar}-<band>.fits.fz`` for each brick that overlaps
  the region and the synthetic footprint: RICE_1 tile-compressed (tiles of :data:`TILE` pixels, as
  fpack'ed coadds), 3600 × 3600 float32, nanomaggies per 0.262" pixel; TAN WCS centred on the brick
  (CRPIX 1800.5, CD1_1 = -0.262/3600, CD2_2 = +0.262/3600); as FITS stores images: row 0 south,
  column 0 east. The image holds the catalog galaxies that reach the brick, drawn exactly as the
  server's cutouts draw them (:func:`pipeline.synthetic.render.draw_galaxy`), on white noise of
  :data:`~pipeline.synthetic.bands.SIGMA_NMGY` per pixel; invvar = 1 / sigma².

Every file is written to a temporary name then renamed; a brick whose files all exist is skipped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import dask
import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.table import Table
from distributed import Client

from cluster.client import compute
from pipeline.synthetic.args import BrickArgs
from pipeline.synthetic.bands import SIGMA_NMGY, sigma_to_flux
from pipeline.synthetic.footprint import FOOTPRINT_BOXES
from pipeline.synthetic.render import Galaxy, draw_galaxy
from pipeline.synthetic.sky_noise import NATIVE_PIXSCALE, white_noise
from pipeline.synthetic.skyindex import SkyIndex
from storage.manifest import Manifest, atomic_file, write_json_atomic

BRICK_SIZE = 0.25  # degrees
BRICK_PIXELS = 3600  # pixels on a side, at NATIVE_PIXSCALE
TILE = (100, 100)
"""Compression tile (rows, columns), pixels: a cutout decompresses only the 100 × 100 tiles it touches."""
QUANTIZE_LEVEL = 16.0  # RICE_1 float quantisation: steps of sigma / 16 (fpack's default)
SURVEY_BRICKS = "survey-bricks.fits.gz"
MANIFEST = "bricks-manifest.json"
_SALT_NOISE = 0xB51C


@lru_cache(maxsize=1)
def _brick_table() -> pd.DataFrame:
    centre = np.arange(-90.0, 90.0 + BRICK_SIZE / 2, BRICK_SIZE)
    ncol = np.ceil(360.0 / BRICK_SIZE * np.cos(np.radians(np.abs(centre) - BRICK_SIZE / 2)) / 2).astype(int) * 2
    ncol[0] = ncol[-1] = 1
    row = np.repeat(np.arange(len(centre)), ncol)
    col = np.concatenate([np.arange(n) for n in ncol])
    n_row = ncol[row]
    ra1, ra2 = 360.0 * col / n_row, 360.0 * (col + 1) / n_row
    ra = np.where(n_row == 1, 180.0, (ra1 + ra2) / 2)
    dec = centre[row]
    ra_txt = np.char.mod("%07.0f", ra * 1e4)
    dec_txt = np.char.mod("%06.0f", np.abs(dec) * 1e4)
    names = [f"{r[:4]}{'p' if d >= 0 else 'm'}{t[:3]}" for r, d, t in zip(ra_txt, dec, dec_txt, strict=True)]
    return pd.DataFrame(
        {
            "BRICKNAME": names,
            "BRICKID": np.arange(1, len(row) + 1, dtype=np.int32),
            "BRICKQ": np.where(row == 0, 1, col % 2 + (row % 2) * 2).astype(np.int16),
            "BRICKROW": row.astype(np.int32),
            "BRICKCOL": col.astype(np.int32),
            "RA": ra,
            "DEC": dec,
            "RA1": ra1,
            "RA2": ra2,
            "DEC1": np.maximum(dec - BRICK_SIZE / 2, -90.0),
            "DEC2": np.minimum(dec + BRICK_SIZE / 2, 90.0),
        }
    )


def brick_table() -> pd.DataFrame:
    """Every brick of the sky (662,174 rows): BRICKNAME, BRICKID, BRICKQ, BRICKROW, BRICKCOL, and RA, DEC
    (centre), RA1, RA2, DEC1, DEC2 (edges), degrees float64. A fresh copy."""
    return _brick_table().copy()


def _overlap(lo1: np.ndarray, hi1: np.ndarray, lo2: float, hi2: float) -> np.ndarray:
    return (np.minimum(hi1, hi2) - np.maximum(lo1, lo2)) > 0


def _ra_spans(ra_min: float, ra_max: float) -> list[tuple[float, float]]:
    """The region's RA intervals: one, or two when it wraps through RA 0 (ra_min > ra_max)."""
    return [(ra_min, ra_max)] if ra_min <= ra_max else [(ra_min, 360.0), (0.0, ra_max)]


def bricks_to_write(table: pd.DataFrame, ra_min: float, ra_max: float, dec_min: float, dec_max: float) -> pd.DataFrame:
    """Rows of ``table`` whose area overlaps the region (degrees; ra_min > ra_max wraps through 0) and the
    synthetic footprint (a shared area > 0, not an edge)."""
    ra1, ra2, dec1, dec2 = (table[c].to_numpy() for c in ("RA1", "RA2", "DEC1", "DEC2"))
    region = np.zeros(len(table), bool)
    for lo, hi in _ra_spans(ra_min, ra_max):
        region |= _overlap(ra1, ra2, lo, hi)
    region &= _overlap(dec1, dec2, dec_min, dec_max)
    foot = np.zeros(len(table), bool)
    for b_ra0, b_ra1, b_dec0, b_dec1 in FOOTPRINT_BOXES:
        foot |= _overlap(ra1, ra2, b_ra0, b_ra1) & _overlap(dec1, dec2, b_dec0, b_dec1)
    return table[region & foot].reset_index(drop=True)


def brick_dir(root: Path | str, name: str) -> Path:
    """``ROOT/coadd/<first 3 characters>/<name>``."""
    return Path(root) / "coadd" / name[:3] / name


def brick_path(root: Path | str, name: str, kind: str, band: str) -> Path:
    """The coadd file of ``kind`` ("image" or "invvar") and ``band``: ``legacysurvey-<name>-<kind>-<band>.fits.fz``."""
    return brick_dir(root, name) / f"legacysurvey-{name}-{kind}-{band}.fits.fz"


def brick_header(name: str, ra: float, dec: float, band: str) -> fits.Header:
    """The TAN WCS, BRICKNAM (legacypipe's 8-character key) and BAND of a brick's coadd centred on (ra, dec) degrees."""
    h = fits.Header()
    crpix = (BRICK_PIXELS + 1) / 2.0
    for key, value in (("CTYPE1", "RA---TAN"), ("CTYPE2", "DEC--TAN"), ("CRVAL1", float(ra)), ("CRVAL2", float(dec)),
                       ("CRPIX1", crpix), ("CRPIX2", crpix), ("CD1_1", -NATIVE_PIXSCALE / 3600.0), ("CD1_2", 0.0),
                       ("CD2_1", 0.0), ("CD2_2", NATIVE_PIXSCALE / 3600.0), ("CUNIT1", "deg"), ("CUNIT2", "deg"),
                       ("RADESYS", "ICRS"), ("BRICKNAM", name), ("BAND", band), ("BUNIT", "nanomaggy")):  # fmt: skip
        h[key] = value
    return h


def tan_pixel(ra: np.ndarray, dec: np.ndarray, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """0-based FITS pixel (x, y) of (ra, dec) in a brick centred on (ra0, dec0): gnomonic projection, degrees in."""
    a, d = np.radians(np.asarray(ra, float) - ra0), np.radians(np.asarray(dec, float))
    d0 = math.radians(dec0)
    cos_c = math.sin(d0) * np.sin(d) + math.cos(d0) * np.cos(d) * np.cos(a)
    xi = np.cos(d) * np.sin(a) / cos_c
    eta = (math.cos(d0) * np.sin(d) - math.sin(d0) * np.cos(d) * np.cos(a)) / cos_c
    scale = math.radians(NATIVE_PIXSCALE / 3600.0)
    centre = (BRICK_PIXELS - 1) / 2.0
    return centre - xi / scale, centre + eta / scale


@dataclass(frozen=True)
class BrickSpec:
    """What a brick task needs: where, which brick, its galaxies, which bands and files."""

    root: str
    name: str
    brickid: int
    ra: float
    dec: float
    galaxies: tuple[Galaxy, ...]
    bands: str
    invvar: bool


def render_brick(spec: BrickSpec) -> np.ndarray:
    """(len(bands), 3600, 3600) float32 nanomaggies per pixel, FITS orientation (row 0 south, column 0 east)."""
    img = white_noise([spec.brickid, _SALT_NOISE], (BRICK_PIXELS, BRICK_PIXELS, 3))  # sigmas, row 0 north
    if spec.galaxies:
        x, y = tan_pixel([g.ra for g in spec.galaxies], [g.dec for g in spec.galaxies], spec.ra, spec.dec)
        for g, gx, gy in zip(spec.galaxies, x, y, strict=True):
            if math.isfinite(gx) and math.isfinite(gy):
                draw_galaxy(img, g, float(gx), float(BRICK_PIXELS - 1 - gy), NATIVE_PIXSCALE)
    flux = sigma_to_flux(img, spec.bands, NATIVE_PIXSCALE)
    del img
    return np.ascontiguousarray(np.flip(flux, axis=0).transpose(2, 0, 1))


def _write_image(path: Path, data: np.ndarray, header: fits.Header, seed: int) -> None:
    hdu = fits.CompImageHDU(data, header=header, compression_type="RICE_1", tile_shape=TILE,
                            quantize_level=QUANTIZE_LEVEL, dither_seed=seed)  # fmt: skip
    with atomic_file(path) as tmp:
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp, overwrite=True)


def _files(spec: BrickSpec) -> list[Path]:
    kinds = ("image", "invvar") if spec.invvar else ("image",)
    return [brick_path(spec.root, spec.name, kind, band) for band in spec.bands for kind in kinds]


def write_brick(spec: BrickSpec) -> dict:
    """Render and write one brick's files (skipped when they all exist): {name, galaxies, files, seconds, skipped}."""
    t0 = time.perf_counter()
    files = _files(spec)
    if all(p.exists() for p in files):
        return {"name": spec.name, "galaxies": len(spec.galaxies), "files": 0, "seconds": 0.0, "skipped": True}
    flux = render_brick(spec)
    seed = 1 + spec.brickid % 10000  # fixed dither: the same brick compresses to the same bytes
    for i, band in enumerate(spec.bands):
        header = brick_header(spec.name, spec.ra, spec.dec, band)
        _write_image(brick_path(spec.root, spec.name, "image", band), flux[i], header, seed)
        if spec.invvar:
            ivar = np.full((BRICK_PIXELS, BRICK_PIXELS), 1.0 / SIGMA_NMGY[band] ** 2, np.float32)
            _write_image(brick_path(spec.root, spec.name, "invvar", band), ivar, header, seed)
    return {"name": spec.name, "galaxies": len(spec.galaxies), "files": len(files),
            "seconds": round(time.perf_counter() - t0, 3), "skipped": False}  # fmt: skip


def write_survey_bricks(root: Path) -> Path:
    """``ROOT/survey-bricks.fits.gz``: every brick of the sky, a gzipped FITS binary table (atomic)."""
    path = Path(root) / SURVEY_BRICKS
    table = Table.from_pandas(_brick_table())
    table["BRICKNAME"] = table["BRICKNAME"].astype("S8")
    with atomic_file(path) as tmp:
        table.write(tmp, format="fits", overwrite=True)
    return path


def brick_specs(args: BrickArgs, index: SkyIndex, rows: pd.DataFrame) -> list[BrickSpec]:
    """One spec per brick row, with the catalog galaxies whose light can reach it."""
    half_width = BRICK_PIXELS * NATIVE_PIXSCALE / 2.0 / 3600.0
    specs = []
    for r in rows.itertuples(index=False):
        near = index.in_field(float(r.RA), float(r.DEC), half_width)
        specs.append(BrickSpec(str(args.out), str(r.BRICKNAME), int(r.BRICKID), float(r.RA), float(r.DEC),
                               tuple(index.galaxy(int(i)) for i in near), args.bands, args.invvar))  # fmt: skip
    return specs


def write_bricks(args: BrickArgs, client: Client | None = None) -> Manifest:
    """Write the brick mirror under ``args.out`` (see the module docstring); bricks run as Dask tasks on
    ``client`` when given, else one after the other. Returns (and writes to ``ROOT/bricks-manifest.json``)
    the manifest: bricks written and skipped, galaxies drawn, seconds per brick."""
    manifest = Manifest(stage="sky bricks", parameters={
        "catalog": list(args.catalog), "region": [args.ra_min, args.ra_max, args.dec_min, args.dec_max],
        "bands": args.bands, "invvar": args.invvar, "tile": list(TILE)})  # fmt: skip
    root = Path(args.out).absolute()
    root.mkdir(parents=True, exist_ok=True)
    index = SkyIndex.from_catalog(list(args.catalog))
    if not (root / SURVEY_BRICKS).exists():
        write_survey_bricks(root)
    rows = bricks_to_write(_brick_table(), args.ra_min, args.ra_max, args.dec_min, args.dec_max)
    specs = brick_specs(args, index, rows)
    if client is not None and specs:
        task = dask.delayed(write_brick, pure=False)
        done = list(compute(*[task(s, dask_key_name=f"brick-{s.name}") for s in specs], client=client))
    else:
        done = [write_brick(s) for s in specs]
    written = [d for d in done if not d["skipped"]]
    manifest.rows_in = len(index)
    manifest.rows_out = len(written)
    manifest.outputs = {"root": str(root), "survey_bricks": str(root / SURVEY_BRICKS),
                        "bricks": [d["name"] for d in done]}  # fmt: skip
    manifest.extra = {
        "bricks_written": len(written),
        "bricks_skipped": len(done) - len(written),
        "galaxies_drawn": sum(d["galaxies"] for d in done),
        "seconds_per_brick": round(float(np.mean([d["seconds"] for d in written])), 3) if written else None,
    }
    manifest.finish()
    write_json_atomic(root / MANIFEST, manifest.to_dict())
    return manifest


def read_brick(root: Path | str, name: str, band: str, kind: str = "image") -> tuple[np.ndarray, fits.Header]:
    """(data (3600, 3600) float32 as FITS stores it, header with the WCS) of one written coadd file."""
    with fits.open(brick_path(root, name, kind, band)) as hdul:
        hdu = hdul[1]
        return np.asarray(hdu.data, dtype=np.float32), hdu.header.copy()
