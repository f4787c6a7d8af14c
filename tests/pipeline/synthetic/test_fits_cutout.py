"""The offline server's FITS cutouts (``/viewer/cutout.fits``): a real aiohttp server and client on 127.0.0.1.

Expected arrays come from the flux renderer called directly, positions from astropy's WCS of the
served header (not from the server's code), orientation from an asymmetric field (a galaxy with a
neighbour to its north-east).
"""

from __future__ import annotations

import asyncio
import io
import math

import aiohttp
import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from pipeline.synthetic.footprint import in_footprint
from pipeline.synthetic.render import Galaxy, render_flux
from pipeline.synthetic.server import CutoutServer
from pipeline.synthetic.server_config import Faults, ServerConfig
from pipeline.synthetic.skyindex import SkyIndex

RA, DEC = 180.0, 30.0  # inside the footprint
EAST, NORTH = 12.0, 9.0  # arcsec: the neighbour's offset from the target
TARGET = Galaxy(objid=11, ra=RA, dec=DEC, radius_arcsec=5.0, z=0.03, agn_weight=0.0)
NEIGHBOUR = Galaxy(
    objid=12,
    ra=RA + EAST / 3600 / math.cos(math.radians(DEC)),
    dec=DEC + NORTH / 3600,
    radius_arcsec=3.0,
    z=0.05,
    agn_weight=1.0,
)


def run(index: SkyIndex, *queries: dict, faults: Faults | None = None, path: str = "/viewer/cutout.fits"):
    """Start a server on 127.0.0.1, ask ``queries`` in turn, stop it: [(status, headers, body)]."""

    async def main():
        server = CutoutServer(ServerConfig(faults=faults or Faults()), index=index)
        async with server, aiohttp.ClientSession() as session:
            out = []
            for q in queries:
                url = server.base_url + path
                async with session.get(url, params={k: str(v) for k, v in q.items()}) as resp:
                    out.append((resp.status, dict(resp.headers), await resp.read()))
            return out

    return asyncio.run(main())


def hdu_of(body: bytes) -> fits.PrimaryHDU:
    with fits.open(io.BytesIO(body)) as hdul:
        hdul[0].data  # noqa: B018 (load before closing)
        return hdul[0].copy()


def test_fits_is_the_flux_rendering_flipped_to_fits_rows():
    size, pixscale = 120, 0.262
    ((status, headers, body),) = run(index_fixture(), {"ra": RA, "dec": DEC, "size": size, "pixscale": pixscale})
    assert status == 200 and headers["Content-Type"].startswith("application/fits")
    hdu = hdu_of(body)
    assert hdu.data.shape == (3, size, size) and hdu.data.dtype.kind == "f" and hdu.data.dtype.itemsize == 4
    display = render_flux(TARGET, [NEIGHBOUR], RA, DEC, size, pixscale, "grz")  # row 0 north
    assert np.array_equal(np.flip(hdu.data, axis=1).transpose(1, 2, 0), display)
    h = hdu.header
    assert (h["CTYPE1"], h["CTYPE2"]) == ("RA---TAN", "DEC--TAN")
    assert (h["CRVAL1"], h["CRVAL2"], h["CRPIX1"], h["CRPIX2"]) == (RA, DEC, 60.5, 60.5)
    assert h["CD1_1"] == pytest.approx(-pixscale / 3600) and h["CD2_2"] == pytest.approx(pixscale / 3600)
    assert h["BANDS"] == "grz" and [h["BAND0"], h["BAND1"], h["BAND2"]] == ["g", "r", "z"]


def index_fixture() -> SkyIndex:
    return SkyIndex.from_frame(
        pd.DataFrame(
            {
                "objid": [11, 12],
                "ra": [TARGET.ra, NEIGHBOUR.ra],
                "dec": [TARGET.dec, NEIGHBOUR.dec],
                "radius_arcsec": [5.0, 3.0],
                "z": [0.03, 0.05],
            }
        ),  # fmt: skip
        sim_class=np.array([0, 2]),
    )


def test_the_neighbour_lies_where_the_wcs_says_north_east():
    size, pixscale = 150, 0.2
    ((_, _, body),) = run(index_fixture(), {"ra": RA, "dec": DEC, "size": size, "pixscale": pixscale, "bands": "r"})
    hdu = hdu_of(body)
    r = hdu.data[0]
    x, y = (float(v) for v in WCS(hdu.header, naxis=2).world_to_pixel_values(NEIGHBOUR.ra, NEIGHBOUR.dec))  # 0-based
    c = (size - 1) / 2
    assert x == pytest.approx(c - EAST / pixscale, abs=0.3)  # east is towards column 0
    assert y == pytest.approx(c + NORTH / pixscale, abs=0.3)  # north is towards the last FITS row
    sigma = 0.0066 * (pixscale / 0.262) ** 2
    peak = r[int(round(y)) - 2 : int(round(y)) + 3, int(round(x)) - 2 : int(round(x)) + 3].mean()
    mirrored = r[int(round(2 * c - y)) - 2 : int(round(2 * c - y)) + 3, int(round(x)) - 2 : int(round(x)) + 3].mean()
    assert peak > 10 * sigma and peak > 5 * abs(mirrored)


def test_bands_in_the_order_asked_unknown_bands_refused_and_blank_outside():
    q = {"ra": RA, "dec": DEC, "size": 40, "pixscale": 0.3}
    (grz, zr, bad, worse) = run(index_fixture(), q, {**q, "bands": "zr"}, {**q, "bands": "grx"}, {**q, "bands": "gg"})
    a, b = hdu_of(grz[2]).data, hdu_of(zr[2]).data
    assert b.shape == (2, 40, 40) and np.array_equal(b, a[[2, 1]])
    assert hdu_of(zr[2]).header["BANDS"] == "zr"
    for status, _, body in (bad, worse):
        assert status == 400 and b"band" in body
    assert not in_footprint(30.0, 60.0)
    ((status, headers, body),) = run(index_fixture(), {"ra": 30.0, "dec": 60.0, "size": 24, "bands": "gz"})
    blank = hdu_of(body)
    assert status == 200 and blank.data.shape == (2, 24, 24) and not blank.data.any()
    assert blank.header["CRVAL1"] == 30.0


def test_faults_apply_to_fits_too():
    q = {"ra": RA, "dec": DEC, "size": 64}
    errors = run(index_fixture(), q, q, faults=Faults(error_rate=1.0))
    assert {s for s, _, _ in errors} <= {500, 503}
    throttled = run(index_fixture(), q, q, faults=Faults(throttle_rate=0.01, throttle_burst=1, retry_after_s=3))
    assert [s for s, _, _ in throttled] == [200, 429] and throttled[1][1]["Retry-After"] == "3"
    ((status, _, short),) = run(index_fixture(), q, faults=Faults(truncate_rate=1.0))
    ((_, _, full),) = run(index_fixture(), q)
    assert status == 200 and 0 < len(short) < len(full) and full.startswith(short)
    with pytest.raises(Exception):  # noqa: B017 (astropy raises OSError or a TypeError for a short file)
        fits.open(io.BytesIO(short))[0].data.sum()
