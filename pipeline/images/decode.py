"""Pixel kernels: decode a cutout's JPEG (checked against the asked shape), resize it, tell a blank one."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError


def decode_jpeg(body: bytes, size: int) -> np.ndarray:
    """RGB uint8 (size, size, 3) from JPEG bytes; ValueError saying what is wrong otherwise
    ("not an image", "a PNG image, not a JPEG", "corrupt or truncated JPEG", "shape ...")."""
    try:
        with Image.open(io.BytesIO(body)) as img:
            if img.format != "JPEG":
                raise ValueError(f"a {img.format} image, not a JPEG")
            img.load()
            rgb = img.convert("RGB")
    except UnidentifiedImageError:
        raise ValueError("not an image") from None
    except (OSError, SyntaxError):
        raise ValueError("corrupt or truncated JPEG") from None
    if rgb.size != (size, size):
        raise ValueError(f"shape {rgb.size[1]}x{rgb.size[0]}, asked for {size}x{size}")
    return np.asarray(rgb)


def resize(image: np.ndarray, image_size: int) -> np.ndarray:
    """Antialiased (Lanczos) resize of an RGB uint8 image to (image_size, image_size, 3)."""
    if image.shape[0] == image_size and image.shape[1] == image_size:
        return image
    return np.asarray(Image.fromarray(image).resize((image_size, image_size), Image.Resampling.LANCZOS))


def is_constant(image: np.ndarray) -> bool:
    """True for an image with one value everywhere (the all-black answer outside the footprint)."""
    return bool(image.min() == image.max())
