"""Cutouts cut from the Legacy Surveys' own coadd bricks (``agnsurvey fetch --bricks ROOT``), in flux.

In: ``ROOT`` (a local path or any fsspec URL) laid out as a Legacy Surveys release:
``survey-bricks.fits.gz`` (BRICKNAME, RA, DEC, RA1, RA2, DEC1, DEC2, degrees; every brick of the sky)
and ``coadd/<AAA>/<brick>/legacysurvey-<brick>-{image,invvar}-<band>.fits.fz``: tile-compressed
(HDU 1), TAN WCS, nanomaggies per 0.262" pixel (invvar: 1/nanomaggies²), row 0 south, column 0 east.
A brick without its coadd directory has no data.

Out: per galaxy an :class:`~pipeline.images.outcome.Outcome`: n_out × n_out pixels over a square field
of ``field_arcsec`` on a side centred on the galaxy in its own tangent plane, row 0 north, column 0
east, float32 nanomaggies per output pixel (n_out, n_out, B) (with ``with_invvar`` also 1/nanomaggies²),
or ``pixels="rgb"``: the viewer's g, r, z colour mapping, uint8 (n_out, n_out, 3).

Algorithm:

1. Bricks: the table is sorted by Dec row then RA1, so :meth:`BrickSet.locate` is one ``searchsorted``
   on the rows' DEC1 and one on (row, RA1). :meth:`BrickSet.touching` takes the cone around the
   field (its half-diagonal plus a brick pixel), the Dec rows it spans and, in each row, RA ± asin(sin
   r / cos Dec) modulo 360 (the whole row where the cone reaches a pole).
2. Geometry (:mod:`pipeline.images._tan`, unit vectors): output column edge j lies at ξ = (n/2 - j) s
   and row edge i at η = (n/2 - i) s in the galaxy's tangent plane (s = field / n; ξ east, η north),
   so output pixel (n-1)/2 is the galaxy for any n. TAN → sky → TAN keeps straight lines straight:
   the field is a quadrilateral in brick pixels, and the box around its corners is the part read.
3. Reading: per call, each brick's band files are opened once (``lazy_load_hdus``; remote roots via
   fsspec with 64 KiB blocks) and each galaxy reads ``hdu.section[y0:y1, x0:x1]``: astropy
   decompresses only the tiles that box touches (for a URL only their bytes are fetched). Where a
   brick holds so many of the call's galaxies that one read of the box around all their boxes
   decompresses less than a read each (counting each read's own cost, :data:`SECTION_CALL_TILES`),
   each file is read once over that box and sliced; it is let go with the brick.
4. Unique area: bricks overlap, so a brick gives only its pixels whose centres lie in its own
   RA1..RA2 × DEC1..DEC2 (half-open, as :meth:`BrickSet.locate`); nothing is counted twice. The test
   runs on unit vectors (two meridian planes, z against sin DEC) and is skipped for sections inside
   the brick's inner box, a pixel box known to lie inside the unique area.
5. Separable path, when mapping the column edges along the field's centre row (brick x) and the row
   edges along its centre column (brick y) puts all four corners within :data:`MAX_SKEW_PIXELS` of
   their true brick position: flux = Wy (mask · image) Wxᵀ with the exact overlap fractions of
   :func:`pipeline.images.resample.overlap_weights`, so flux is conserved for any scale factor;
   computed from running integrals (:func:`~pipeline.images.resample.integrate_axis`), the same sums
   without the dense matrices.
6. General path (a field turned against the brick's axes, near the poles): each brick pixel is split
   into k × k sub-pixels (k = clip(ceil(4 / step), 2, 8), step = output pixel in brick pixels) and
   each sub-pixel's flux goes to the output pixel holding its centre: flux exactly conserved,
   positions good to half a sub-pixel.
7. Inverse variance: var_out = Σ w² / invvar_in over the pixels giving weight w; invvar_out =
   1 / var_out, 0 where no brick pixel with data contributes or one with invvar 0 does.

Non-finite image pixels count as zero flux. A file that is missing, truncated or unreadable fails
only the galaxies of its brick, the reason naming it; a brick WCS that is not TAN is a
:class:`~pipeline.errors.FetchError` (the root is not a Legacy Surveys release).
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import fsspec
import numpy as np
from astropy.io import fits

from pipeline.errors import FetchError
from pipeline.images import _tan
from pipeline.images._brick_kernels import one_blas_thread, scatter, separable, small_arrays_on_the_heap
from pipeline.images.outcome import FAILED, NO_COVERAGE, OK, Outcome
from pipeline.images.survey_rgb import NATIVE_PIXSCALE, flux_to_rgb

TABLE = "survey-bricks.fits.gz"
COLUMNS = ("BRICKNAME", "RA", "DEC", "RA1", "RA2", "DEC1", "DEC2")
KINDS = ("image", "invvar")
MAX_SKEW_PIXELS = 0.1
"""Separable resampling when it puts every field corner within this many brick pixels of its true place."""
SECTION_CALL_TILES = 16
"""What one ``hdu.section`` call costs beyond its tiles, in tiles of 100² decompressed (measured with
astropy 8: about 1.5 ms a call against 0.1 ms a tile): :meth:`_Brick.prefetch` weighs one read of the
box around all of a brick's cutouts against one read per cutout with it."""
PROBE_BRICKS = 3
"""check_bands looks for each band's file in the first this many bricks with data."""
_FIX = "point --bricks at a Legacy Surveys release directory holding survey-bricks.fits.gz"
_REMOTE = {"block_size": 2**16}  # fsspec reads of 64 KiB: a cutout fetches its tiles' bytes, not the file
_SPAN = 1000.0  # key = Dec row * _SPAN + RA: one sorted key over (row, RA1)
_PIX_DEG = NATIVE_PIXSCALE / 3600.0


