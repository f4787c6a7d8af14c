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

The science (all pure functions of a ``numpy.random.Generator``):

- classes: star-forming 63 %, composite 15.5 %, Seyfert 5.5 %, LINER 16 % (:data:`CLASS_FRACTIONS`);
- BPT position first, x = log10([NII]/Hα), y = log10([OIII]/Hβ) (:func:`bpt_positions`), then true
  line fluxes, then noisy observed fluxes with 10-20 % non-positive per line (:func:`line_fluxes`);
- redshift p(z) ∝ z² on [0.005, 0.055]; radii shrinking with distance, AGN hosts more concentrated
  (:func:`radii`); FNugriz photometry with redder AGN hosts (:func:`photometry`);
- positions uniform on the sphere inside :func:`pipeline.synthetic.footprint.in_footprint`.
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
from pipeline.synthetic.footprint import footprint_area_deg2, in_footprint
from storage.manifest import Manifest, atomic_file, file_checksum, write_json_atomic

SKY_FITS = "nsa_sky.fits"
SKY_V1_FITS = "nsa_v1_sky.fits"
SKY_PARQUET = "nsa_sky.parquet"
SKY_MANIFEST = "sky_manifest.json"

BLOCK_ROWS = 10_000
"""Rows per random-number block; part of the output's definition (changing it changes the data)."""

CLASS_NAMES: tuple[str, ...] = ("star-forming", "composite", "seyfert", "liner")
CLASS_FRACTIONS: tuple[float, ...] = (0.63, 0.155, 0.055, 0.16)
SF, COMPOSITE, SEYFERT, LINER = 0, 1, 2, 3

BANDS = "FNugriz"  # NSA order of the 7-element photometry arrays: GALEX FUV, NUV, SDSS ugriz
Z_MIN, Z_MAX = 0.005, 0.055
C_KM_S, H0 = 299_792.458, 70.0  # speed of light (km/s), Hubble constant (km/s/Mpc)
FLUX_UNIT = "10**-17 erg s-1 cm-2"
SENTINEL = -9999.0
LINES = ("HA", "N2", "HB", "O3")


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


# --------------------------------------------------------------------------------------------------
# Pure kernels: numpy in, numpy out.


def kauffmann03(x: np.ndarray) -> np.ndarray:
    """Kauffmann et al. (2003) empirical star-forming limit y = 0.61/(x - 0.05) + 1.3 (dex)."""
    return 0.61 / (x - 0.05) + 1.3


def kewley01(x: np.ndarray) -> np.ndarray:
    """Kewley et al. (2001) maximum-starburst line y = 0.61/(x - 0.47) + 1.19 (dex)."""
    return 0.61 / (x - 0.47) + 1.19


def draw_classes(rng: np.random.Generator, n: int) -> np.ndarray:
    """True classes (int16: 0 SF, 1 composite, 2 Seyfert, 3 LINER) drawn with CLASS_FRACTIONS."""
    return rng.choice(len(CLASS_FRACTIONS), size=n, p=CLASS_FRACTIONS).astype(np.int16)


_SF_OFFSET, _SF_SCATTER = 0.40, 0.07  # dex below the Kauffmann line; perpendicular scatter


