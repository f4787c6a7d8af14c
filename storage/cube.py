"""The image cube ``WS/cube.zarr`` (Zarr v3): row i holds the catalog galaxy with ``cube_row`` i.

The cube belongs to the ingested catalog, not to one labelling: images depend only on position and
radius, so relabelling (another scheme, an S/N cut) never invalidates a cutout.

Arrays:

- ``images`` (N, S, S, C): sharded, one storage object per ``shard_images`` rows, with inner
  chunks of ``inner_images`` images, so a single image is read by decompressing a few, not a shard.
  The ``pixels`` attribute says what a pixel is: ``rgb``, uint8 display counts (C = 3: R, G, B);
  or ``flux``, float32 nanomaggies per output pixel, one channel per band of the ``bands``
  attribute. Every row is stored as images are displayed: row 0 north, column 0 east;
- ``invvar`` (N, S, S, C) float32, 1/nanomaggies² per output pixel (flux cubes made with it only);
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
OLD_CUBE_ATTRS: dict[str, Any] = {"pixels": "rgb", "bands": "grz", "source": "viewer-jpeg", "with_invvar": False}
"""What a cube made before pixel kinds existed holds (viewer JPEGs): the defaults of its missing attributes."""


def status_rank(status: np.ndarray) -> np.ndarray:
    """How finished a row is: 0 pending, 1 failed, 2 final (ok, no_coverage, bad_radius)."""
    status = np.asarray(status)
    return np.where(np.isin(status, FINAL_CODES), 2, (status == STATUS_CODES["failed"]).astype(np.int8))


@dataclass(frozen=True)
class CubeLayout:
    """Shape of a cube: N rows of S×S×C images (uint8, or float32 for flux), stored in shards of
    ``shard_images`` rows; ``invvar``: an inverse-variance array beside the images."""

    n: int
    image_size: int
    shard_images: int = 1024
    inner_images: int = 8
    channels: int = 3
    dtype: str = "uint8"
    invvar: bool = False

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, self.channels)

    def blank(self, n: int) -> np.ndarray:
        """n empty images of this cube's shape and type."""
        return np.zeros((n, *self.image_shape), dtype=self.dtype)

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

    @property
    def pixels(self) -> str:
        """``rgb`` or ``flux`` (cubes made before flux existed are rgb)."""
        return str(self.group.attrs.get("pixels", OLD_CUBE_ATTRS["pixels"]))

    @property
    def bands(self) -> str:
        """The bands of a flux cube's channels, in order; ``grz`` for rgb (R = z, G = r, B = g)."""
        return str(self.group.attrs.get("bands", OLD_CUBE_ATTRS["bands"]))

    def read_block(self, start: int, stop: int) -> np.ndarray:
        """Images of rows ``start`` to ``stop`` (exclusive), (n, S, S, C): one contiguous read,
        the fast way to read a cube (a few inner chunks decompressed per call)."""
        return self.images[start:stop]

    def read_invvar(self, start: int, stop: int) -> np.ndarray:
        """Inverse variance of rows ``start`` to ``stop`` (a flux cube made with it)."""
        return self.group["invvar"][start:stop]

    def read_rows(self, rows: np.ndarray, max_span: int | None = None) -> np.ndarray:
        """Images of any ``rows`` (in the order given), read as contiguous spans of at most
        ``max_span`` rows (default: one shard) that each cover several requested rows."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.layout.image_shape), dtype=self.layout.dtype)
        for positions, start, stop in spans(rows, max_span or self.layout.shard_images):
            out[positions] = self.read_block(start, stop)[rows[positions] - start]
        return out

    def write_shard(self, shard: int, images: np.ndarray, status: np.ndarray,
                    invvar: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
        """Write one whole shard, pixels (and inverse variance) first, then their status; returns the
        status written.

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
                if invvar is not None:
                    invvar = invvar.copy()
                    invvar[keep] = self.read_invvar(rows.start, rows.stop)[keep]
        self.images[rows.start : rows.stop] = images
        if self.layout.invvar:
            self.group["invvar"][rows.start : rows.stop] = invvar if invvar is not None else 0.0
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
    n, s, k, c = layout.n, layout.image_size, layout.shard_images, layout.channels
    for name, dtype in (("images", layout.dtype), ("invvar", "float32")):
        if name == "invvar" and not layout.invvar:
            continue
        group.create_array(
            name,
            shape=(n, s, s, c),
            dtype=dtype,
            chunks=(layout.inner_images, s, s, c),
            shards=(k, s, s, c),  # may exceed a small cube: Zarr clips the grid to the shape
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
        channels=images.shape[3],
        dtype=str(images.dtype),
        invvar="invvar" in group,
    )
    return Cube(group, layout)


def status_counts(status: np.ndarray) -> dict[str, int]:
    """Rows per status name."""
    codes, counts = np.unique(np.asarray(status), return_counts=True)
    found = {STATUS_NAMES.get(int(c), f"code {int(c)}"): int(n) for c, n in zip(codes, counts, strict=True)}
    return {name: found.get(name, 0) for name in STATUS_CODES} | found
