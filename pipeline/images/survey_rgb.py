"""The Legacy Surveys sky viewer's g, r, z → RGB mapping, for cutouts cut from survey bricks.

Lets flux cutouts (nanomaggies) be shown, and scored by a model trained on viewer JPEGs, the way
the viewer renders them. The mapping, per pixel, on surface brightness in nanomaggies per native
0.262″ pixel:

1. per band b, ``v_b = max(0, flux_b * SCALE_b + SOFTENING)``;
2. intensity ``I = mean(v_g, v_r, v_z)``, compressed to ``asinh(Q * I) / sqrt(Q)``;
3. every channel is ``v_b`` times that compression over ``I`` (colour is kept, brightness
   compressed), clipped to [0, 1] and written as ``floor(255 * value)``; R = z, G = r, B = g.
"""

from __future__ import annotations

import numpy as np

NATIVE_PIXSCALE = 0.262
"""Survey coadd pixel scale, arcsec/pixel; the mapping is defined on flux per pixel of this size."""

RGB_SCALES: dict[str, tuple[int, float]] = {"g": (2, 6.0), "r": (1, 3.4), "z": (0, 2.2)}
"""Band → (RGB plane, multiplier on nanomaggies). Numbers from the sky viewer's
``sdss_rgb`` / ``dr2_rgb`` (legacysurvey/imagine ``map/views.py``; legacypipe's ``get_rgb`` has its kin)."""

SOFTENING = 0.03
"""Offset added to every scaled band before the nonlinearity (the viewer's ``sdss_rgb``, ``m``): the sky level."""

Q = 20.0
"""asinh nonlinearity strength (the viewer's ``sdss_rgb``, ``Q``)."""


def flux_to_rgb(flux: np.ndarray, bands: str, pixscale: float = NATIVE_PIXSCALE) -> np.ndarray:
    """uint8 (H, W, 3) viewer-style RGB (R = z, G = r, B = g) of a (H, W, B) flux cutout.

    ``flux`` is nanomaggies per output pixel, its last axis in the order of ``bands`` (e.g. "grz");
    ``pixscale`` is arcsec per output pixel: flux is rescaled by (0.262 / pixscale)² to flux per
    native pixel first. Bands other than g, r, z are ignored; non-finite flux counts as zero.
    """
    f = np.asarray(flux, dtype=np.float64)
    if f.ndim != 3 or f.shape[-1] != len(bands):
        raise ValueError(f"flux must be (H, W, {len(bands)}) for bands {bands!r} (got shape {f.shape})")
    missing = [b for b in RGB_SCALES if b not in bands]
    if missing:
        raise ValueError(
            f"band(s) {', '.join(missing)} missing from {bands!r}: the viewer's RGB needs g, r and z; pass --bands grz"
        )
    if not (np.isfinite(pixscale) and pixscale > 0):
        raise ValueError(f"pixscale must be > 0 arcsec/pixel (got {pixscale})")
    f = np.where(np.isfinite(f), f, 0.0) * (NATIVE_PIXSCALE / pixscale) ** 2
    scaled = {b: np.maximum(0.0, f[..., bands.index(b)] * s + SOFTENING) for b, (_, s) in RGB_SCALES.items()}
    intensity = sum(scaled.values()) / len(scaled)
    gain = np.arcsinh(Q * intensity) / np.sqrt(Q) / np.where(intensity > 0, intensity, 1.0)
    rgb = np.zeros(f.shape[:2] + (3,), dtype=np.float64)
    for b, (plane, _) in RGB_SCALES.items():
        rgb[..., plane] = scaled[b] * gain
    return np.floor(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
