"""The images phase's arguments: ``[fetch]``, validated when built."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

from pipeline import validate
from pipeline.errors import ConfigError
from storage.workspace import Workspace

FetchRows = Literal["auto", "labelled", "all"]
FETCH_ROWS: tuple[str, ...] = get_args(FetchRows)
Pixels = Literal["rgb", "flux"]
PIXELS: tuple[str, ...] = get_args(Pixels)
KNOWN_BANDS = "grz"  # the Legacy Surveys' optical coadd bands


@dataclass(frozen=True)
class FetchArgs:
    """Labelled galaxies → ``WS/cube.zarr``: one cutout each, validated, resized, stored.

    ``cutout_url``: the viewer's cutout endpoint (real: https://www.legacysurvey.org/viewer/cutout.jpg;
    offline: http://127.0.0.1:PORT/viewer/cutout.jpg). ``size``: pixels requested; ``radius_scale``:
    pixscale = radius × radius_scale × 2 / size (arcsec/pixel), clipped to ``pixscale_bounds``;
    ``image_size``: pixels stored. ``concurrency`` requests in flight and ``rate`` requests/s are
    totals over all tasks (the service is shared: be polite). ``deadline_s`` bounds one image's
    retries; a service that asks (Retry-After) for a longer wait ends the run. ``give_up_window``
    and ``give_up_fraction``: the run also ends when at least that fraction of the last that many
    answers were failures (the rows not done stay pending for a re-run). ``rows``: which catalog
    rows to request: ``labelled`` (those in ``WS/labels/``), ``all``, or ``auto`` (labelled when
    labels exist, else all); the others stay pending. ``restart`` discards an existing cube.

    Pixels: ``pixels`` ``rgb`` stores uint8 display colour (the viewer's JPEG, or the survey's g,r,z
    mapping of brick flux); ``flux`` stores float32 nanomaggies per output pixel for each of
    ``bands`` (from the viewer's ``cutout.fits``, or the bricks), with ``with_invvar`` its inverse
    variance beside it (bricks only). ``bricks``: cut the cutouts from the survey's own coadd bricks
    under this root (a path or fsspec URL laid out as a Legacy Surveys release) instead of asking
    the viewer.
    """

    SECTION: ClassVar[str] = "fetch"  # its table in the TOML config

    workspace: Workspace
    cutout_url: str
    layer: str = "ls-dr10"
    size: int = 250
    image_size: int = 128
    radius_scale: float = 1.5
    pixscale_bounds: tuple[float, float] = (0.01, 20.0)
    concurrency: int = 32
    rate: float = 20.0
    retries: int = 5
    timeout_s: float = 30.0
    deadline_s: float = 300.0
    shard_images: int = 1024
    inner_images: int = 8
    give_up_window: int = 50
    give_up_fraction: float = 0.9
    rows: FetchRows = "auto"
    pixels: Pixels = "rgb"
    bands: str = "grz"
    with_invvar: bool = False
    bricks: str | None = None
    restart: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "workspace", validate.workspace(self.workspace))
        object.__setattr__(self, "pixscale_bounds", tuple(float(b) for b in self.pixscale_bounds))
        validate.one_of("fetch.rows", self.rows, FETCH_ROWS)
        validate.one_of("fetch.pixels", self.pixels, PIXELS)
        _check_bands(self)
        if self.bricks is not None:
            object.__setattr__(self, "bricks", str(self.bricks))
        for key in ("size", "image_size", "concurrency", "shard_images", "inner_images", "give_up_window"):
            validate.positive(f"fetch.{key}", getattr(self, key))
        if self.size > 3000:
            raise ConfigError(f"fetch.size must be <= 3000 pixels, the service's cap (got {self.size})")
        shard_bytes = self.shard_images * self.image_size**2 * self.channels * self.bytes_per_value
        if shard_bytes > MAX_SHARD_BYTES:
            raise ConfigError(
                f"a cube shard of {self.shard_images} images of {self.image_size}x{self.image_size}x{self.channels} "
                f"{'float32' if self.pixels == 'flux' else 'uint8'} would take "
                f"{shard_bytes / 2**30:.1f} GiB of memory per fetch task (limit {MAX_SHARD_BYTES / 2**30:.0f} GiB); "
                "lower --image-size or fetch.shard_images"
            )
        if not 0 < self.give_up_fraction <= 1:
            raise ConfigError(f"fetch.give_up_fraction must be in (0, 1] (got {self.give_up_fraction})")
        if self.retries < 0:
            raise ConfigError(f"fetch.retries must be >= 0 (got {self.retries})")
        for key in ("rate", "timeout_s", "deadline_s", "radius_scale"):
            value = getattr(self, key)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"fetch.{key} must be a positive number (got {value!r})")
        low, high = self.pixscale_bounds
        if not 0 < low < high:
            raise ConfigError(
                f"fetch.pixscale_bounds must be [low, high] arcsec/pixel with 0 < low < high (got {low}, {high})"
            )
        if self.shard_images % self.inner_images:
            raise ConfigError(
                f"fetch.shard_images ({self.shard_images}) must be a multiple of "
                f"fetch.inner_images ({self.inner_images})"
            )


    @property
    def channels(self) -> int:
        """Values per stored pixel: 3 (R, G, B) for rgb, one per band for flux."""
        return 3 if self.pixels == "rgb" else len(self.bands)

    @property
    def bytes_per_value(self) -> int:
        """Bytes per stored value, the inverse variance included."""
        return 1 if self.pixels == "rgb" else 4 * (1 + self.with_invvar)

    @property
    def source(self) -> str:
        """Where the pixels come from: ``bricks``, ``viewer-fits`` (flux) or ``viewer-jpeg`` (rgb)."""
        if self.bricks is not None:
            return "bricks"
        return "viewer-fits" if self.pixels == "flux" else "viewer-jpeg"


def _check_bands(args: FetchArgs) -> None:
    bands = args.bands
    if not isinstance(bands, str) or not bands or set(bands) - set(KNOWN_BANDS) or len(set(bands)) != len(bands):
        raise ConfigError(
            f"fetch.bands must be distinct letters of {KNOWN_BANDS!r}, e.g. --bands grz (got {bands!r})"
        )
    if args.pixels == "rgb" and set(bands) != set(KNOWN_BANDS):
        raise ConfigError(
            f"--pixels rgb is the survey's g,r,z colour mapping and needs --bands grz (got {bands!r}); "
            "use --pixels flux for other bands"
        )
    if args.with_invvar and args.pixels != "flux":
        raise ConfigError("--with-invvar stores the inverse variance of flux pixels; add --pixels flux")
    if args.with_invvar and args.bricks is None:
        raise ConfigError(
            "--with-invvar needs --bricks ROOT: the viewer's cutouts carry no inverse variance; "
            "cut from the survey's coadd bricks, or drop --with-invvar"
        )


MAX_SHARD_BYTES = 1 << 30  # one fetch task holds a whole cube shard in memory
