"""The three pixel sources behind one interface: galaxies (RA, Dec, pixscale) in, one
:class:`~pipeline.images.outcome.Outcome` per galaxy out, pixels as the cube stores them.

- :class:`ViewerSource`, JPEG: the sky viewer's ``cutout.jpg`` (``--pixels rgb``);
- :class:`ViewerSource`, FITS: the same service's ``cutout.fits`` with ``bands=`` (``--pixels flux``),
  with the same politeness, retries and give-up rules (:mod:`pipeline.images.client`);
- :class:`BrickSource`: the survey's own coadd bricks under a root (``--bricks ROOT``), cut locally
  (:mod:`pipeline.images.bricks`), flux or the survey's g,r,z colour mapping.

Each cuts the field the viewer would show: ``size`` pixels of ``pixscale`` arcsec, stored as
``image_size`` pixels (flux conserved for flux pixels).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from pipeline.errors import FetchError
from pipeline.images.client import ClientSettings, ClientStats, fetch_many, probe, run_async
from pipeline.images.outcome import Outcome
from pipeline.images.requests import cutout_url, fits_endpoint

if TYPE_CHECKING:
    from pipeline.images.args import FetchArgs
    from pipeline.images.bricks import BrickSet


@dataclass(frozen=True)
class ViewerSource:
    """The sky viewer (real or offline): JPEG for rgb pixels, FITS for flux."""

    settings: ClientSettings

    @property
    def endpoint(self) -> str:
        url = self.settings.cutout_url
        if self.settings.pixels == "flux":
            return fits_endpoint(url)
        if url.endswith("/cutout.fits"):
            raise FetchError(
                f"the cutout URL {url!r} is the viewer's FITS endpoint: for rgb pixels give …/viewer/cutout.jpg, or "
                "fetch flux with --pixels flux"
            )
        return url

    def urls(self, ra: np.ndarray, dec: np.ndarray, pixscale: np.ndarray) -> list[str]:
        s = self.settings
        bands = s.bands if s.pixels == "flux" else None
        endpoint = self.endpoint
        return [cutout_url(endpoint, r, d, s.size, float(p), s.layer, bands)
                for r, d, p in zip(ra, dec, pixscale, strict=True)]  # fmt: skip

    def cut(self, ra: np.ndarray, dec: np.ndarray, pixscale: np.ndarray, seed: int = 0
            ) -> tuple[list[Outcome], ClientStats]:  # fmt: skip
        return run_async(fetch_many(self.urls(ra, dec, pixscale), self.settings, seed=seed))

    def check(self) -> None:
        """FetchError unless the service answers (before a cube is made)."""
        run_async(probe(self.endpoint, self.settings.layer))


@dataclass(frozen=True)
class BrickSource:
    """The survey's coadd bricks under ``root`` (a path or fsspec URL)."""

    root: str
    pixels: str = "rgb"
    bands: str = "grz"
    with_invvar: bool = False
    size: int = 250
    image_size: int = 128

    def cut(self, ra: np.ndarray, dec: np.ndarray, pixscale: np.ndarray, seed: int = 0
            ) -> tuple[list[Outcome], ClientStats]:  # fmt: skip
        from pipeline.images.bricks import cut_cutouts

        field = np.asarray(pixscale, dtype=np.float64) * self.size  # arcsec on a side, as the viewer's
        outcomes = cut_cutouts(_open(self.root), np.asarray(ra), np.asarray(dec), field, self.image_size,
                               self.bands, self.with_invvar, self.pixels)  # fmt: skip
        return outcomes, ClientStats()

    def check(self) -> None:
        """FetchError unless the root holds a bricks table and the bands asked for."""
        from pipeline.images.bricks import check_bands

        kinds = ("image", "invvar") if self.with_invvar else ("image",)
        check_bands(_open(self.root), self.bands, kinds)


PixelSource = ViewerSource | BrickSource


@lru_cache(maxsize=4)
def _open(root: str) -> BrickSet:
    """The bricks table of ``root``, read once per process (a worker keeps it for every shard)."""
    from pipeline.images.bricks import open_bricks

    return open_bricks(root)


def pixel_source(args: FetchArgs, settings: ClientSettings) -> PixelSource:
    """The source ``args`` ask for: the bricks when ``--bricks`` is given, else the viewer."""
    if args.bricks is not None:
        return BrickSource(args.bricks, args.pixels, args.bands, args.with_invvar, args.size, args.image_size)
    return ViewerSource(settings)
