"""The catalog phase's arguments: ``[ingest]`` and ``[label]``, validated when built."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from pipeline import validate
from pipeline.catalog.schema import CANONICAL_COLUMNS, ID_KINDS, SCHEMES, IdKind, Scheme
from pipeline.errors import ConfigError
from storage.workspace import Workspace


@dataclass(frozen=True)
class IngestArgs:
    """Catalog files → ``WS/catalog/``, a HATS catalog in the canonical schema, in sky order.

    ``columns`` maps canonical names to source columns (overrides the NSA defaults);
    ``radius_column`` is the radius in arcsec used for the cutout scale (PETROTH90: three radii
    then frame the whole galaxy); ``max_rows`` is the most rows of one HEALPix partition (fewer
    when needed to give every worker thread two partitions);
    ``chunk_rows`` the rows one read task takes from a FITS or Parquet input; ``hdu`` the FITS
    extension holding the table (None: the first table); ``id_kind``: ``string`` keeps ids as
    text (``source_id``, hashed into ``objid``), ``int`` requires exact integers, ``auto`` goes by
    the column's type.
    """

    SECTION: ClassVar[str] = "ingest"  # its table in the TOML config
    RENAMED: ClassVar[Mapping[str, str]] = {  # old keys, and what became of them
        "shard_rows": "the catalog is a HATS catalog now, cut into HEALPix partitions of at most ingest.max_rows rows",
    }

    workspace: Workspace
    inputs: tuple[str, ...]
    columns: Mapping[str, str] = field(default_factory=dict)
    radius_column: str = "PETROTH90"
    max_rows: int = 500_000
    chunk_rows: int = 500_000
    format: Literal["auto", "fits", "parquet", "csv"] = "auto"
    hdu: int | None = None
    id_kind: IdKind = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "workspace", validate.workspace(self.workspace))
        object.__setattr__(self, "inputs", tuple(str(p) for p in self.inputs))
        object.__setattr__(self, "columns", dict(self.columns))
        if not self.inputs:
            raise ConfigError("ingest needs at least one catalog file (agnsurvey ingest CATALOG ...)")
        validate.positive("ingest.max_rows", self.max_rows)
        validate.positive("ingest.chunk_rows", self.chunk_rows)
        for key in self.columns:
            if key not in CANONICAL_COLUMNS:
                raise ConfigError(
                    f"ingest.columns: unknown canonical column {key!r}; "
                    f"use one of {', '.join(CANONICAL_COLUMNS)} (e.g. --column ha_flux=h_alpha_flux)"
                )
        if self.format not in ("auto", "fits", "parquet", "csv"):
            raise ConfigError(f"ingest.format must be auto, fits, parquet or csv (got {self.format!r})")
        if self.hdu is not None and (not isinstance(self.hdu, int) or isinstance(self.hdu, bool) or self.hdu < 0):
            raise ConfigError(f"ingest.hdu must be an HDU number >= 0 (got {self.hdu!r}); the NSA table is in HDU 1")
        validate.one_of("ingest.id_kind", self.id_kind, ID_KINDS)


@dataclass(frozen=True)
class LabelArgs:
    """Ingested catalog → ``WS/labels/``: BPT ratios, class, label, split and cube index.

    ``min_snr``: every one of the four lines needs flux/err >= min_snr (None: no S/N cut).
    ``split``: train / val / test fractions, assigned by a hash of ``objid``.
    """

    SECTION: ClassVar[str] = "label"  # its table in the TOML config

    workspace: Workspace
    scheme: Scheme = "paper"
    min_snr: float | None = None
    split: tuple[float, float, float] = (0.75, 0.15, 0.10)
    plots: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "workspace", validate.workspace(self.workspace))
        object.__setattr__(self, "split", tuple(float(s) for s in self.split))
        validate.one_of("label.scheme", self.scheme, SCHEMES)
        if self.min_snr is not None and not (math.isfinite(self.min_snr) and self.min_snr > 0):
            raise ConfigError(f"label.min_snr must be > 0 (got {self.min_snr}); omit it for no S/N cut")
        if len(self.split) != 3 or any(s < 0 for s in self.split) or not math.isclose(sum(self.split), 1.0):
            raise ConfigError(
                f"label.split must be three fractions >= 0 (train, val, test) summing to 1 "
                f"(got {list(self.split)}); e.g. --split 0.75,0.15,0.10"
            )
