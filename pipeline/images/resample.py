"""Flux-conserving resampling of survey pixels (0.262″) onto a cutout grid.

Pure numpy kernels. Coordinates are in *input-pixel* units: input pixel ``k`` covers
``[k - 0.5, k + 0.5]``. Each output pixel receives, from every input pixel, the fraction of that
input pixel its interval covers (separable in y and x), so flux is neither created nor lost inside
the covered field, for any scale factor, up- or down-sampling.
"""

from __future__ import annotations

import numpy as np


def overlap_weights(edges: np.ndarray, n_in: int) -> np.ndarray:
    """(n_out, n_in) float64 overlap matrix for one axis.

    ``edges`` are the n_out + 1 output-pixel edges in input-pixel coordinates, increasing or
    decreasing (a flipped axis). ``W[i, k]`` is the length (in input pixels, so a fraction in [0, 1]
    of input pixel k) of the overlap of ``[edges[i], edges[i+1]]`` (whatever its direction) with
    ``[k - 0.5, k + 0.5]``. Parts outside ``[-0.5, n_in - 0.5]`` get no weight.
    """
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or e.size < 2 or not np.all(np.isfinite(e)):
        raise ValueError(f"edges must be a 1-D array of at least 2 finite values (got shape {e.shape})")
    if n_in < 1:
        raise ValueError(f"n_in must be >= 1 (got {n_in})")
    lo = np.minimum(e[:-1], e[1:])[:, None]
    hi = np.maximum(e[:-1], e[1:])[:, None]
    k = np.arange(n_in, dtype=np.float64)[None, :]
    return np.clip(np.minimum(hi, k + 0.5) - np.maximum(lo, k - 0.5), 0.0, None)


def resample_flux(image: np.ndarray, y_edges: np.ndarray, x_edges: np.ndarray) -> np.ndarray:
    """Flux per output pixel (nanomaggies), ``Wy @ image @ Wx.T`` per band, as float32.

    ``image`` is (H, W) or (H, W, B) flux per input pixel (nanomaggies); ``y_edges`` / ``x_edges``
    are output-pixel edges in input-pixel coordinates (see :func:`cutout_edges`). Returns (ny, nx)
    or (ny, nx, B). Computed in float64. Non-finite input pixels (NaN, ±inf) count as zero flux, so
    they darken only the output pixels that overlap them and poison none; no mask is returned
    (resample ``np.isfinite(image)`` the same way to get the covered fraction).
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (H, W, B) (got shape {img.shape})")
    img = np.where(np.isfinite(img), img, 0.0)
    wy = overlap_weights(y_edges, img.shape[0])
    wx = overlap_weights(x_edges, img.shape[1])
    rows = np.tensordot(wy, img, axes=(1, 0))  # (ny, W[, B])
    out = np.tensordot(wx, rows, axes=(1, 1))  # (nx, ny[, B])
    return np.swapaxes(out, 0, 1).astype(np.float32)


def cutout_edges(centre: float, n_out: int, step: float) -> np.ndarray:
    """n_out + 1 edges (input-pixel coordinates) of n_out output pixels of ``step`` input pixels.

    A negative ``step`` flips the axis. Output pixel index ``(n_out - 1) / 2`` (a pixel centre for
    odd n_out, the edge between the two middle pixels for even n_out) maps to input coordinate
    ``centre``, so a source at ``centre`` lands there whatever n_out.
    """
    if n_out < 1:
        raise ValueError(f"n_out must be >= 1 (got {n_out})")
    if not np.isfinite(step) or step == 0:
        raise ValueError(f"step must be finite and non-zero (got {step}); it is input pixels per output pixel")
    return float(centre) + (np.arange(n_out + 1, dtype=np.float64) - n_out / 2.0) * float(step)


def integrate_axis(image: np.ndarray, edges: np.ndarray, axis: int) -> np.ndarray:
    """``image`` resampled along ``axis`` onto output pixels bounded by ``edges`` (input-pixel
    coordinates, increasing or decreasing): the same sums as ``overlap_weights(edges, n) @ image``
    along that axis, from the running integral of the image instead of a dense matrix, so the cost is
    one cumulative sum over the input, not (outputs × inputs) per line. float64."""
    img = np.moveaxis(np.asarray(image, dtype=np.float64), axis, 0)
    n = img.shape[0]
    e = np.asarray(edges, dtype=np.float64)
    x = np.clip(e + 0.5, 0.0, n)  # distance from the first pixel's outer edge, within the image
    j = np.minimum(x.astype(np.int64), n - 1)
    shape = (-1, *[1] * (img.ndim - 1))
    frac = (x - j).reshape(shape)
    running = np.cumsum(img, axis=0)  # running[k]: sum of pixels 0..k
    at = np.where((j > 0).reshape(shape), running[j - 1], 0.0) + frac * img[j]
    sign = np.sign(e[1:] - e[:-1]).reshape(-1, *[1] * (img.ndim - 1))
    return np.moveaxis((at[1:] - at[:-1]) * sign, 0, axis)
