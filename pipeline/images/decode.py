"""Pixel kernels: decode a cutout's JPEG or FITS body (checked against the asked shape), resize it,
tell a blank one."""

from __future__ import annotations

import io
import warnings

import numpy as np
from astropy.io import fits
from PIL import Image, UnidentifiedImageError

from pipeline.images.resample import cutout_edges, resample_flux


def open_rgb(source, expect_format: str | None = None) -> np.ndarray:
    """RGB uint8 (H, W, 3) of an image file or file object; ValueError saying what is wrong ("not an
    image", "a PNG image, not a JPEG", "corrupt or truncated ...", too many pixels: a decompression bomb)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                if expect_format is not None and img.format != expect_format:
                    raise ValueError(f"a {img.format} image, not a {expect_format}")
                img.load()
                return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise
    except UnidentifiedImageError:
        raise ValueError("not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"too many pixels to decode safely ({exc}); PIL's limit is Image.MAX_IMAGE_PIXELS = "
                         f"{Image.MAX_IMAGE_PIXELS:,}") from None
    except (OSError, SyntaxError):
        raise ValueError(f"corrupt or truncated {expect_format or 'image'}") from None


def decode_jpeg(body: bytes, size: int) -> np.ndarray:
    """RGB uint8 (size, size, 3) from JPEG bytes; ValueError saying what is wrong otherwise
    ("not an image", "a PNG image, not a JPEG", "corrupt or truncated JPEG", "shape ...")."""
    rgb = open_rgb(io.BytesIO(body), "JPEG")
    if rgb.shape[:2] != (size, size):
        raise ValueError(f"shape {rgb.shape[0]}x{rgb.shape[1]}, asked for {size}x{size}")
    return rgb


FITS_BLOCK = 2880  # a FITS file is a whole number of 2880-byte blocks


def decode_fits(body: bytes, size: int, bands: str) -> np.ndarray:
    """Flux (size, size, B) float32 from the viewer's FITS cutout (a primary image of shape
    (B, size, size) in nanomaggies, FITS orientation: row 0 south), turned north up; ValueError
    saying what is wrong ("not a FITS file", "truncated", "shape ...", "non-finite pixels")."""
    if not body.startswith(b"SIMPLE  ="):
        raise ValueError("not a FITS file")
    if len(body) % FITS_BLOCK:
        raise ValueError(f"truncated FITS body ({len(body):,} bytes, not a multiple of {FITS_BLOCK})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy warns of truncation too: the ValueError says it
            with fits.open(io.BytesIO(body), memmap=False) as hdus:
                data = hdus[0].data
                data = None if data is None else np.array(data, dtype=np.float32)
    except (OSError, ValueError, TypeError, IndexError):
        raise ValueError("corrupt FITS body") from None
    want = (len(bands), size, size)
    if data is None or data.ndim == 2 and len(bands) == 1:
        data = data if data is None else data[None]
    if data is None or data.shape != want:
        got = "no image" if data is None else "x".join(map(str, data.shape))
        raise ValueError(f"FITS shape {got}, asked for {'x'.join(map(str, want))} (bands, height, width)")
    if not np.isfinite(data).all():
        raise ValueError("FITS cutout holds non-finite pixels (NaN or inf)")
    return np.ascontiguousarray(np.flip(data, axis=1).transpose(1, 2, 0))


def resize_flux(flux: np.ndarray, image_size: int) -> np.ndarray:
    """Flux-conserving resample of a square flux cutout (S, S, B) to (image_size, image_size, B):
    each output pixel holds the flux of the input over its footprint (nanomaggies per output pixel)."""
    size = flux.shape[0]
    if size == image_size:
        return flux.astype(np.float32, copy=False)
    edges = cutout_edges((size - 1) / 2, image_size, size / image_size)
    return resample_flux(flux, edges, edges)


def resize(image: np.ndarray, image_size: int) -> np.ndarray:
    """Antialiased (Lanczos) resize of an RGB uint8 image to (image_size, image_size, 3)."""
    if image.shape[0] == image_size and image.shape[1] == image_size:
        return image
    return np.asarray(Image.fromarray(image).resize((image_size, image_size), Image.Resampling.LANCZOS))


def is_constant(image: np.ndarray) -> bool:
    """True for an image with one value everywhere (the all-black answer outside the footprint)."""
    return bool(image.min() == image.max())