class _BadFile(Exception):
    """A brick file that cannot be read: ``path``, and why."""

    def __init__(self, path: str, why: BaseException | str):
        super().__init__(f"{path}: {why if isinstance(why, str) else f'{type(why).__name__}: {why}'}")
        self.path = path


class BrickSet:
    """The bricks table of a root (one row per brick) and a (Dec row, RA) index over it; degrees."""

    def __init__(self, root: str, table: dict[str, np.ndarray]):
        self.root = str(root).rstrip("/")
        self._fs, self._base = fsspec.core.url_to_fs(self.root)
        self.local = "file" in np.atleast_1d(self._fs.protocol)
        self.names = np.char.strip(np.asarray(table["BRICKNAME"]).astype(str))
        self.ra, self.dec, self.ra1, self.ra2, self.dec1, self.dec2 = (
            np.asarray(table[c], dtype=np.float64) for c in COLUMNS[1:])  # fmt: skip
        self._data: dict[int, bool] = {}
        self._inner: dict[int, tuple[float, float, float, float] | None] = {}
        self._row_dec1, row = np.unique(self.dec1, return_inverse=True)
        self._order = np.lexsort((self.ra1, row))
        self._keys = row[self._order] * _SPAN + self.ra1[self._order]
        self._row_n = np.bincount(row, minlength=len(self._row_dec1))
        self._row_start = np.cumsum(self._row_n) - self._row_n
        width = np.zeros(len(self._row_dec1))
        np.maximum.at(width, row, self.ra2 - self.ra1)
        self._row_width = width

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"BrickSet({len(self)} bricks under {self.root!r})"

    # ---------------------------------------------------------------------------------------------
    # Where

    def _row_of(self, dec: np.ndarray) -> np.ndarray:
        rows = np.searchsorted(self._row_dec1, dec, side="right") - 1
        return np.clip(rows, 0, len(self._row_dec1) - 1)

    def _local(self, row: np.ndarray, ra: np.ndarray) -> np.ndarray:
        """Index within its row of the brick of each row whose RA1..RA2 holds ``ra`` (any value: mod 360)."""
        ra = np.mod(ra, 360.0)
        k = np.searchsorted(self._keys, row * _SPAN + np.where(ra >= 360.0, 0.0, ra), side="right") - 1
        return np.clip(k - self._row_start[row], 0, self._row_n[row] - 1)

    def locate(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        """int64 table index of the brick whose unique area holds each (ra, dec) degrees; -1 if not finite."""
        ra, dec = np.broadcast_arrays(np.asarray(ra, np.float64), np.asarray(dec, np.float64))
        good = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90.0)
        row = self._row_of(np.where(good, dec, 0.0))
        out = self._order[self._row_start[row] + self._local(row, np.where(good, ra, 0.0))]
        return np.where(good, out, -1).astype(np.int64)

    def _pairs(self, ra: np.ndarray, dec: np.ndarray, half_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position, brick) index pairs: every brick whose unique area each square field may touch."""
        ra, dec, half = (np.atleast_1d(np.asarray(a, np.float64)) for a in np.broadcast_arrays(ra, dec, half_deg))
        r = np.degrees(np.arctan(math.sqrt(2.0) * np.tan(np.radians(half)))) + _PIX_DEG  # cone around the square
        lo, hi = self._row_of(dec - r), self._row_of(dec + r)
        g = np.repeat(np.arange(len(ra)), hi - lo + 1)
        row = lo[g] + _ranks(hi - lo + 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            dra = np.degrees(np.arcsin(np.clip(np.sin(np.radians(r[g])) / np.cos(np.radians(dec[g])), 0.0, 1.0)))
        dra += 1e-9
        full = (np.abs(dec[g]) + r[g] >= 90.0) | (2.0 * dra + self._row_width[row] >= 360.0)
        n_row = self._row_n[row]
        first, last = self._local(row, ra[g] - dra), self._local(row, ra[g] + dra)
        count = np.where(full, n_row, np.mod(last - first, n_row) + 1)
        first = np.where(full, 0, first)
        local = np.mod(np.repeat(first, count) + _ranks(count), np.repeat(n_row, count))
        return np.repeat(g, count), self._order[np.repeat(self._row_start[row], count) + local]

    def touching(self, ra: float, dec: float, half_width_deg: float) -> list[int]:
        """Table indices (sorted) of every brick whose unique area a square field of half-width
        ``half_width_deg`` centred on (ra, dec) may touch (degrees; RA wraps, a pole cap spans all RA)."""
        return sorted(int(b) for b in self._pairs(ra, dec, half_width_deg)[1])

    # ---------------------------------------------------------------------------------------------
    # Files

    def brick_dir(self, i: int) -> str:
        """``ROOT/coadd/<AAA>/<brick>`` of table row ``i``."""
        name = self.names[i]
        return f"{self.root}/coadd/{name[:3]}/{name}"

    def path(self, i: int, kind: str, band: str) -> str:
        """The coadd file of ``kind`` (image, invvar) and ``band`` of table row ``i`` (a path or URL)."""
        name = self.names[i]
        return f"{self.brick_dir(i)}/legacysurvey-{name}-{kind}-{band}.fits.fz"

    def has_data(self, i: int) -> bool:
        """Whether brick ``i`` has its coadd directory (asked once per brick, then remembered)."""
        i = int(i)
        if i not in self._data:
            d = self.brick_dir(i)
            self._data[i] = os.path.isdir(self._fs._strip_protocol(d)) if self.local else bool(self._fs.isdir(d))
        return self._data[i]

    def _open(self, path: str) -> fits.HDUList:
        if self.local:
            return fits.open(self._fs._strip_protocol(path), lazy_load_hdus=True)
        return fits.open(path, lazy_load_hdus=True, use_fsspec=True, fsspec_kwargs=dict(_REMOTE))

    def _exists(self, path: str) -> bool:
        return os.path.exists(self._fs._strip_protocol(path)) if self.local else bool(self._fs.exists(path))

    def _first_with_data(self, n: int) -> list[str]:
        """Names of up to ``n`` bricks with a coadd directory, from a listing of ROOT/coadd."""
        found: list[str] = []
        try:
            groups = sorted(self._fs.ls(f"{self.root}/coadd", detail=False))
            for group in groups:
                found += sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self._fs.ls(group, detail=False))
                if len(found) >= n:
                    break
        except (FileNotFoundError, NotADirectoryError):
            return []
        return found[:n]


def _ranks(counts: np.ndarray) -> np.ndarray:
    """0, 1, ..., c-1 for each c of ``counts``, concatenated."""
    counts = np.asarray(counts, dtype=np.int64)
    return np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)


def open_bricks(root: str) -> BrickSet:
    """The bricks table of ``root`` (a path or fsspec URL), read once; :class:`FetchError` if it cannot be used."""
    root = str(root).rstrip("/")
    url = f"{root}/{TABLE}"
    try:
        with fsspec.open(url, "rb", compression="gzip") as f:
            raw = f.read()
    except FileNotFoundError:
        raise FetchError(f"no bricks table at {url}; {_FIX}") from None
    except (OSError, EOFError, ValueError) as exc:
        raise FetchError(f"cannot read the bricks table {url} ({type(exc).__name__}: {exc}); {_FIX}") from None
    try:
        with fits.open(io.BytesIO(raw)) as hdul:
            hdu = next((h for h in hdul if isinstance(h, fits.BinTableHDU)), None)
            if hdu is None:
                raise FetchError(f"{url} holds no table; {_FIX}")
            have = {c.upper(): c for c in hdu.columns.names}
            missing = [c for c in COLUMNS if c not in have]
            if missing:
                raise FetchError(f"{url} lacks the column(s) {', '.join(missing)} of a Legacy Surveys bricks table "
                                 f"(needs {', '.join(COLUMNS)}); {_FIX}")  # fmt: skip
            table = {c: np.array(hdu.data[have[c]]) for c in COLUMNS}
    except OSError as exc:
        raise FetchError(f"cannot read the bricks table {url} ({exc}); {_FIX}") from None
    return BrickSet(root, table)


def check_bands(bricks: BrickSet, bands: str, kinds: Sequence[str] = ("image",)) -> None:
    """:class:`FetchError` unless each band's ``kinds`` files exist in one of the first bricks with data."""
    names = bricks._first_with_data(PROBE_BRICKS)
    if not names:
        raise FetchError(f"no brick under {bricks.root}/coadd has data (no coadd/<AAA>/<brick> directory); {_FIX}")
    index = {n: i for i, n in enumerate(bricks.names)}
    rows = [index[n] for n in names if n in index]
    if not rows:
        raise FetchError(f"the bricks under {bricks.root}/coadd ({', '.join(names)}) are not in {TABLE}; {_FIX}")
    for band in bands:
        for kind in kinds:
            if not any(bricks._exists(bricks.path(i, kind, band)) for i in rows):
                have = [b for b in "grizY" if bricks._exists(bricks.path(rows[0], "image", b))]
                raise FetchError(
                    f"band {band!r} ({kind}) is not in the bricks: looked for {bricks.path(rows[0], kind, band)} "
                    f"(and in {len(rows) - 1} more brick(s)); the bricks hold {''.join(have) or 'no g, r, i, z, Y'}: "
                    f"ask for those, e.g. --bands {''.join(have) or 'grz'}"
                    + ("" if kind == "image" else ", or drop --with-invvar")
                )


