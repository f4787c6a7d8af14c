"""Which galaxies a model trains and is measured on: ok cutouts with a label, by split.

Rows (:func:`select_rows`): cube status ``ok`` and label 0 (star-forming) or 1 (AGN); composites
(label -1) are left out, or counted as AGN with ``composites="agn"``. The split comes from the
labels (a hash of ``objid``, :mod:`pipeline.catalog.splits`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.catalog.splits import SPLITS
from pipeline.errors import WorkspaceError
from storage.cube import STATUS_CODES, open_cube
from storage.tables import read_labels
from storage.workspace import Workspace


@dataclass(frozen=True)
class Rows:
    """The galaxies of one split: cube rows (ascending), labels (0 SF, 1 AGN) and ids."""

    cube_row: np.ndarray
    label: np.ndarray
    objid: np.ndarray

    def __len__(self) -> int:
        return len(self.cube_row)

    def counts(self) -> tuple[int, int]:
        """(star-forming, AGN) rows."""
        n_agn = int(self.label.sum())
        return len(self) - n_agn, n_agn


def select_rows(ws: Workspace, composites: str = "exclude") -> dict[str, Rows]:
    """Per split, the labelled galaxies whose cutout is ``ok``. Checks that the cube belongs to the
    labels' catalog (same ids at the same rows)."""
    if not ws.cube.exists():
        raise WorkspaceError(f"{ws.root} has no image cube; run `agnsurvey fetch --workspace {ws.root}` first")
    labels = read_labels(ws, columns=["objid", "label", "split"])
    cube = open_cube(ws.cube, mode="r")
    rows = labels["cube_row"].to_numpy()
    if rows.size and (rows.max() >= cube.layout.n or not np.array_equal(cube.objids()[rows], labels["objid"])):
        raise WorkspaceError(
            f"{ws.cube} holds another catalog's cutouts than {ws.labels}; run `agnsurvey fetch --workspace "
            f"{ws.root} --restart`"
        )
    ok = cube.status_codes()[rows] == STATUS_CODES["ok"]
    label = labels["label"].to_numpy().astype(np.int64)
    if composites == "agn":
        label = np.where(label == -1, 1, label)
    keep = ok & (label >= 0)
    out = {}
    for name in SPLITS:
        chosen = keep & (labels["split"].astype(str).to_numpy() == name)
        out[name] = Rows(rows[chosen], label[chosen].astype(np.float32), labels["objid"].to_numpy()[chosen])
    return out


def class_weights(rows: Rows, policy: str) -> tuple[float, float]:
    """Weights of (SF, AGN): 1 each, or ``balanced``: n / (2 n_class), so both classes weigh the same."""
    if policy != "balanced":
        return 1.0, 1.0
    n_sf, n_agn = rows.counts()
    n = n_sf + n_agn
    return n / (2 * max(n_sf, 1)), n / (2 * max(n_agn, 1))
