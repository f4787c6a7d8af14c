"""Gnomonic (TAN) geometry on unit vectors: brick WCS and a galaxy's own tangent plane, no trig per point.

A tangent plane at (ra0, dec0) has the orthonormal frame r (towards the centre), e (east, increasing
RA), n (north). The point of standard coordinates (ξ, η) (radians, ξ east, η north) is the direction
``r + ξ e + η n``; a direction v has ξ = v·e / v·r, η = v·n / v·r (NaN on the far hemisphere). A
brick's FITS TAN WCS maps 0-based pixel p to intermediate coordinates ``CD (p + 1 - CRPIX)`` (degrees)
= (ξ, η) rotated by LONPOLE - 180°. LONPOLE absent counts as 180 (astrometry.net / legacypipe: the
plain ξ, η; the FITS default differs only for a reference point exactly at a pole).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.errors import FetchError

_TAN_TYPES = ("RA---TAN", "DEC--TAN")


def frame(ra0: float, dec0: float) -> np.ndarray:
    """(3, 3) rows r, e, n of the tangent plane at (ra0, dec0) degrees."""
    a, d = math.radians(ra0), math.radians(dec0)
    return np.array([
        [math.cos(d) * math.cos(a), math.cos(d) * math.sin(a), math.sin(d)],
        [-math.sin(a), math.cos(a), 0.0],
        [-math.sin(d) * math.cos(a), -math.sin(d) * math.sin(a), math.cos(d)],
    ])  # fmt: skip


def to_plane(f: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standard coordinates (ξ, η), radians, of directions ``v`` (3, ...) in the plane of frame ``f``."""
    r, e, n = (np.tensordot(f[i], v, axes=(0, 0)) for i in range(3))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(r > 0, r, np.nan)
        return e / r, n / r


def from_plane(f: np.ndarray, xi: np.ndarray, eta: np.ndarray) -> np.ndarray:
    """Directions (3, ...) (not normalised) of standard coordinates (ξ, η) radians in frame ``f``."""
    xi, eta = np.broadcast_arrays(np.asarray(xi, np.float64), np.asarray(eta, np.float64))
    r, e, n = (f[i].reshape(3, *[1] * xi.ndim) for i in range(3))
    return r + e * xi + n * eta


def radec_to_vec(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Unit vectors (3, ...) of (ra, dec) degrees."""
    a, d = np.radians(np.asarray(ra, np.float64)), np.radians(np.asarray(dec, np.float64))
    return np.stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)])


def vec_to_radec(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ra in [0, 360), dec) degrees of directions (3, ...)."""
    norm = np.sqrt(np.sum(v * v, axis=0))
    ra = np.mod(np.degrees(np.arctan2(v[1], v[0])), 360.0)
    return np.where(ra >= 360.0, 0.0, ra), np.degrees(np.arcsin(np.clip(v[2] / norm, -1.0, 1.0)))


@dataclass(frozen=True, eq=False)
class Tan:
    """A FITS TAN WCS: frame at CRVAL, pixel ↔ plane matrices (0-based pixels, radians)."""

    frame: np.ndarray  # (3, 3) r, e, n at CRVAL
    to_pix: np.ndarray  # (2, 2): plane (ξ, η) radians → pixel offset from the reference pixel
    to_std: np.ndarray  # (2, 2): the inverse
    ref: np.ndarray  # (2,) 0-based reference pixel (x, y)

    @classmethod
    def from_header(cls, header, source: str) -> Tan:
        """The WCS of a FITS header (CD or CDELT/PC); :class:`FetchError` naming ``source`` if it is not TAN."""
        for axis, want in enumerate(_TAN_TYPES, start=1):
            got = str(header.get(f"CTYPE{axis}", "")).strip()
            if got != want:
                raise FetchError(
                    f"{source} has CTYPE{axis} = {got or '(none)'}, not a TAN projection; agnsurvey reads "
                    "Legacy Surveys coadds (TAN)"
                )
        if "CD1_1" in header or "CD2_2" in header:
            cd = np.array([[header.get("CD1_1", 0.0), header.get("CD1_2", 0.0)],
                           [header.get("CD2_1", 0.0), header.get("CD2_2", 0.0)]], dtype=np.float64)  # fmt: skip
        else:
            pc = np.array([[header.get("PC1_1", 1.0), header.get("PC1_2", 0.0)],
                           [header.get("PC2_1", 0.0), header.get("PC2_2", 1.0)]], dtype=np.float64)  # fmt: skip
            cd = np.diag([header.get("CDELT1", 1.0), header.get("CDELT2", 1.0)]) @ pc
        phi = math.radians(float(header.get("LONPOLE", 180.0)) - 180.0)
        # intermediate (x, y) = (ξ, η) turned by LONPOLE - 180° (checked against astropy.wcs)
        rot = np.array([[math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)]])
        std_to_int = np.degrees(1.0) * rot
        to_pix = np.linalg.solve(cd, std_to_int)
        ref = np.array([float(header["CRPIX1"]) - 1.0, float(header["CRPIX2"]) - 1.0])
        return cls(frame(float(header["CRVAL1"]), float(header["CRVAL2"])), to_pix, np.linalg.inv(to_pix), ref)

    def vec_to_pixel(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """0-based pixel (x, y) of directions (3, ...); NaN on the far hemisphere."""
        xi, eta = to_plane(self.frame, v)
        m = self.to_pix
        return m[0, 0] * xi + m[0, 1] * eta + self.ref[0], m[1, 0] * xi + m[1, 1] * eta + self.ref[1]

    def pixel_to_vec(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Directions (3, ...) (not normalised) of 0-based pixels (x, y)."""
        dx, dy = np.asarray(x, np.float64) - self.ref[0], np.asarray(y, np.float64) - self.ref[1]
        m = self.to_std
        return from_plane(self.frame, m[0, 0] * dx + m[0, 1] * dy, m[1, 0] * dx + m[1, 1] * dy)

    def world_to_pixel(self, ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """0-based pixel (x, y) of (ra, dec) degrees."""
        return self.vec_to_pixel(radec_to_vec(ra, dec))

    def pixel_to_world(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ra, dec) degrees of 0-based pixels (x, y)."""
        return vec_to_radec(self.pixel_to_vec(x, y))
