"""The offline sky in memory: every catalog galaxy the cutout server can draw, with a spatial index.

:class:`SkyIndex` holds one array per quantity (objid, ra, dec, radius_arcsec, z, agn_weight) and
answers two questions, both exact (great-circle distances), both deterministic:

- :meth:`SkyIndex.nearest`: the galaxy closest to a position within a tolerance (the cutout's target);
- :meth:`SkyIndex.in_field`: the galaxies whose light can fall on a square field (its neighbours).

The index is a flat sort, no tree: rows are ordered by (Dec band of :data:`BAND_DEG`, RA) and a
cone query turns into two ``searchsorted`` per band it overlaps, then an exact distance cut on the
few candidates. Building it for 1M galaxies is one argsort (a fraction of a second); a lookup with
a tolerance of arcseconds touches one or two bands and takes tens of microseconds.

Loading reuses :mod:`pipeline.catalog` (NSA FITS, Parquet file or dataset directory, CSV; NSA
names or a column map), plus the synthetic catalog's hidden ``SIM_CLASS`` when it is there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.catalog.canonical import canonical_frame
from pipeline.catalog.readers.base import CatalogSource
from pipeline.catalog.schema import DEFAULT_RADIUS_COLUMN
from pipeline.catalog.sources import inspect_all, plan_chunks, read_raw
from pipeline.errors import CatalogError
from pipeline.synthetic.render import Galaxy, agn_weight_from_fluxes

BAND_DEG = 0.1
"""Height of the Dec bands of the index, degrees (a tuning knob only: results do not depend on it)."""

NEIGHBOUR_RADII = 5.0
"""A galaxy is drawn in a field when its centre lies within this many PETROTH90 of the field."""

SIM_CLASS_COLUMN = "SIM_CLASS"
_ARCSEC = 1.0 / 3600.0


@dataclass(frozen=True, eq=False, repr=False)
class SkyIndex:
    """Catalog galaxies (parallel arrays, catalog order) and a (Dec band, RA) sort for lookups.

    Units: ra/dec degrees (ra in [0, 360)), radius_arcsec arcsec, agn_weight in [0, 1].
    ``dropped`` counts rows left out of the index, by reason.
    """

    objid: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    radius_arcsec: np.ndarray
    z: np.ndarray
    agn_weight: np.ndarray
    dropped: Mapping[str, int] = field(default_factory=dict)
    source: str = ""
    _order: np.ndarray = field(init=False, repr=False)
    _keys: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.objid)
        cast = {
            "objid": np.int64,
            "ra": np.float64,
            "dec": np.float64,
            "radius_arcsec": np.float32,
            "z": np.float32,
            "agn_weight": np.float32,
        }
        for name, dtype in cast.items():
            arr = np.ascontiguousarray(getattr(self, name), dtype=dtype)
            if arr.shape != (n,):
                raise ValueError(f"SkyIndex.{name} has shape {arr.shape}, expected ({n},) like objid")
            object.__setattr__(self, name, arr)
        ra = np.mod(self.ra, 360.0)
        ra[ra >= 360.0] = 0.0  # np.mod(-1e-17, 360) == 360.0
        object.__setattr__(self, "ra", ra)
        if not (np.all(np.isfinite(ra)) and np.all(np.abs(self.dec) <= 90.0)):
            raise ValueError(
                "SkyIndex: every ra must be finite and every dec in [-90, 90]; use from_frame to drop bad rows"
            )
        keys = _key(_band(self.dec), _ra_quanta(ra))
        order = np.argsort(keys, kind="stable")
        object.__setattr__(self, "_order", order)
        object.__setattr__(self, "_keys", keys[order])
        object.__setattr__(self, "dropped", dict(self.dropped))

    # ---------------------------------------------------------------------------------------------
    # Construction

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, sim_class: np.ndarray | None = None, source: str = "") -> SkyIndex:
        """From a canonical-schema frame (objid, ra, dec, z, radius_arcsec, ha/nii/hb/oiii_flux).

        Rows with non-finite or out-of-range coordinates, or a radius that is not a positive
        number, are dropped and counted. Missing flux columns mean NaN fluxes (the renderer's
        ``agn_weight_from_fluxes`` decides what that draws like); ``sim_class`` (the synthetic
        catalog's true class) is the fallback for rows whose four fluxes are not all positive.
        """
        n = len(frame)

        def col(name: str, dtype: type) -> np.ndarray:
            if name in frame.columns:
                return np.asarray(pd.to_numeric(frame[name], errors="coerce"), dtype=dtype)
            return np.full(n, np.nan, dtype=dtype)

        for name in ("objid", "ra", "dec"):
            if name not in frame.columns:
                raise CatalogError(f"{source or 'catalog'}: no {name!r} column; the cutout server needs objid, ra, dec")
        ra, dec = col("ra", np.float64), col("dec", np.float64)
        radius = col("radius_arcsec", np.float64)
        bad_coords = ~(np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90.0))
        bad_radius = ~bad_coords & ~(np.isfinite(radius) & (radius > 0))
        keep = ~(bad_coords | bad_radius)
        fluxes = [col(c, np.float64)[keep] for c in ("ha_flux", "nii_flux", "hb_flux", "oiii_flux")]
        sim = None if sim_class is None else np.asarray(sim_class)[keep]
        weight = np.asarray(agn_weight_from_fluxes(*fluxes, sim_class=sim), dtype=np.float32)
        dropped = {k: int(v) for k, v in (("bad_coordinates", bad_coords.sum()), ("bad_radius", bad_radius.sum())) if v}
        return cls(
            objid=np.asarray(frame["objid"], dtype=np.int64)[keep],
            ra=ra[keep],
            dec=dec[keep],
            radius_arcsec=radius[keep],
            z=col("z", np.float64)[keep],
            agn_weight=weight,
            dropped=dropped,
            source=source,
        )

    @classmethod
    def from_catalog(
        cls,
        path: str | Path | Sequence[str | Path],
        columns: Mapping[str, str] | None = None,
        radius_column: str = DEFAULT_RADIUS_COLUMN,
        fmt: str = "auto",
        chunk_rows: int = 1_000_000,
    ) -> SkyIndex:
        """Load catalog file(s) (FITS / Parquet file or directory / CSV; globs allowed).

        Columns are resolved as by ``agnsurvey ingest`` (NSA v0_1_2 names by default, ``columns``
        to map others, ``radius_column`` for the cutout scale). ``SIM_CLASS``, when every input
        has it, is read too and drives the galaxies' appearance.
        """
        patterns = [str(path)] if isinstance(path, str | Path) else [str(p) for p in path]
        sources = inspect_all(patterns, columns, radius_column, fmt)
        sim_cols = [_find(s, SIM_CLASS_COLUMN) for s in sources]
        use_sim = all(c is not None for c in sim_cols)
        frames: list[pd.DataFrame] = []
        sims: list[np.ndarray] = []
        for src, sim_col in zip(sources, sim_cols, strict=True):
            extra = [sim_col] if use_sim and sim_col is not None else []
            for chunk in plan_chunks(src, chunk_rows):
                raw = read_raw(chunk, extra)
                frames.append(canonical_frame(raw, src))
                if extra:
                    sims.append(np.asarray(pd.to_numeric(pd.Series(np.asarray(raw[extra[0]])), errors="coerce")))
        frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        sim = np.concatenate(sims) if use_sim and sims else None
        return cls.from_frame(frame, sim_class=sim, source=", ".join(patterns))

    # ---------------------------------------------------------------------------------------------
    # Lookups

    def __len__(self) -> int:
        return len(self.objid)

    def __repr__(self) -> str:
        return f"SkyIndex({len(self)} galaxies from {self.source or 'memory'!r}, dropped={dict(self.dropped)})"

    @property
    def max_radius_arcsec(self) -> float:
        return float(self.radius_arcsec.max()) if len(self) else 0.0

    def galaxy(self, i: int) -> Galaxy:
        """Row ``i`` (catalog order) as the renderer's :class:`Galaxy`."""
        return Galaxy(
            objid=int(self.objid[i]),
            ra=float(self.ra[i]),
            dec=float(self.dec[i]),
            radius_arcsec=float(self.radius_arcsec[i]),
            z=float(self.z[i]),
            agn_weight=float(self.agn_weight[i]),
        )

    def within(self, ra: float, dec: float, radius_deg: float) -> tuple[np.ndarray, np.ndarray]:
        """Rows whose centre lies within ``radius_deg`` (great circle) of (ra, dec), degrees.

        Returns (indices, separations in degrees), both ordered by separation, then index.
        """
        if not (np.isfinite(ra) and np.isfinite(dec) and np.isfinite(radius_deg)) or radius_deg < 0:
            raise ValueError(f"within: need finite ra, dec and radius >= 0 (got {ra}, {dec}, {radius_deg})")
        positions = self._candidates(float(ra) % 360.0, float(dec), float(radius_deg))
        idx = self._order[positions]
        sep = angular_separation_deg(ra, dec, self.ra[idx], self.dec[idx])
        keep = sep <= radius_deg
        idx, sep = idx[keep], sep[keep]
        order = np.lexsort((idx, sep))
        return idx[order], sep[order]

    def nearest(self, ra: float, dec: float, tolerance_arcsec: float) -> int | None:
        """Index of the galaxy closest to (ra, dec) if within ``tolerance_arcsec``, else None.

        Ties go to the lower catalog index.
        """
        idx, _ = self.within(ra, dec, tolerance_arcsec * _ARCSEC)
        return int(idx[0]) if len(idx) else None

    def in_field(
        self, ra: float, dec: float, half_width_deg: float, margin_radii: float = NEIGHBOUR_RADII
    ) -> np.ndarray:
        """Galaxies that can show in a square field of half-width ``half_width_deg`` centred on (ra, dec).

        A galaxy qualifies when its centre is within the field's half-diagonal plus
        ``margin_radii`` of its own radius (a disc around the square: a few extra at the corners).
        Ordered by separation from the centre, then index.
        """
        half_diag = half_width_deg * np.sqrt(2.0)
        reach = half_diag + margin_radii * self.max_radius_arcsec * _ARCSEC
        idx, sep = self.within(ra, dec, min(reach, 180.0))
        keep = sep <= half_diag + margin_radii * self.radius_arcsec[idx] * _ARCSEC
        return idx[keep]

    def _candidates(self, ra: float, dec: float, r: float) -> np.ndarray:
        """Positions in the sorted order of every row possibly within ``r`` degrees (a superset)."""
        b_lo = int(_band(max(dec - r, -90.0)))
        b_hi = int(_band(min(dec + r, 90.0)))
        bands = np.arange(b_lo, b_hi + 1, dtype=np.int64)
        cos_dec = np.cos(np.radians(dec))
        sin_r = np.sin(np.radians(min(r, 90.0)))
        if r >= 90.0 or dec + r >= 90.0 or dec - r <= -90.0 or sin_r >= cos_dec:
            intervals = [(0.0, 360.0)]
        else:
            dra = np.degrees(np.arcsin(sin_r / cos_dec)) + 1e-9
            lo, hi = ra - dra, ra + dra
            if lo < 0.0:
                intervals = [(0.0, hi), (lo + 360.0, 360.0)]
            elif hi >= 360.0:
                intervals = [(0.0, hi - 360.0), (lo, 360.0)]
            else:
                intervals = [(lo, hi)]
        lows = np.concatenate([_key(bands, _ra_quanta(lo)) for lo, _ in intervals])
        highs = np.concatenate([_key(bands, _ra_quanta(hi)) for _, hi in intervals])
        starts = np.searchsorted(self._keys, lows, side="left")
        stops = np.searchsorted(self._keys, highs, side="right")
        lengths = np.maximum(stops - starts, 0)
        total = int(lengths.sum())
        if total == 0:
            return np.empty(0, dtype=np.int64)
        # concatenate(arange(start, stop) for each range), vectorised
        offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
        return np.arange(total, dtype=np.int64) + offsets


_N_BANDS = int(np.ceil(180.0 / BAND_DEG))
_RA_BITS = 32
_RA_SCALE = 2.0**_RA_BITS / 360.0


def _ra_quanta(ra: np.ndarray | float) -> np.ndarray:
    """RA in [0, 360] degrees as an integer in [0, 2**32) (monotone: a quantum is 0.3 mas)."""
    q = np.floor(np.asarray(ra, dtype=np.float64) * _RA_SCALE)
    return np.clip(q, 0, 2**_RA_BITS - 1).astype(np.int64)


def _key(band: np.ndarray, ra_quanta: np.ndarray) -> np.ndarray:
    """Exact int64 sort key: Dec band, then RA."""
    return (np.asarray(band, dtype=np.int64) << _RA_BITS) + ra_quanta


def _band(dec: np.ndarray | float) -> np.ndarray:
    """Dec band number (int64) of Dec in degrees."""
    band = np.floor((np.asarray(dec, dtype=np.float64) + 90.0) / BAND_DEG)
    return np.clip(band, 0, _N_BANDS - 1).astype(np.int64)


def angular_separation_deg(ra1: float, dec1: float, ra2: np.ndarray, dec2: np.ndarray) -> np.ndarray:
    """Great-circle separation in degrees (haversine: accurate at arcsecond scales)."""
    r1, d1 = np.radians(ra1), np.radians(dec1)
    r2, d2 = np.radians(ra2), np.radians(dec2)
    h = np.sin((d2 - d1) / 2.0) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2.0) ** 2
    return np.degrees(2.0 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0))))


def _find(source: CatalogSource, name: str) -> str | None:
    return next((c for c in source.all_columns if c.upper() == name.upper()), None)
