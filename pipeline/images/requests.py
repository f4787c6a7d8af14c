"""Cutout requests: the field to ask for (pixscale from the galaxy's radius) and the viewer's URL.

The request follows the Legacy Surveys viewer API: ``<cutout-url>?ra=&dec=&size=&pixscale=&layer=``
with ``pixscale = radius * scale * 2 / size`` arcsec/pixel (``scale`` 1.5: the field spans three
90 %-light radii). URLs carry RA/Dec to 6 decimals (degrees; 0.004 arcsec) and pixscale to 5
decimals (arcsec/pixel). The real service and the offline sky differ only in the base URL.
"""

from __future__ import annotations

from urllib.parse import urlencode, urlsplit

import numpy as np

from pipeline.errors import FetchError


def pixscale_for(
    radius_arcsec: np.ndarray, size: int, scale: float = 1.5, bounds: tuple[float, float] = (0.01, 20.0)
) -> tuple[np.ndarray, np.ndarray]:
    """(pixscale arcsec/pixel, usable) for radii in arcsec: ``radius * scale * 2 / size``, clipped to
    ``bounds``; a radius that is not finite and > 0 is unusable (pixscale NaN)."""
    radius = np.asarray(radius_arcsec, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        usable = np.isfinite(radius) & (radius > 0)
    pixscale = np.where(usable, np.clip(radius * scale * 2.0 / size, *bounds), np.nan)
    return pixscale, usable


def cutout_url(base: str, ra: float, dec: float, size: int, pixscale: float, layer: str,
               bands: str | None = None) -> str:  # fmt: skip
    """The viewer URL of one cutout (RA/Dec degrees to 6 decimals, pixscale arcsec/pixel to 5;
    ``bands`` for a FITS cutout)."""
    query = {"ra": f"{ra:.6f}", "dec": f"{dec:.6f}", "size": size, "pixscale": f"{pixscale:.5f}", "layer": layer}
    if bands is not None:
        query["bands"] = bands
    return f"{base}?{urlencode(query)}"


def fits_endpoint(jpeg_url: str) -> str:
    """The viewer's FITS cutout endpoint beside its JPEG one (``…/cutout.jpg`` → ``…/cutout.fits``), or
    the FITS endpoint itself when given."""
    if jpeg_url.endswith("/cutout.fits"):  # given the FITS endpoint itself
        return jpeg_url
    if not jpeg_url.endswith("/cutout.jpg"):
        raise FetchError(
            f"--pixels flux asks the viewer for FITS cutouts at the endpoint beside cutout.jpg, but the cutout URL "
            f"{jpeg_url!r} does not end in /cutout.jpg (nor /cutout.fits); give the viewer's endpoint "
            "(…/viewer/cutout.jpg or …/viewer/cutout.fits) or cut from local bricks with --bricks ROOT"
        )
    return jpeg_url[: -len("jpg")] + "fits"


def check_cutout_url(url: str) -> str:
    """Raise :class:`FetchError` unless ``url`` is an http(s) URL with a host and no query."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(
            f"cutout URL {url!r} is not an http(s) URL; give the endpoint, e.g. "
            "https://www.legacysurvey.org/viewer/cutout.jpg or http://127.0.0.1:PORT/viewer/cutout.jpg"
        )
    if parts.query or parts.fragment:
        raise FetchError(f"cutout URL {url!r} must not carry a query; agnsurvey adds ra, dec, size, pixscale, layer")
    return url
