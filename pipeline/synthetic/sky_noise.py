"""Sky noise of the offline sky: unit-variance Gaussian noise fields, in noise sigmas of one native pixel.

Cutouts slice a cached, pre-generated periodic field at a deterministic offset, correlated over one
native 0.262" pixel (the viewer interpolates when pixscale < 0.262") and averaged down (quieter)
when pixscale > 0.262". Bricks draw fresh white noise per brick (:func:`white_noise`).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

NATIVE_PIXSCALE = 0.262
"""Legacy Surveys native pixel scale, arcsec/pixel: sets the noise's correlation and amplitude."""

_SALT_SKY = 0x5C1
_NOISE_SIDE = 512
_NOISE_LEVELS = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)  # correlation lengths (pixels) with a cached field


@lru_cache(maxsize=len(_NOISE_LEVELS))
def _noise_field(level: float) -> np.ndarray:
    """(S, S, 3) float32 unit-variance noise, correlated over ``level`` pixels, periodic."""
    rng = np.random.default_rng([_SALT_SKY, int(level * 10)])
    white = rng.standard_normal((3, _NOISE_SIDE, _NOISE_SIDE))
    # Gaussian smoothing (periodic, by FFT): sigma ~ 0.45 px per pixel of correlation length.
    k = np.fft.fftfreq(_NOISE_SIDE)
    sig = 0.45 * level
    kernel = np.exp(-2.0 * (math.pi * sig) ** 2 * (k[:, None] ** 2 + k[None, : _NOISE_SIDE // 2 + 1] ** 2))
    smooth = np.fft.irfft2(np.fft.rfft2(white) * kernel, s=(_NOISE_SIDE, _NOISE_SIDE))
    smooth /= smooth.std(axis=(1, 2), keepdims=True)
    out = np.ascontiguousarray(smooth.transpose(1, 2, 0), dtype=np.float32)
    out.flags.writeable = False  # shared by every render (and thread)
    return out


def sky(rng: np.random.Generator, size: int, pixscale: float) -> np.ndarray:
    """Sky noise (size, size, 3) float32, in native-pixel noise sigmas, a fresh array.

    Draws from ``rng`` (one uniform, two integers), so a field's noise is a function of its seed.
    """
    ratio = NATIVE_PIXSCALE / pixscale  # > 1: upsampled (correlated), < 1: averaged (quieter)
    corr = min(max(ratio, 1.0), _NOISE_LEVELS[-1])
    level = min(_NOISE_LEVELS, key=lambda lv: abs(math.log(lv / corr)))
    amp = np.float32(min(1.0, ratio) * (1.0 if rng.random() < 0.5 else -1.0))
    field = _noise_field(level)
    if size <= _NOISE_SIDE:
        oy, ox = (int(o) for o in rng.integers(0, _NOISE_SIDE - size + 1, 2))
        return field[oy : oy + size, ox : ox + size] * amp
    oy, ox = (int(o) for o in rng.integers(0, _NOISE_SIDE, 2))  # bigger than the field: tile it
    rows = (oy + np.arange(size)) % _NOISE_SIDE
    cols = (ox + np.arange(size)) % _NOISE_SIDE
    return field.take(rows, axis=0).take(cols, axis=1) * amp


def white_noise(seed: list[int], shape: tuple[int, ...]) -> np.ndarray:
    """Unit-variance white Gaussian noise, float32, of ``shape``, from ``np.random.default_rng(seed)``."""
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
