"""HEALPix nested indices of sky positions (the HATS ``_healpix_29`` sort key)."""

from __future__ import annotations

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
    return ipix.astype(np.int64)
