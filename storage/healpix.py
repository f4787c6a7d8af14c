"""HEALPix nested indices of sky positions (the HATS ``_healpix_29`` sort key) and adaptive HEALPix
partitions: the layout of every workspace table (storage), which the catalog phase sorts by."""

from __future__ import annotations

from collections.abc import Sequence

import astropy.units as u
import cdshealpix
import numpy as np
from astropy.coordinates import Latitude, Longitude

HEALPIX_ORDER = 29  # nside 2**29: pixels of ~0.4 milliarcsec, the HATS convention


def healpix29(ra_deg: np.ndarray, dec_deg: np.ndarray, threads: int = 1) -> np.ndarray:
    """int64 nested HEALPix index at order 29 of (RA, Dec) in degrees (valid coordinates only)."""
    ra = np.asarray(ra_deg, dtype=np.float64)
    if ra.size == 0:
        return np.empty(0, dtype=np.int64)
    ipix = cdshealpix.nested.lonlat_to_healpix(
        Longitude(ra, unit=u.deg),
        Latitude(np.asarray(dec_deg, dtype=np.float64), unit=u.deg),
        HEALPIX_ORDER,
        num_threads=threads,
    )
    return ipix.view(np.int64)  # indices < 2**62: the same bits, no copy


def pixel_bounds(order: int, pixel: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    """[first, end) order-29 indices inside pixel(s) ``pixel`` of ``order`` (nested scheme)."""
    shift = np.int64(2 * (HEALPIX_ORDER - order))
    pixel = np.asarray(pixel, dtype=np.int64)
    return pixel << shift, (pixel + 1) << shift


def rows_in_ranges(sorted_runs: Sequence[np.ndarray], low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Indices in each order-29 range [low, high), counted over several sorted arrays of indices
    together (binary searches in each: the runs need not be merged)."""
    rows = np.zeros(np.shape(low), dtype=np.int64)
    for run in sorted_runs:
        rows += np.searchsorted(run, high) - np.searchsorted(run, low)
    return rows


def adaptive_partitions(healpix_sorted: np.ndarray | Sequence[np.ndarray], max_rows: int) -> list[tuple[int, int, int]]:
    """HEALPix pixels, of mixed orders, that cover sorted order-29 indices with at most ``max_rows``
    indices each: ``(order, pixel, rows)`` in sky (nested index) order, empty pixels left out.
    ``healpix_sorted`` is one sorted array, or a list of them (sorted runs, counted together unmerged).

    Top-down, as HATS partitions a catalog: the 12 order-0 pixels, and any pixel over ``max_rows``
    replaced by its 4 children, down to order 29 (where one pixel, ~0.4 milliarcsec, may hold more:
    it cannot be split). The result does not depend on how the rows arrived.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, not {max_rows}")
    several = isinstance(healpix_sorted, list | tuple) and all(np.ndim(run) == 1 for run in healpix_sorted)
    runs = [np.asarray(run, dtype=np.int64) for run in (healpix_sorted if several else [healpix_sorted])]
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    pixels = np.arange(12, dtype=np.int64)  # order 0; the empty ones are dropped below
    for order in range(HEALPIX_ORDER + 1):
        if not pixels.size:
            break
        low, high = pixel_bounds(order, pixels)
        rows = rows_in_ranges(runs, low, high)
        pixels, rows = pixels[rows > 0], rows[rows > 0]
        final = (rows <= max_rows) | (order == HEALPIX_ORDER)
        found.append((np.full(int(final.sum()), order), pixels[final], rows[final]))
        pixels = (pixels[~final][:, None] * 4 + np.arange(4, dtype=np.int64)).ravel()
    orders, pix, rows = (np.concatenate(x) for x in zip(*found, strict=True))
    first = pix << (2 * (HEALPIX_ORDER - orders)).astype(np.int64)
    order_by_sky = np.argsort(first, kind="stable")
    return [(int(orders[i]), int(pix[i]), int(rows[i])) for i in order_by_sky]
