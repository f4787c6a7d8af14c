"""The offline sky's bands: per-band sky noise in nanomaggies, and sigma images → flux.

The renderer draws surface brightness in units of each band's sky noise of one native 0.262"
pixel; flux in nanomaggies per output pixel = sigmas × ``SIGMA_NMGY[band]`` × (pixscale / 0.262)².
"""

from __future__ import annotations

import numpy as np

from pipeline.synthetic.sky_noise import NATIVE_PIXSCALE

SIGMA_NMGY: dict[str, float] = {"g": 0.0040, "r": 0.0066, "z": 0.0092}
"""Sky noise of one native 0.262" pixel per band, nanomaggies (1/sqrt(invvar) of a DR10-like coadd:
5σ point-source depths about g 24.8, r 24.2, z 23.8 AB with a 1.3" PSF). The ratios are chosen so
that equal surface brightness in sigmas has g - r = 0.54, r - z = 0.36 AB: the colours of
``render._rgb`` are the flux's real AB colours."""

BAND_PLANE: dict[str, int] = {"z": 0, "r": 1, "g": 2}
"""Band → plane of the internal (H, W, 3) sigma image (R = z, G = r, B = g, as the viewer shows them)."""


def check_bands(bands: str) -> str:
    """``bands`` if every letter is a known band (g, r, z), at most once each; else ValueError."""
    unknown = sorted({b for b in bands if b not in SIGMA_NMGY})
    if not bands or unknown or len(set(bands)) != len(bands):
        why = f"unknown band(s) {', '.join(map(repr, unknown))}" if unknown else "bands empty or repeated"
        raise ValueError(f"{why} in bands={bands!r}; the offline sky has g, r and z (e.g. bands=grz)")
    return bands


def sigma_to_flux(img: np.ndarray, bands: str, pixscale: float) -> np.ndarray:
    """Nanomaggies per output pixel (H, W, len(bands)) float32 of a sigma image (H, W, 3), bands in order."""
    check_bands(bands)
    area = (float(pixscale) / NATIVE_PIXSCALE) ** 2
    out = np.empty(img.shape[:2] + (len(bands),), dtype=np.float32)
    for i, band in enumerate(bands):
        np.multiply(img[..., BAND_PLANE[band]], np.float32(SIGMA_NMGY[band] * area), out=out[..., i])
    return out
