"""The per-band stretch a model sees for flux cubes (nanomaggies per output pixel).

``asinh(x / s_b)``: linear for faint pixels (up to about one noise sigma, ``s_b``), logarithmic for
bright cores, so faint outskirts and saturated-looking nuclei both stay visible in a small range.
The softening ``s_b`` is set per band to that band's robust sky noise, so each band's noise maps to
about 1 whatever its depth. The stretch is saved with the model (:meth:`Stretch.to_dict`) so scoring
applies exactly what training did. numpy only: no Keras here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_SOFTENING = 1e-6
"""Floor on a fitted softening (nanomaggies per pixel): keeps it > 0 and finite on blank samples."""

MAD_TO_SIGMA = 1.4826
"""Median absolute deviation → Gaussian sigma."""


@dataclass(frozen=True)
class Stretch:
    """Per-band ``asinh(x / softening_b)``; ``softening`` in nanomaggies per output pixel, one per band."""

    bands: str
    softening: tuple[float, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.bands, str) or not self.bands:
            raise ValueError(f"bands must be a non-empty string such as 'grz' (got {self.bands!r})")
        soft = tuple(float(s) for s in self.softening)
        if len(soft) != len(self.bands):
            raise ValueError(f"softening has {len(soft)} values for {len(self.bands)} bands {self.bands!r}")
        if not all(math.isfinite(s) and s > 0 for s in soft):
            raise ValueError(f"softening values must be finite and > 0 (got {soft})")
        object.__setattr__(self, "softening", soft)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """float32 ``asinh(x / softening_b)`` over the last axis (one entry per band), any leading shape."""
        a = np.asarray(x)
        if a.ndim == 0 or a.shape[-1] != len(self.bands):
            raise ValueError(
                f"input has {a.shape[-1] if a.ndim else 0} channels on its last axis (shape {a.shape}) "
                f"but the stretch has {len(self.bands)} bands {self.bands!r}"
            )
        return np.arcsinh(a.astype(np.float64) / np.asarray(self.softening)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: ``{"bands": str, "softening": [float, ...]}``."""
        return {"bands": self.bands, "softening": list(self.softening)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Stretch:
        """Inverse of :meth:`to_dict`; a ValueError names the missing, unknown or bad key."""
        if not isinstance(d, dict):
            raise ValueError(f"stretch must be a dict with keys 'bands' and 'softening' (got {type(d).__name__})")
        for key in ("bands", "softening"):
            if key not in d:
                raise ValueError(f"stretch is missing key {key!r}")
        extra = sorted(set(d) - {"bands", "softening"})
        if extra:
            raise ValueError(f"stretch has unknown key(s) {', '.join(map(repr, extra))}")
        bands, soft = d["bands"], d["softening"]
        if not isinstance(bands, str) or not bands:
            raise ValueError(f"stretch key 'bands' must be a non-empty string (got {bands!r})")
        if not isinstance(soft, list | tuple) or not all(
            isinstance(s, int | float) and not isinstance(s, bool) for s in soft
        ):
            raise ValueError(f"stretch key 'softening' must be a list of numbers (got {soft!r})")
        if len(soft) != len(bands):
            raise ValueError(f"stretch key 'softening' has {len(soft)} values for {len(bands)} bands {bands!r}")
        if not all(math.isfinite(s) and s > 0 for s in soft):
            raise ValueError(f"stretch key 'softening' values must be finite and > 0 (got {soft!r})")
        return cls(bands=bands, softening=tuple(float(s) for s in soft))

    @classmethod
    def fit(cls, sample: np.ndarray, bands: str) -> Stretch:
        """Softening_b = robust sky noise of band b: 1.4826 × MAD over all finite pixels of that band.

        ``sample`` has its last axis = len(bands) (nanomaggies per output pixel); NaN/inf are ignored;
        each value is floored at 1e-6 so it is always > 0 and finite.
        """
        a = np.asarray(sample, dtype=np.float64)
        if a.ndim == 0 or a.shape[-1] != len(bands):
            raise ValueError(f"sample has shape {a.shape}; its last axis must have {len(bands)} bands {bands!r}")
        flat = a.reshape(-1, len(bands))
        soft = []
        for b in range(len(bands)):
            v = flat[:, b][np.isfinite(flat[:, b])]
            sigma = MAD_TO_SIGMA * float(np.median(np.abs(v - np.median(v)))) if v.size else 0.0
            soft.append(sigma if math.isfinite(sigma) and sigma > MIN_SOFTENING else MIN_SOFTENING)
        return cls(bands=bands, softening=tuple(soft))
