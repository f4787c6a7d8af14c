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
