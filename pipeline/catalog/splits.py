"""Deterministic train / val / test splits: a pure function of ``objid``.

The split of a galaxy never changes between runs, machines or when new galaxies are added,
because it depends on nothing but its own id (a 64-bit mix of the id, mapped to [0, 1)).
"""

from __future__ import annotations

import numpy as np

SPLITS: tuple[str, str, str] = ("train", "val", "test")


def unit_hash(objid: np.ndarray) -> np.ndarray:
    """Map int64 ids to floats uniform in [0, 1) with the splitmix64 finaliser (stable, seedless)."""
    z = np.asarray(objid, dtype=np.int64).view(np.uint64).copy()
    with np.errstate(over="ignore"):
        z += np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def split_codes(objid: np.ndarray, fractions: tuple[float, float, float] = (0.75, 0.15, 0.10)) -> np.ndarray:
    """Split of each id as int8 codes into :data:`SPLITS` (0 train, 1 val, 2 test)."""
    edges = np.cumsum(fractions[:2])
    return np.searchsorted(edges, unit_hash(objid), side="right").astype(np.int8)


def assign_split(objid: np.ndarray, fractions: tuple[float, float, float] = (0.75, 0.15, 0.10)) -> np.ndarray:
    """Split name ('train' | 'val' | 'test') of each id, in the given proportions."""
    return np.asarray(SPLITS, dtype=object)[split_codes(objid, fractions)]