def bpt_positions(rng: np.random.Generator, cls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True BPT coordinates x = log10([NII]/Hα), y = log10([OIII]/Hβ) (dex) for each class code.

    Star-forming: along a ridge 0.40 dex (vertically) below the Kauffmann line, x in [-1.3, -0.2]
    peaking near -0.45, with 0.07 dex scatter perpendicular to the line (~5 % cross it).
    Composite: between the Kauffmann and Kewley lines around x ~ -0.15 ± 0.09, plus 0.05 dex
    scatter in y. Seyfert: x ~ 0.08 ± 0.14, y ~ 0.72 ± 0.17. LINER: x ~ 0.15 ± 0.11,
    y ~ -0.02 ± 0.14. The clouds overlap a little across the dividing lines, as real ones do.
    """
    n = cls.size
    x = np.empty(n)
    y = np.empty(n)

    sf = cls == SF
    k = int(sf.sum())
    x0 = -1.3 + 1.1 * rng.beta(6.0, 2.5, k)
    y0 = kauffmann03(x0) - _SF_OFFSET
    slope = -0.61 / (x0 - 0.05) ** 2  # dy/dx of the Kauffmann line
    d = rng.normal(0.0, _SF_SCATTER, k) / np.sqrt(1.0 + slope**2)
    x[sf] = x0 - slope * d
    y[sf] = y0 + d

    comp = cls == COMPOSITE
    k = int(comp.sum())
    xc = np.clip(rng.normal(-0.15, 0.09, k), -0.4, 0.12)
    lower = np.where(xc < 0.05, np.maximum(kauffmann03(np.minimum(xc, 0.0)), -1.0), -1.0)
    upper = kewley01(xc)
    x[comp] = xc
    y[comp] = lower + (upper - lower) * rng.beta(2.5, 2.5, k) + rng.normal(0.0, 0.05, k)

    sey = cls == SEYFERT
    k = int(sey.sum())
    x[sey] = rng.normal(0.08, 0.14, k)
    y[sey] = rng.normal(0.72, 0.17, k)

    lin = cls == LINER
    k = int(lin.sum())
    x[lin] = rng.normal(0.15, 0.11, k)
    y[lin] = rng.normal(-0.02, 0.14, k)
    return x, y


def redshifts(rng: np.random.Generator, n: int) -> np.ndarray:
    """Redshifts with p(z) ∝ z² (uniform in volume) on [Z_MIN, Z_MAX]."""
    u = rng.random(n)
    return np.cbrt(Z_MIN**3 + u * (Z_MAX**3 - Z_MIN**3))


# Per class (SF, composite, Seyfert, LINER): median log10 Hα flux at z = 0.035 (1e-17 erg/s/cm²)
# and the probability of a "weak-line" galaxy (retired / passive hosts: all lines 10^2-10^4 times
# fainter, i.e. pure noise).
_LOG_HA = np.array([1.95, 1.75, 1.85, 1.35])
_P_WEAK = np.array([0.19, 0.21, 0.16, 0.45])
# Typical 1-sigma noise of each line (1e-17 erg/s/cm²): Hα, [NII], Hβ, [OIII].
_WEAK_DEX = (-4.0, -2.0)  # log10 of the weak-line dimming factor, uniform
_NOISE = {"HA": 5.0, "N2": 4.0, "HB": 2.4, "O3": 2.2}


def line_fluxes(
    rng: np.random.Generator, cls: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray
) -> dict[str, np.ndarray]:
    """Observed fluxes and 1-sigma errors (float32, 1e-17 erg/s/cm²) of Hα, [NII], Hβ, [OIII].

    True Hα is lognormal (0.45 dex) around a class median that falls as 1/z; a class-dependent
    fraction of galaxies (16-21 %, LINERs 45 %) has all lines 10^2..10^4 times fainter, i.e.
    below the noise. The Balmer decrement Hα/Hβ is
    2.86 + lognormal (median ~4). [NII] = Hα·10^x, [OIII] = Hβ·10^y. Each error is a lognormal
    around the line's noise level plus 3 % of the flux; observed = true + N(0, error), so weak
    lines come out zero or negative (10-20 % of each line). 0.5 % of rows have all four fluxes
    exactly 0 (no fit), 0.3 % more per line; ~0.02 % of HAFLUX and of N2FLUX (flux and error) hold
    the sentinel -9999. Keys: HAFLUX, HAFLUXERR, N2FLUX, ..., O3FLUXERR.
    """
    n = cls.size
    log_ha = _LOG_HA[cls] - np.log10(z / 0.035) + rng.normal(0.0, 0.45, n)
    weak = rng.random(n) < _P_WEAK[cls]
    log_ha = np.where(weak, log_ha + rng.uniform(*_WEAK_DEX, n), log_ha)
    ha = 10.0**log_ha
    hb = ha / (2.86 + rng.lognormal(np.log(1.1), 0.5, n))
    true = {"HA": ha, "N2": ha * 10.0**x, "HB": hb, "O3": hb * 10.0**y}

    no_fit = rng.random(n) < 0.005
    out: dict[str, np.ndarray] = {}
    for line in LINES:
        flux = true[line]
        err = np.hypot(_NOISE[line] * rng.lognormal(0.0, 0.3, n), 0.03 * flux)
        obs = flux + err * rng.standard_normal(n)
        obs[no_fit | (rng.random(n) < 0.003)] = 0.0
        if line in ("HA", "N2"):
            bad = rng.random(n) < 0.0002
            obs[bad] = SENTINEL
            err[bad] = SENTINEL
        out[f"{line}FLUX"] = obs.astype(np.float32)
        out[f"{line}FLUXERR"] = err.astype(np.float32)
    return out


def radii(rng: np.random.Generator, cls: np.ndarray, z: np.ndarray) -> dict[str, np.ndarray]:
    """PETROTH50, PETROTH90 and SERSIC_TH50 in arcsec (float32).

    Physical half-light radius lognormal (0.2 dex) around 3.2 kpc (SF), 2.8 (composite),
    2.5 (Seyfert, LINER), seen at distance cz/H0: typically 2-8" (bigger when nearer), at least
    0.8". PETROTH90 = PETROTH50 × concentration (SF 2.35 ± 0.15, composite 2.6 ± 0.2, AGN
    2.95 ± 0.18, at least 1.8); SERSIC_TH50 = PETROTH50 × (1.05 ± 0.08).
    """
    n = cls.size
    r50_kpc = np.array([3.2, 2.8, 2.5, 2.5])[cls] * 10.0 ** rng.normal(0.0, 0.2, n)
    kpc_per_arcsec = (C_KM_S * z / H0) * 1000.0 / 206_264.806
    th50 = np.maximum(r50_kpc / kpc_per_arcsec, 0.8)
    conc = rng.normal(np.array([2.35, 2.6, 2.95, 2.95])[cls], np.array([0.15, 0.2, 0.18, 0.18])[cls])
    th90 = th50 * np.maximum(conc, 1.8)
    sersic = th50 * np.maximum(rng.normal(1.05, 0.08, n), 0.5)
    return {
        "PETROTH50": th50.astype(np.float32),
        "PETROTH90": th90.astype(np.float32),
        "SERSIC_TH50": sersic.astype(np.float32),
    }


# Per class (SF, composite, Seyfert, LINER): mean and scatter of M_r and of the colours.
_MR = (np.array([-20.2, -20.8, -21.0, -21.2]), np.array([0.9, 0.8, 0.8, 0.8]))
_COLOURS = {  # name: (means per class, sigmas per class), magnitudes
    "FUV-NUV": (np.array([0.35, 0.6, 0.8, 1.2]), np.array([0.2, 0.3, 0.3, 0.4])),
    "NUV-r": (np.array([2.6, 3.6, 4.0, 5.0]), np.array([0.6, 0.6, 0.7, 0.5])),
    "u-g": (np.array([1.15, 1.45, 1.5, 1.7]), np.array([0.2, 0.2, 0.2, 0.15])),
    "g-r": (np.array([0.45, 0.62, 0.68, 0.75]), np.array([0.12, 0.1, 0.1, 0.07])),
    "r-i": (np.array([0.22, 0.3, 0.33, 0.36]), np.array([0.06, 0.05, 0.05, 0.05])),
    "i-z": (np.array([0.12, 0.2, 0.22, 0.25]), np.array([0.06, 0.05, 0.05, 0.05])),
}
_SKY_NMGY = np.array([0.4, 0.3, 0.8, 0.15, 0.15, 0.25, 0.8])  # per-band noise floor, FNugriz


def photometry(rng: np.random.Generator, cls: np.ndarray, z: np.ndarray) -> dict[str, np.ndarray]:
    """ABSMAG (mag), NMGY (nanomaggies) and NMGY_IVAR (nanomaggies⁻²), shape (n, 7), bands FNugriz.

    M_r is normal per class (AGN hosts brighter); colours are normal per class (AGN hosts redder:
    larger NUV-r, g-r, u-g). Apparent flux at luminosity distance (1+z)cz/H0; noise per band is a
    floor plus 2 % of the flux; NMGY is the true flux plus that noise.
    """
    n = cls.size

    def draw(mean_sigma: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        return mean_sigma[0][cls] + mean_sigma[1][cls] * rng.standard_normal(n)

    m_r = draw(_MR)
    c = {name: draw(ms) for name, ms in _COLOURS.items()}
    m_g = m_r + c["g-r"]
    m_i = m_r - c["r-i"]
    m_nuv = m_r + c["NUV-r"]
    absmag = np.stack([m_nuv + c["FUV-NUV"], m_nuv, m_g + c["u-g"], m_g, m_r, m_i, m_i - c["i-z"]], axis=1)
    d_l = (1.0 + z) * C_KM_S * z / H0
    dist_mod = 5.0 * np.log10(d_l) + 25.0
    true = 10.0 ** (-0.4 * (absmag + dist_mod[:, None] - 22.5))
    sigma = _SKY_NMGY + 0.02 * true
    nmgy = true + sigma * rng.standard_normal((n, 7))
    return {
        "NMGY": nmgy.astype(np.float32),
        "NMGY_IVAR": (1.0 / sigma**2).astype(np.float32),
        "ABSMAG": absmag.astype(np.float32),
    }


def sky_positions(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(RA, Dec) in degrees, uniform on the sphere and inside the footprint (rejection sampling)."""
    accept = footprint_area_deg2() / 41_252.96
    ra_parts: list[np.ndarray] = []
    dec_parts: list[np.ndarray] = []
    have = 0
    while have < n:
        m = int((n - have) / accept * 1.1) + 64
        ra = rng.random(m) * 360.0
        dec = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, m)))
        keep = in_footprint(ra, dec)
        ra_parts.append(ra[keep])
        dec_parts.append(dec[keep])
        have += int(keep.sum())
    return np.concatenate(ra_parts)[:n], np.concatenate(dec_parts)[:n]


