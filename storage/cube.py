"""The image cube ``WS/cube.zarr`` (Zarr v3): row i holds the catalog galaxy with ``cube_row`` i.

The cube belongs to the ingested catalog, not to one labelling: images depend only on position and
radius, so relabelling (another scheme, an S/N cut) never invalidates a cutout.

Arrays:

- ``images`` (N, S, S, 3) uint8: sharded, one storage object per ``shard_images`` rows, with inner
  chunks of ``inner_images`` images, so a single image is read by decompressing a few, not a shard;
- ``status`` (N,) int8: one object per shard (codes in the ``status_codes`` attribute);
- ``objid`` (N,) int64 and ``pixscale`` (N,) float32 (arcsec/pixel requested): written at creation.

Writers own whole shards: the task that fetches shard k writes ``images`` shard k, then ``status``
chunk k, each object in one atomic write (the local store writes a temporary file and renames
it). Pixels land before their status, so ``ok`` always means the pixels are there, and a killed
writer leaves the shard's previous objects intact. A write never makes a row worse: a final status
(ok, no_coverage, bad_radius) is never replaced by failed or pending, nor failed by pending. A new
cube is built in a temporary directory and renamed into place, so none is ever half made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from storage.workspace import atomic_directory

STATUS_CODES: dict[str, int] = {"pending": 0, "ok": 1, "no_coverage": 2, "bad_radius": 3, "failed": 4}
STATUS_NAMES: dict[int, str] = {code: name for name, code in STATUS_CODES.items()}
FINAL_STATUSES: tuple[str, ...] = ("ok", "no_coverage", "bad_radius")  # never requested again
FINAL_CODES = np.array([STATUS_CODES[s] for s in FINAL_STATUSES], dtype=np.int8)


def status_rank(status: np.ndarray) -> np.ndarray:
    """How finished a row is: 0 pending, 1 failed, 2 final (ok, no_coverage, bad_radius)."""
    status = np.asarray(status)
    return np.where(np.isin(status, FINAL_CODES), 2, (status == STATUS_CODES["failed"]).astype(np.int8))


@dataclass(frozen=True)
class CubeLayout:
    """Shape of a cube: N rows of S×S×3 images, stored in shards of ``shard_images`` rows."""

    n: int
    image_size: int
    shard_images: int = 1024
    inner_images: int = 8

    @property
    def n_shards(self) -> int:
        return -(-self.n // self.shard_images)

    def shard_rows(self, shard: int) -> range:
        """Cube rows stored in shard ``shard``."""
        return range(shard * self.shard_images, min((shard + 1) * self.shard_images, self.n))


@dataclass
class Cube:
    """An open cube: its arrays and layout."""

    group: zarr.Group
    layout: CubeLayout

    @property
    def images(self) -> zarr.Array:
        return self.group["images"]

    @property
    def status(self) -> zarr.Array:
        return self.group["status"]

    @property
    def objid(self) -> zarr.Array:
        return self.group["objid"]

    @property
    def pixscale(self) -> zarr.Array:
        return self.group["pixscale"]

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    # --- reading: nothing outside this module indexes the Zarr arrays -------------------------------

    def status_codes(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The status codes of rows ``start`` to ``stop`` (default: all; int8, names in
        :data:`STATUS_NAMES`)."""
        return self.status[start:stop]

    def objids(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The ``objid`` of rows ``start`` to ``stop`` (default: all), as written at creation."""
        return self.objid[start:stop]

    def pixscales(self) -> np.ndarray:
        """The pixscale requested for every row, arcsec/pixel (NaN where the radius was unusable)."""
        return self.pixscale[:]

    def ok_rows(self) -> np.ndarray:
        """Rows whose image is there (status ``ok``), ascending."""
        return np.flatnonzero(self.status_codes() == STATUS_CODES["ok"])

    def read_block(self, start: int, stop: int) -> np.ndarray:
        """Images of rows ``start`` to ``stop`` (exclusive), (n, S, S, 3) uint8: one contiguous read,
        the fast way to read a cube (a few inner chunks decompressed per call)."""
        return self.images[start:stop]

    def read_rows(self, rows: np.ndarray, max_span: int | None = None) -> np.ndarray:
        """Images of any ``rows`` (in the order given), read as contiguous spans of at most
        ``max_span`` rows (default: one shard) that each cover several requested rows."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.layout.image_size, self.layout.image_size, 3), dtype=np.uint8)
        for positions, start, stop in spans(rows, max_span or self.layout.shard_images):
            out[positions] = self.read_block(start, stop)[rows[positions] - start]
        return out

    def write_shard(self, shard: int, images: np.ndarray, status: np.ndarray) -> np.ndarray:
        """Write one whole shard, pixels first, then their status; returns the status written.

        Rows the store already holds in a more finished state (another run got there first) keep
        their stored status and pixels: an ``ok`` image is never overwritten by a failure.
        """
        rows = self.layout.shard_rows(shard)
        stored = self.status[rows.start : rows.stop]
        keep = status_rank(stored) > status_rank(status)
        if keep.any():
            status, images = status.copy(), images.copy()
            status[keep] = stored[keep]
            if (stored[keep] == STATUS_CODES["ok"]).any():
                images[keep] = self.images[rows.start : rows.stop][keep]
        self.images[rows.start : rows.stop] = images
        self.status[rows.start : rows.stop] = status
        return status


def spans(rows: np.ndarray, max_span: int) -> list[tuple[np.ndarray, int, int]]:
    """Group ``rows`` into contiguous read spans: (positions in ``rows``, start, stop), each span at
    most ``max_span`` rows long, covering the requested rows in ascending order."""
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    out, i = [], 0
    while i < len(ordered):
        start = int(ordered[i])
        j = int(np.searchsorted(ordered, start + max_span, side="left"))
        out.append((order[i:j], start, int(ordered[j - 1]) + 1))
        i = j
    return out


def create_cube(
    path: Path,
    layout: CubeLayout,
    objid: np.ndarray,
    pixscale: np.ndarray,
    status: np.ndarray,
    attrs: dict[str, Any],
) -> Cube:
    """Create (replace) a cube with its per-row metadata and initial status: built beside ``path``
    and renamed into place, so a failure (disk full, out of memory, Ctrl-C) leaves no half-made cube."""
    with atomic_directory(path) as tmp:
        _build(tmp, layout, objid, pixscale, status, attrs)
    return open_cube(path)


def _build(path: Path, layout: CubeLayout, objid: np.ndarray, pixscale: np.ndarray, status: np.ndarray,
           attrs: dict[str, Any]) -> None:  # fmt: skip
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    n, s, k = layout.n, layout.image_size, layout.shard_images
    group.create_array(
        "images",
        shape=(n, s, s, 3),
        dtype="uint8",
        chunks=(layout.inner_images, s, s, 3),
        shards=(k, s, s, 3),  # may exceed a small cube: Zarr clips the grid to the shape
        fill_value=0,
        dimension_names=("row", "y", "x", "band"),
    )
    for name, dtype, values in (
        ("status", "int8", status),
        ("objid", "int64", objid),
        ("pixscale", "float32", pixscale),
    ):
        array = group.create_array(name, shape=(n,), dtype=dtype, chunks=(k,), fill_value=0, dimension_names=("row",))
        array[:] = np.asarray(values, dtype=dtype)
    group.attrs.update(
        {
            **attrs,
            "status_codes": STATUS_CODES,
            "final_statuses": list(FINAL_STATUSES),
            "image_size": s,
            "shard_images": k,
            "inner_images": layout.inner_images,
            "row_meaning": "row i is the catalog galaxy with cube_row i (WS/catalog, WS/labels)",
        }
    )


def open_cube(path: Path, mode: str = "r+") -> Cube:
    """Open an existing cube."""
    group = zarr.open_group(str(path), mode=mode, zarr_format=3)
    images = group["images"]
    layout = CubeLayout(
        n=images.shape[0],
        image_size=images.shape[1],
        shard_images=int(group.attrs["shard_images"]),
        inner_images=int(group.attrs["inner_images"]),
    )
    return Cube(group, layout)


def status_counts(status: np.ndarray) -> dict[str, int]:
    """Rows per status name."""
    codes, counts = np.unique(np.asarray(status), return_counts=True)
    found = {STATUS_NAMES.get(int(c), f"code {int(c)}"): int(n) for c, n in zip(codes, counts, strict=True)}
    return {name: found.get(name, 0) for name in STATUS_CODES} | found
