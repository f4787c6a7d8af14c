"""P(AGN) of cube rows with a trained model: contiguous reads, fixed-size batches, optional TTA.

Test-time augmentation (``tta``) averages the model's scores over the 8 flips/rotations of each
image (the symmetry group of the square), since a galaxy has no preferred orientation.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pipeline.learn.augment import dihedral
from storage.cube import Cube


def predict_images(model, images: np.ndarray, batch_size: int, tta: bool = False) -> np.ndarray:  # noqa: ANN001
    """Scores of images (n, S, S, C) as the cube stores them; batches padded to ``batch_size`` (one compiled shape)."""
    out = np.empty(len(images), dtype=np.float32)
    transforms = range(8) if tta else (0,)
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        n = len(chunk)
        total = np.zeros(n, dtype=np.float64)
        for k in transforms:
            batch = np.zeros((batch_size, *chunk.shape[1:]), dtype=chunk.dtype)
            batch[:n] = dihedral(chunk, k)
            total += np.asarray(model.predict_on_batch(batch), dtype=np.float64).reshape(-1)[:n]
        out[start : start + n] = total / len(transforms)
    return out


def predict_rows(model, cube: Cube, rows: np.ndarray, batch_size: int = 256, tta: bool = False) -> np.ndarray:  # noqa: ANN001
    """Scores of the cube's ``rows`` (in the order given); the next rows are read while the
    model scores the current ones."""
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    chunks = [order[i : i + batch_size * 4] for i in range(0, len(order), batch_size * 4)]
    out = np.empty(len(rows), dtype=np.float32)
    with ThreadPoolExecutor(1, thread_name_prefix="cube-read") as reader:
        pending = reader.submit(cube.read_rows, rows[chunks[0]]) if chunks else None
        for i, chunk in enumerate(chunks):
            images = pending.result()
            if i + 1 < len(chunks):
                pending = reader.submit(cube.read_rows, rows[chunks[i + 1]])
            out[chunk] = predict_images(model, images, batch_size, tta)
    return out