def iau_names(ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IAUNAME 'JHHMMSS.ss+DDMMSS.s' (S19, truncated, not rounded) and SUBDIR 'HHh/pDD/IAUNAME'.

    SUBDIR's middle part is the Dec rounded down in |Dec| to an even degree, 'p' or 'm' for its
    sign, as in the NSA atlas directory tree. Vectorised: digits are written into a byte matrix.
    """
    n = ra.size
    buf = np.empty((n, 27), dtype=np.uint8)
    cs = np.clip(np.floor(np.mod(ra, 360.0) * 24_000.0).astype(np.int64), 0, 24 * 360_000 - 1)  # 0.01 s
    tenth = np.clip(np.floor(np.abs(dec) * 36_000.0).astype(np.int64), 0, 90 * 36_000)  # 0.1 arcsec
    negative = dec < 0
    hours = cs // 360_000
    dec_deg = tenth // 36_000

    def put(col: int, value: np.ndarray, width: int) -> None:
        for k in range(width):
            buf[:, col + width - 1 - k] = 48 + (value // 10**k) % 10

    put(0, hours, 2)
    buf[:, 2] = ord("h")
    buf[:, 3] = ord("/")
    buf[:, 4] = np.where(negative, ord("m"), ord("p"))
    put(5, dec_deg - dec_deg % 2, 2)
    buf[:, 7] = ord("/")
    buf[:, 8] = ord("J")
    put(9, hours, 2)
    put(11, (cs // 6000) % 60, 2)
    put(13, (cs // 100) % 60, 2)
    buf[:, 15] = ord(".")
    put(16, cs % 100, 2)
    buf[:, 18] = np.where(negative, ord("-"), ord("+"))
    put(19, dec_deg, 2)
    put(21, (tenth // 600) % 60, 2)
    put(23, (tenth // 10) % 60, 2)
    buf[:, 25] = ord(".")
    put(26, tenth % 10, 1)
    subdir = buf.view("S27").ravel()
    iauname = np.ascontiguousarray(buf[:, 8:]).view("S19").ravel()
    return iauname, subdir


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


# --------------------------------------------------------------------------------------------------
# I/O


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


# --- as a stage of `agnsurvey run` ------------------------------------------------------------------


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
