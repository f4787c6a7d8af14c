"""The scoring phase's arguments: ``[score]``, validated when built."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from pipeline import validate
from pipeline.catalog.schema import CANONICAL_COLUMNS, ID_KINDS, IdKind
from pipeline.errors import ConfigError
from pipeline.images.args import FetchArgs
from storage.workspace import Workspace


@dataclass(frozen=True)
class ScoreArgs:
    """A trained model + any catalog → ``WS/scores/`` Parquet: P(AGN) and a label for every row.

    ``model``: the directory ``train`` wrote (or its ``model.keras``, or a name under WS/models/);
    its ``threshold.json`` (from ``evaluate``) gives the label's threshold unless ``threshold`` is
    set. ``inputs``: catalog files read and column-mapped as ``ingest`` does (``columns``,
    ``radius_column``, ``format``, ``hdu``, ``id_kind``); none: the workspace's own catalog. Pixels
    come from a cube fetched with the ``[fetch]`` settings (``fetch``), or with ``images`` from a
    column of local image paths (JPEG/PNG of any size; relative paths are relative to the catalog
    file), read in parts of ``part_rows`` rows. ``batch_size``: images per prediction (None: 1024
    on a GPU, 256 on a CPU). ``tta``: average the 8 flips/rotations. ``restart``: discard earlier
    scores (needed to score with another model, threshold or catalog).
    """

    SECTION: ClassVar[str] = "score"  # its table in the TOML config
    INTERNAL: ClassVar[tuple[str, ...]] = ("fetch",)  # built from the [fetch] table

    workspace: Workspace
    model: str
    inputs: tuple[str, ...] = ()
    columns: Mapping[str, str] = field(default_factory=dict)
    radius_column: str = "PETROTH90"
    format: Literal["auto", "fits", "parquet", "csv"] = "auto"
    hdu: int | None = None
    id_kind: IdKind = "auto"
    images: str | None = None
    threshold: float | None = None
    batch_size: int | None = None
    tta: bool = False
    part_rows: int = 1024
    restart: bool = False
    fetch: FetchArgs | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "workspace", validate.workspace(self.workspace))
        object.__setattr__(self, "inputs", tuple(str(p) for p in self.inputs))
        object.__setattr__(self, "columns", dict(self.columns))
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError("score.model: give the model directory train wrote, e.g. --model ws/models/paper")
        if self.images is not None and not self.inputs:
            raise ConfigError("score --images COLUMN needs the catalog that holds the column (agnsurvey score CATALOG)")
        if self.threshold is not None and not (isinstance(self.threshold, int | float) and 0 < self.threshold < 1):
            raise ConfigError(f"score.threshold must be in (0, 1) (got {self.threshold!r})")
        validate.positive("score.batch_size", self.batch_size, optional=True)
        validate.positive("score.part_rows", self.part_rows)
        for key in self.columns:
            if key not in CANONICAL_COLUMNS:
                raise ConfigError(f"score.columns: unknown canonical column {key!r}; use one of "
                                  f"{', '.join(CANONICAL_COLUMNS)}")  # fmt: skip
        validate.one_of("score.id_kind", self.id_kind, ID_KINDS)
