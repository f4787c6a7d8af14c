"""A simple, exact-by-definition approximation of the SDSS Legacy imaging footprint.

The footprint is the union of the boxes in :data:`FOOTPRINT_BOXES` (all in degrees, J2000,
boundaries included):

- Northern Galactic Cap: 110 <= RA <= 265 and -5 <= Dec <= 70 (a box around the real, rounder
  cap: about 9,100 deg² against the real ~7,500).
- Southern Galactic Cap, three 3°-wide stripes over RA >= 310 or RA <= 60 (the box is split at
  RA = 0): Dec in [-1.5, 1.5] (stripe 82), [13.5, 16.5] (stripe 76) and [-11.5, -8.5] (stripe 86).

Total about 10,100 deg², a quarter of the sky. Used by the catalog generator (every synthetic
galaxy lies inside) and by the offline cutout server (blank images outside).
"""

from __future__ import annotations

import numpy as np

# (ra_min, ra_max, dec_min, dec_max), degrees, inclusive.
FOOTPRINT_BOXES: tuple[tuple[float, float, float, float], ...] = (
    (110.0, 265.0, -5.0, 70.0),  # Northern Galactic Cap
    (310.0, 360.0, -1.5, 1.5),  # stripe 82, RA >= 310
    (0.0, 60.0, -1.5, 1.5),  # stripe 82, RA <= 60
    (310.0, 360.0, 13.5, 16.5),  # stripe 76
    (0.0, 60.0, 13.5, 16.5),
    (310.0, 360.0, -11.5, -8.5),  # stripe 86
    (0.0, 60.0, -11.5, -8.5),
)


def in_footprint(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """True where (RA, Dec) in degrees lies inside the approximate SDSS Legacy footprint.

    RA is taken modulo 360 (so -10 and 350 are the same point); NaN coordinates are outside.
    Accepts scalars or arrays that broadcast together; returns a boolean array of their shape.
    """
    ra = np.mod(np.asarray(ra_deg, dtype=np.float64), 360.0)
    dec = np.asarray(dec_deg, dtype=np.float64)
    inside = np.zeros(np.broadcast_shapes(ra.shape, dec.shape), dtype=bool)
    for ra_min, ra_max, dec_min, dec_max in FOOTPRINT_BOXES:
        inside |= (ra >= ra_min) & (ra <= ra_max) & (dec >= dec_min) & (dec <= dec_max)
    return inside


def footprint_area_deg2() -> float:
    """Area of the footprint in square degrees (the boxes do not overlap)."""
    total_sr = 0.0
    for ra_min, ra_max, dec_min, dec_max in FOOTPRINT_BOXES:
        d_ra = np.radians(ra_max - ra_min)
        total_sr += d_ra * (np.sin(np.radians(dec_max)) - np.sin(np.radians(dec_min)))
    return float(total_sr * (180.0 / np.pi) ** 2)
