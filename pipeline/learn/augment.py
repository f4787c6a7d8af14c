"""The 8 flips and rotations of the square (a galaxy has no preferred orientation): pure numpy."""

from __future__ import annotations

import numpy as np


def dihedral(images: np.ndarray, k: int) -> np.ndarray:
    """Transform ``k`` (0..7) of the square's symmetry group on (n, S, S, C) images: k % 4
    quarter turns, then a left-right flip when k >= 4. Galaxies have no preferred orientation."""
    out = np.rot90(images, k % 4, axes=(1, 2))
    return out[:, :, ::-1] if k >= 4 else out


def augment(images: np.ndarray, transforms: np.ndarray) -> np.ndarray:
    """Each image i transformed by ``dihedral(·, transforms[i])``, in place where possible."""
    for k in range(1, 8):
        chosen = np.flatnonzero(transforms == k)
        if chosen.size:
            images[chosen] = dihedral(images[chosen], k)
    return images
