"""The offline sky's arguments: ``[sky]`` (``agnsurvey sky make``), validated when built."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from pipeline import validate
from pipeline.errors import ConfigError


@dataclass(frozen=True)
class SkyArgs:
    """The offline NSA-like catalog: ``n`` galaxies from ``seed``, written to ``out``; ``layout``
    ``v0`` (NSA v0_1_2: FITS + Parquet with emission lines) or ``v1`` (NSA v1_0_1 names, no lines)."""

    SECTION: ClassVar[str] = "sky"  # its table in the TOML config
    INTERNAL: ClassVar[tuple[str, ...]] = ("out",)  # set by the command line, not the file

    out: Path
    n: int = 20_000
    seed: int = 0
    partition_rows: int = 250_000
    layout: Literal["v0", "v1"] = "v0"

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        validate.positive("sky.n", self.n)
        validate.positive("sky.partition_rows", self.partition_rows)
        if self.seed < 0:
            raise ConfigError(f"sky.seed must be >= 0 (got {self.seed})")
        if self.layout not in ("v0", "v1"):
            raise ConfigError(f"sky.layout must be v0 (NSA v0_1_2) or v1 (NSA v1_0_1) (got {self.layout!r})")


@dataclass(frozen=True)
class BrickArgs:
    """A brick mirror of the offline sky (``agnsurvey sky bricks``): Legacy Surveys DR9/DR10 geometry under
    ``out``, for the catalog(s) ``catalog``, over the region RA [ra_min, ra_max] (ra_min > ra_max: the
    region wraps through RA 0) × Dec [dec_min, dec_max] degrees; ``bands`` of g, r, z; ``invvar``:
    write the inverse-variance maps too."""

    SECTION: ClassVar[str] = "bricks"  # its table in the TOML config
    INTERNAL: ClassVar[tuple[str, ...]] = ("out", "catalog")  # set by the command line, not the file

    out: Path
    catalog: tuple[str, ...]
    ra_min: float = 0.0
    ra_max: float = 360.0
    dec_min: float = -90.0
    dec_max: float = 90.0
    bands: str = "grz"
    invvar: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        cat = (self.catalog,) if isinstance(self.catalog, str | Path) else self.catalog
        object.__setattr__(self, "catalog", tuple(str(c) for c in cat))
        if not self.catalog:
            raise ConfigError("sky bricks needs a catalog: give --catalog PATH (e.g. WS/sky/nsa_sky.fits)")
        for key in ("ra_min", "ra_max"):
            if not 0.0 <= getattr(self, key) <= 360.0:
                raise ConfigError(f"bricks.{key} must be in [0, 360] degrees (got {getattr(self, key)})")
        if not -90.0 <= self.dec_min < self.dec_max <= 90.0:
            raise ConfigError(f"bricks needs dec_min < dec_max in [-90, 90] (got {self.dec_min}, {self.dec_max})")
        bad = sorted(set(self.bands) - set("grz"))
        if not self.bands or bad or len(set(self.bands)) != len(self.bands):
            raise ConfigError(f"bricks.bands: distinct letters of g, r, z (got {self.bands!r}); e.g. --bands grz")
