"""Readers of the workspace's tables, for the stages that read them and for notebooks.

One place per table, next to storage (no stage imports another stage's module to read its
output): the catalog (``WS/catalog/``, from ``ingest``), the labels (``WS/labels/``, ``label``),
the cube's status (``WS/cube.zarr``, ``fetch``) and the scores (``WS/scores/``, ``score``). Each
returns one pandas DataFrame, for small catalogs, notebooks and tests; ``lsdb.open_catalog(path)``
reads the HATS tables lazily at any size. A missing or damaged table is a
:class:`~storage.errors.WorkspaceError` that names the command that writes it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from storage.cube import STATUS_NAMES, open_cube
from storage.errors import WorkspaceError
from storage.hats_catalog import DATASET, check_table, data_files, read_table
from storage.workspace import Workspace, as_workspace


def read_catalog(workspace: Workspace | str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """The ingested catalog (or ``columns`` of it) as one pandas DataFrame in cube_row order (small
    catalogs, notebooks, tests; ``lsdb.open_catalog(WS/catalog)`` for large ones)."""
    ws = as_workspace(workspace)
    check_table(ws.catalog, f"`agnsurvey ingest CATALOG --workspace {ws.root}`")
    wanted = None if columns is None else list(dict.fromkeys([*columns, "cube_row"]))
    frame = read_table(ws.catalog, wanted).sort_values("cube_row").reset_index(drop=True)
    if "source_id" in frame:
        frame["source_id"] = frame["source_id"].astype("string")  # text ids: pandas' nullable strings
    return frame if columns is None else frame[list(columns)]


def read_positions(ws: Workspace, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """cube_row, objid, ra, dec, radius_arcsec (and ``extra`` columns) of every catalog galaxy, in
    cube order (checked: ``cube_row`` is 0..N-1, one row per cube row)."""
    if not ws.catalog.exists() or not any(ws.catalog.iterdir()):
        raise WorkspaceError(f"{ws.root} has no ingested catalog; run `agnsurvey ingest CATALOG --workspace {ws.root}`")
    catalog = read_catalog(ws, columns=["cube_row", "objid", "ra", "dec", "radius_arcsec", *extra])
    if not np.array_equal(catalog["cube_row"].to_numpy(), np.arange(len(catalog))):
        raise WorkspaceError(f"{ws.catalog}: cube_row is not 0..N-1; re-run `agnsurvey ingest`")
    return catalog


def read_labels(workspace: Workspace | str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """All labels (or ``columns`` of them) as one pandas DataFrame, in cube_row order."""
    ws = as_workspace(workspace)
    if not ws.labels.exists():
        raise WorkspaceError(f"{ws.root} has no labels; run `agnsurvey label --workspace {ws.root}` first")
    check_table(ws.labels, f"`agnsurvey ingest` and `agnsurvey label --workspace {ws.root}`")
    wanted = None if columns is None else list(dict.fromkeys([*columns, "cube_row"]))
    return read_table(ws.labels, wanted).sort_values("cube_row").reset_index(drop=True)


def read_cube_status(workspace: Workspace | str | Path) -> pd.Series:
    """Status name of every cube row (index: cube_row)."""
    cube = open_cube(as_workspace(workspace).cube, mode="r")
    return pd.Series([STATUS_NAMES[int(c)] for c in cube.status_codes()], name="status")


def score_files(scores: Path) -> list[Path]:
    """Every score part under ``scores`` (HATS data files, or ``part-*.parquet`` of images)."""
    if not scores.exists():
        return []
    return sorted([*scores.glob("part-*.parquet"), *(data_files(scores) if (scores / DATASET).is_dir() else [])])


def read_scores(workspace: Workspace | str | Path) -> pd.DataFrame:
    """Every scored row (small catalogs, notebooks, tests; ``lsdb.open_catalog(WS/scores)`` for
    large ones): in sky order from a cube, in catalog order from ``--images``."""
    scores = as_workspace(workspace).scores
    files = score_files(scores)
    if not files:
        raise WorkspaceError(f"{scores} holds no scores; run `agnsurvey score`")
    frame = pd.concat([pd.read_parquet(p) for p in files], ignore_index=True)
    if "_healpix_29" in frame:
        frame = frame.sort_values("_healpix_29", kind="stable").reset_index(drop=True)
    return frame