# -------------------------------------------------------------------------------------------------
# One brick's files, and what one galaxy takes from them


@dataclass(eq=False)
class _Brick:
    """A brick's open band files (image, invvar), its WCS and unique area, for one call."""

    bricks: BrickSet
    index: int
    bands: str
    with_invvar: bool
    files: dict[tuple[str, str], fits.hdu.base.ExtensionHDU] = field(default_factory=dict)
    lists: list[fits.HDUList] = field(default_factory=list)
    tan: _tan.Tan | None = None
    shape: tuple[int, int] = (0, 0)
    tile: tuple[int, int] | None = None  # compression tile (rows, columns); None: not tile-compressed
    union: tuple[int, int, int, int] | None = None  # read each file's box once, then slice (see prefetch)
    held: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    def open(self) -> None:
        for band in self.bands:
            for kind in KINDS[: 1 + self.with_invvar]:
                path = self.bricks.path(self.index, kind, band)
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        hdul = self.bricks._open(path)
                        self.lists.append(hdul)
                        hdu = hdul[1]
                        header = hdu.header
                        shape = tuple(int(s) for s in hdu.shape)
                    truncated = [w for w in caught if "truncated" in str(w.message)]
                    if truncated:
                        raise _BadFile(path, f"truncated ({truncated[0].message})")
                except (_BadFile, FetchError):
                    raise
                except Exception as exc:  # astropy, OS and network errors alike: this file is unusable
                    raise _BadFile(path, "missing" if isinstance(exc, FileNotFoundError) else exc) from None
                if len(shape) != 2:
                    raise _BadFile(path, f"HDU 1 is not a 2-D image (shape {shape})")
                tan = _tan.Tan.from_header(header, path)
                if self.tan is None:
                    self.tan, self.shape = tan, shape
                    tile = getattr(hdu, "tile_shape", None)
                    self.tile = (int(tile[0]), int(tile[1])) if tile is not None and len(tile) == 2 else None
                self.files[band, kind] = hdu

    def close(self) -> None:
        self.held.clear()
        for hdul in self.lists:
            hdul.close()

    def _tiles(self, box: tuple[int, int, int, int]) -> int:
        (th, tw), (y0, y1, x0, x1) = self.tile, box
        return ((y1 - 1) // th - y0 // th + 1) * ((x1 - 1) // tw - x0 // tw + 1)

    def prefetch(self, boxes: Sequence[tuple[int, int, int, int]]) -> None:
        """Read each file once over the box around all ``boxes`` (then slice it) when that decompresses
        fewer tiles, counting :data:`SECTION_CALL_TILES` per read, than one read per box; else every box
        reads only its own tiles. Many galaxies in one brick: one read; a few: a few tiles each."""
        if len(boxes) < 2 or self.tile is None:
            return
        union = (min(b[0] for b in boxes), max(b[1] for b in boxes), min(b[2] for b in boxes), max(b[3] for b in boxes))
        if sum(SECTION_CALL_TILES + self._tiles(b) for b in boxes) > SECTION_CALL_TILES + self._tiles(union):
            self.union = union

    def read(self, band: str, kind: str, box: tuple[int, int, int, int]) -> np.ndarray:
        """float64 pixels [y0:y1, x0:x1] of one file, only the tiles they touch decompressed (or, after
        :meth:`prefetch` chose it, sliced from the file's box read once)."""
        y0, y1, x0, x1 = box
        u = self.union
        try:
            if u is None or not (u[0] <= y0 and y1 <= u[1] and u[2] <= x0 and x1 <= u[3]):
                return np.asarray(self.files[band, kind].section[y0:y1, x0:x1], dtype=np.float64)
            if (band, kind) not in self.held:
                self.held[band, kind] = np.asarray(self.files[band, kind].section[u[0] : u[1], u[2] : u[3]])
            return self.held[band, kind][y0 - u[0] : y1 - u[0], x0 - u[2] : x1 - u[2]].astype(np.float64)
        except Exception as exc:  # a corrupt tile or a failed range request: this file is unusable
            raise _BadFile(self.bricks.path(self.index, kind, band), exc) from None

    def inner(self) -> tuple[float, float, float, float] | None:
        """(x0, x1, y0, y1) pixel box inside the unique area, or None (then every section is tested)."""
        b = self.bricks
        if self.index not in b._inner:
            b._inner[self.index] = _inner_box(self, *(float(v[self.index]) for v in (b.ra1, b.ra2, b.dec1, b.dec2)))
        return b._inner[self.index]

    def mask(self, box: tuple[int, int, int, int]) -> np.ndarray | None:
        """1.0 where a pixel centre of ``box`` lies in the brick's unique area, else 0; None: all inside."""
        y0, y1, x0, x1 = box
        inner = self.inner()
        if inner is not None and inner[0] <= x0 and x1 - 1 <= inner[1] and inner[2] <= y0 and y1 - 1 <= inner[3]:
            return None
        yy, xx = np.mgrid[y0:y1, x0:x1]
        b, i = self.bricks, self.index
        return _in_area(self.tan.pixel_to_vec(xx, yy), b.ra1[i], b.ra2[i], b.dec1[i], b.dec2[i]).astype(np.float64)


def _in_area(v: np.ndarray, ra1: float, ra2: float, dec1: float, dec2: float) -> np.ndarray:
    """Whether directions ``v`` (3, ...) lie in RA1 <= RA < RA2, DEC1 <= Dec < DEC2 (Dec <= 90 at the top)."""
    sin_dec = v[2] / np.sqrt(np.sum(v * v, axis=0))
    ok = sin_dec >= math.sin(math.radians(dec1)) if dec1 > -90.0 else np.ones(v.shape[1:], bool)
    if dec2 < 90.0:
        ok &= sin_dec < math.sin(math.radians(dec2))
    if ra2 - ra1 < 180.0:
        a1, a2 = math.radians(ra1), math.radians(ra2)
        ok &= (-math.sin(a1) * v[0] + math.cos(a1) * v[1] >= 0) & (-math.sin(a2) * v[0] + math.cos(a2) * v[1] < 0)
    elif ra2 - ra1 < 360.0:  # a row of two bricks: RA itself
        ra = np.mod(np.degrees(np.arctan2(v[1], v[0])), 360.0)
        ok &= (ra >= ra1) & (ra < ra2)
    return ok


def _inner_box(brick: _Brick, ra1: float, ra2: float, dec1: float, dec2: float):
    """A pixel box (x0, x1, y0, y1) whose pixel centres all lie in the unique area, from its sampled edges;
    None for bricks whose area is not a near-rectangle in pixels (pole caps, wide bricks)."""
    if ra2 - ra1 >= 90.0:
        return None
    t = np.linspace(0.0, 1.0, 401)
    sides = [
        (ra1 + (ra2 - ra1) * t, np.full_like(t, dec1)),
        (ra1 + (ra2 - ra1) * t, np.full_like(t, dec2)),
        (np.full_like(t, ra1), dec1 + (dec2 - dec1) * t),
        (np.full_like(t, ra2), dec1 + (dec2 - dec1) * t),
    ]
    xy = [brick.tan.world_to_pixel(ra, dec) for ra, dec in sides]
    if any(not np.all(np.isfinite(x) & np.isfinite(y)) for x, y in xy):
        return None
    (dlo, dhi), (rlo, rhi) = sorted(xy[:2], key=lambda p: p[1].mean()), sorted(xy[2:], key=lambda p: p[0].mean())
    box = (rlo[0].max() + 1.0, rhi[0].min() - 1.0, dlo[1].max() + 1.0, dhi[1].min() - 1.0)
    if box[0] >= box[1] or box[2] >= box[3]:
        return None
    x, y = np.concatenate([p[0] for p in xy]), np.concatenate([p[1] for p in xy])
    outside = (x <= box[0]) | (x >= box[1]) | (y <= box[2]) | (y >= box[3])
    centre = brick.tan.pixel_to_vec(np.array([(box[0] + box[1]) / 2]), np.array([(box[2] + box[3]) / 2]))
    return box if outside.all() and _in_area(centre, ra1, ra2, dec1, dec2).all() else None


@dataclass(eq=False)
class _Field:
    """One galaxy's output grid (tangent frame, n + 1 edge offsets in radians) and its sums so far."""

    frame: np.ndarray
    t: np.ndarray  # ξ of column edge j, η of row edge i: (n/2 - j) s, radians
    flux: np.ndarray  # (n, n, B) nanomaggies
    var: np.ndarray | None  # (n, n, B) nanomaggies²
    bad: np.ndarray | None  # (n, n, B): a pixel with invvar 0 contributed

    @property
    def n(self) -> int:
        return len(self.t) - 1


def _new_field(ra: float, dec: float, field_arcsec: float, n: int, n_bands: int, with_invvar: bool) -> _Field:
    step = math.radians(field_arcsec / n / 3600.0)
    shape = (n, n, n_bands)
    return _Field(_tan.frame(ra, dec), (n / 2.0 - np.arange(n + 1)) * step, np.zeros(shape),
                  np.zeros(shape) if with_invvar else None, np.zeros(shape, bool) if with_invvar else None)  # fmt: skip


def _plans(brick: _Brick, fields: Sequence[_Field]) -> list:
    """:func:`_plan` of each field, the brick-pixel positions of all fields' edges and corners computed
    in one go (fields of one call share n)."""
    if not fields:
        return []
    frames = np.stack([f.frame for f in fields])  # (G, 3, 3)
    t = np.stack([f.t for f in fields])  # (G, n + 1)
    corners_xi, corners_eta = t[:, [0, -1, 0, -1]], t[:, [0, 0, -1, -1]]
    zero = np.zeros_like(t)
    xi = np.concatenate([t, zero, corners_xi], axis=1)  # centre row, centre column, corners
    eta = np.concatenate([zero, t, corners_eta], axis=1)
    v = frames[:, 0, :, None] + frames[:, 1, :, None] * xi[:, None, :] + frames[:, 2, :, None] * eta[:, None, :]
    x, y = brick.tan.vec_to_pixel(np.moveaxis(v, 1, 0))  # (G, 2(n + 1) + 4) each
    m = t.shape[1]
    return [_plan(brick, x[g, :m], y[g, m : 2 * m], x[g, 2 * m :], y[g, 2 * m :]) for g in range(len(fields))]


def _plan(brick: _Brick, x_edges: np.ndarray, y_edges: np.ndarray, cx: np.ndarray, cy: np.ndarray):
    """(box (y0, y1, x0, x1), column edges in brick x, row edges in brick y, separable) of a field in
    ``brick`` from its column edges along its centre row (brick x), its row edges along its centre
    column (brick y) and its four corners, or None when the field misses the brick's pixels."""
    if not all(np.all(np.isfinite(a)) for a in (x_edges, y_edges, cx, cy)):
        return None
    skew = max(np.abs(cx - x_edges[[0, -1, 0, -1]]).max(), np.abs(cy - y_edges[[0, 0, -1, -1]]).max())
    h, w = brick.shape
    xs, ys = np.concatenate([cx, x_edges]), np.concatenate([cy, y_edges])
    x0, x1 = max(math.floor(xs.min() + 0.5), 0), min(math.ceil(xs.max() - 0.5), w - 1)
    y0, y1 = max(math.floor(ys.min() + 0.5), 0), min(math.ceil(ys.max() - 0.5), h - 1)
    if x0 > x1 or y0 > y1:
        return None
    return (y0, y1 + 1, x0, x1 + 1), x_edges, y_edges, skew <= MAX_SKEW_PIXELS


def _add(brick: _Brick, f: _Field, plan) -> None:
    """Add what ``brick`` holds of field ``f`` (its unique-area pixels only) to f's sums."""
    box, x_edges, y_edges, aligned = plan
    mask = brick.mask(box)
    if mask is not None and not mask.any():
        return
    if aligned:
        apply = separable(x_edges, y_edges, box)
    else:
        apply = scatter(brick, f, box, mask, abs(x_edges[-1] - x_edges[0]) / f.n)
    inside = 1.0 if mask is None else mask
    for i, band in enumerate(brick.bands):
        img = np.nan_to_num(brick.read(band, "image", box), copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        f.flux[..., i] += apply(img if mask is None else img * mask)
        if f.var is not None:
            iv = brick.read(band, "invvar", box)
            good = np.isfinite(iv) & (iv > 0)
            f.var[..., i] += apply(np.where(good, 1.0 / np.where(good, iv, 1.0), 0.0) * inside, square=True)
            f.bad[..., i] |= apply(~good * inside) > 0


def _finish(f: _Field, pixels: str, field_arcsec: float) -> Outcome:
    if pixels == "rgb":
        return Outcome(OK, image=flux_to_rgb(f.flux, "grz", field_arcsec / f.n), attempts=1)
    invvar = None
    if f.var is not None:
        good = (f.var > 0) & ~f.bad
        invvar = np.where(good, 1.0 / np.where(good, f.var, 1.0), 0.0).astype(np.float32)
    return Outcome(OK, image=f.flux.astype(np.float32), invvar=invvar, attempts=1)


def _check_request(n_out: int, bands: str, with_invvar: bool, pixels: str) -> str:
    """The bands to cut (g, r, z for rgb); FetchError / ValueError for a request that cannot be met."""
    if int(n_out) < 1:
        raise ValueError(f"n_out must be >= 1 pixel (got {n_out})")
    if pixels not in ("flux", "rgb"):
        raise ValueError(f"pixels must be 'flux' or 'rgb' (got {pixels!r})")
    if not bands or len(set(bands)) != len(bands):
        raise FetchError(f"bands must be distinct band letters, e.g. --bands grz (got {bands!r})")
    if pixels == "rgb":
        missing = [b for b in "grz" if b not in bands]
        if missing:
            raise FetchError(f"--pixels rgb is the survey's g,r,z colour mapping; bands {bands!r} lack "
                             f"{', '.join(missing)}: pass --bands grz")  # fmt: skip
        if with_invvar:
            raise FetchError("--with-invvar stores the inverse variance of flux pixels; add --pixels flux")
        return "grz"
    return bands


def cut_cutouts(bricks: BrickSet, ra: np.ndarray, dec: np.ndarray, field_arcsec: float | np.ndarray, n_out: int,
                bands: str, with_invvar: bool = False, pixels: str = "flux") -> list[Outcome]:  # fmt: skip
    """One :class:`Outcome` per galaxy (input order): n_out × n_out pixels over a square field of
    ``field_arcsec`` (arcsec, one or one per galaxy) centred on (ra, dec) degrees, row 0 north, column 0
    east. ``pixels="flux"``: float32 (n_out, n_out, len(bands)) nanomaggies per output pixel, bands in the
    order asked, with ``with_invvar`` the inverse variance (1/nanomaggies², 0 where no data);
    ``"rgb"``: the viewer's colour mapping of g, r, z, uint8 (n_out, n_out, 3). Status ``no_coverage``
    when the galaxy's own brick has no data; ``failed`` (the file named) when a brick file its field
    needs is missing or unreadable. See the module docstring for the algorithm."""
    ra, dec, fld = (np.atleast_1d(np.asarray(a, np.float64)).ravel()
                    for a in np.broadcast_arrays(ra, dec, field_arcsec))  # fmt: skip
    cut_bands, n_out = _check_request(n_out, bands, with_invvar, pixels), int(n_out)
    out: list[Outcome | None] = [None] * len(ra)
    home = bricks.locate(ra, dec)
    usable = (home >= 0) & np.isfinite(fld) & (fld > 0)
    for g in np.flatnonzero(~usable):
        out[g] = Outcome(FAILED, reason=f"unusable position ({ra[g]}, {dec[g]}) deg or field {fld[g]} arcsec",
                         kind="bad position")  # fmt: skip
    for g in np.flatnonzero(usable):
        if not bricks.has_data(home[g]):
            out[g] = Outcome(NO_COVERAGE, reason=f"brick {bricks.names[home[g]]} has no data "
                             f"({bricks.brick_dir(home[g])} does not exist)")  # fmt: skip
    todo = np.array([g for g in range(len(ra)) if out[g] is None], dtype=np.int64)
    if not len(todo):
        return out
    gal, brk = bricks._pairs(ra[todo], dec[todo], fld[todo] / 7200.0)
    gal = todo[gal]
    with_data = np.array([bricks.has_data(b) for b in brk], dtype=bool)
    gal, brk = gal[with_data], brk[with_data]
    order = np.lexsort((gal, brk))
    gal, brk = gal[order], brk[order]
    call = _Call(bricks, ra, dec, fld, n_out, cut_bands, with_invvar, pixels, out, np.bincount(gal, minlength=len(ra)))
    bounds = np.flatnonzero(np.diff(brk)) + 1
    small_arrays_on_the_heap()
    with one_blas_thread():  # products of a few hundred rows: threads would only wait on each other
        for members, b in zip(np.split(gal, bounds), brk[np.r_[0, bounds]], strict=True):
            call.cut_brick(int(b), members)
    return out


@dataclass(eq=False)
class _Call:
    """One cut_cutouts call: its request, the outcomes so far, the fields being summed."""

    bricks: BrickSet
    ra: np.ndarray
    dec: np.ndarray
    fld: np.ndarray
    n_out: int
    bands: str
    with_invvar: bool
    pixels: str
    out: list
    remaining: np.ndarray  # bricks still to add, per galaxy
    fields: dict[int, _Field] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)

    def cut_brick(self, b: int, members: np.ndarray) -> None:
        """Add brick ``b`` to the fields of its galaxies ``members``; finish those it was the last brick of."""
        brick = _Brick(self.bricks, b, self.bands, self.with_invvar)
        try:
            brick.open()
            todo = [int(g) for g in members if g not in self.failed]
            for g in todo:
                if g not in self.fields:
                    self.fields[g] = _new_field(self.ra[g], self.dec[g], self.fld[g], self.n_out, len(self.bands),
                                                self.with_invvar)  # fmt: skip
            found = _plans(brick, [self.fields[g] for g in todo])
            plans = {g: plan for g, plan in zip(todo, found, strict=True) if plan is not None}
            brick.prefetch([plan[0] for plan in plans.values()])
            for g, plan in plans.items():
                _add(brick, self.fields[g], plan)
        except _BadFile as exc:
            for g in members:
                self.failed.setdefault(int(g), str(exc))
        finally:
            brick.close()
        for g in members:
            self.remaining[g] -= 1
            if self.remaining[g] == 0:
                f = self.fields.pop(int(g), None)
                self.out[g] = (Outcome(FAILED, reason=self.failed[g], kind="unreadable brick file", attempts=1)
                               if g in self.failed else _finish(f, self.pixels, self.fld[g]))  # fmt: skip
