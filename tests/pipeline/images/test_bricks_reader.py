"""Cutouts cut from Legacy Surveys coadd bricks (pipeline.images.bricks), on real mirrors written by
pipeline.synthetic.bricks and on hand-made bricks (noise-free Gaussians at known pixels).

Expected values come from astropy's WCS of the written headers, direct sums of the brick arrays and
the renderer's own field, never from the reader: pixels are selected by their centres (in the
field: astropy's TAN plane of the galaxy; in a brick's unique area: RA1..RA2 × DEC1..DEC2 of the table).
"""

from __future__ import annotations

import asyncio
import gzip
import math
import os
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from pipeline.errors import FetchError
from pipeline.images._tan import Tan
from pipeline.images.bricks import check_bands, cut_cutouts, open_bricks
from pipeline.images.survey_rgb import flux_to_rgb
from pipeline.synthetic.args import BrickArgs
from pipeline.synthetic.bricks import (
    SURVEY_BRICKS,
    BrickSpec,
    brick_header,
    brick_path,
    brick_table,
    read_brick,
    write_brick,
    write_bricks,
)
from pipeline.synthetic.render import SIGMA_NMGY, Galaxy, render_flux

PIX = 0.262
SIGMA = SIGMA_NMGY["r"]
AGN = dict(HAFLUX=10.0, N2FLUX=30.0, HBFLUX=3.0, O3FLUX=10.0)  # BPT AGN: few star-forming knots
# objid: (ra, dec, PETROTH90 arcsec). 11 and its bright north-east neighbour 12; 31 south of the
# Dec 0.125 brick edge; 41 just west of RA 0; 61 inside 3598p000.
CATALOG = {11: (0.08, 0.02, 3.0), 12: (0.08 + 8 / 3600, 0.02 + 8 / 3600, 6.0), 31: (0.06, 0.1240, 4.0),
           41: (359.9995, -0.03, 4.0), 61: (359.85, 0.0, 3.0)}  # fmt: skip
TABLE = brick_table().set_index("BRICKNAME")


@pytest.fixture(scope="module")
def sky(tmp_path_factory) -> Path:
    """Four bricks around RA 0, Dec 0.125 (0001p000, 3598p000, 0001p002, 3598p002), band r with invvar."""
    tmp = tmp_path_factory.mktemp("sky")
    t = Table({"NSAID": list(CATALOG), "RA": [v[0] for v in CATALOG.values()],
               "DEC": [v[1] for v in CATALOG.values()], "Z": [0.03] * len(CATALOG),
               "PETROTH90": [v[2] for v in CATALOG.values()],
               **{k: [v] * len(CATALOG) for k, v in AGN.items()}})  # fmt: skip
    t.write(tmp / "cat.fits")
    root = tmp / "mirror"
    write_bricks(BrickArgs(out=root, catalog=(str(tmp / "cat.fits"),), ra_min=359.9, ra_max=0.1, dec_min=-0.05,
                           dec_max=0.2, bands="r", invvar=True))  # fmt: skip
    return root


def _root_beside(sky: Path, path: Path) -> Path:
    """A root sharing ``sky``'s bricks table."""
    path.mkdir(parents=True)
    os.symlink(sky / SURVEY_BRICKS, path / SURVEY_BRICKS)
    return path


@pytest.fixture(scope="module")
def pole(sky, tmp_path_factory) -> tuple[Path, list[Galaxy]]:
    """The north polar cap brick 1800p900 in g, r, z: a galaxy at Dec 89.95 with a neighbour, one near the pole."""
    root = _root_beside(sky, tmp_path_factory.mktemp("pole") / "root")
    target = Galaxy(objid=71, ra=30.0, dec=89.95, radius_arcsec=3.0, z=0.03, agn_weight=1.0)
    ra_n, dec_n = _offset(target.ra, target.dec, 6.0, 6.0)  # 6" east, 6" north
    near = Galaxy(objid=72, ra=ra_n, dec=dec_n, radius_arcsec=5.0, z=0.03, agn_weight=1.0)
    cap = Galaxy(objid=73, ra=200.0, dec=89.999, radius_arcsec=3.0, z=0.03, agn_weight=1.0)
    row = TABLE.loc["1800p900"]
    write_brick(BrickSpec(str(root), "1800p900", int(row.BRICKID), float(row.RA), float(row.DEC),
                          (target, near, cap), "grz", False))  # fmt: skip
    return root, [target, near, cap]


def _gaussians(shape, centres, sigma=2.0, flux=100.0) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.zeros(shape, np.float32)
    for x, y in centres:
        box = (slice(int(y) - 20, int(y) + 21), slice(int(x) - 20, int(x) + 21))
        r2 = (xx[box] - x) ** 2 + (yy[box] - y) ** 2
        img[box] += (flux / (2 * np.pi * sigma**2) * np.exp(-0.5 * r2 / sigma**2)).astype(np.float32)
    return img


GAUSS_AT = [(1000.3, 2000.7), (1800.0, 1800.0)]  # brick pixels (x, y) of the noise-free Gaussians of `gauss`
SIGMA_GAUSS = 0.01


def _write(path: Path, data: np.ndarray, header: fits.Header) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    hdu = fits.CompImageHDU(data, header=header, compression_type="GZIP_1", tile_shape=(100, 100), quantize_level=0)
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)


@pytest.fixture(scope="module")
def gauss(sky, tmp_path_factory) -> Path:
    """Brick 0001p000 alone, r: noise-free Gaussians (flux 100) at GAUSS_AT, invvar 1/0.01² everywhere."""
    root = _root_beside(sky, tmp_path_factory.mktemp("gauss") / "root")
    row = TABLE.loc["0001p000"]
    header = brick_header("0001p000", row.RA, row.DEC, "r")
    _write(brick_path(root, "0001p000", "image", "r"), _gaussians((3600, 3600), GAUSS_AT), header)
    _write(brick_path(root, "0001p000", "invvar", "r"), np.full((3600, 3600), SIGMA_GAUSS**-2, np.float32), header)
    return root


def _offset(ra: float, dec: float, east: float, north: float) -> tuple[float, float]:
    """(ra, dec) of the point ``east``, ``north`` arcsec from (ra, dec) in its tangent plane (astropy)."""
    w = WCS(naxis=2)
    w.wcs.ctype, w.wcs.crval, w.wcs.crpix = ["RA---TAN", "DEC--TAN"], [ra, dec], [1.0, 1.0]
    w.wcs.cdelt, w.wcs.lonpole = [-1 / 3600, 1 / 3600], 180.0
    r, d = w.pixel_to_world_values(-east, north)
    return float(r), float(d)


def _brick_wcs(root: Path, name: str, band: str = "r") -> tuple[np.ndarray, WCS]:
    data, header = read_brick(root, name, band)
    header.setdefault("LONPOLE", 180.0)  # the reader's convention (astrometry.net's); FITS's default differs at a pole
    return data.astype(np.float64), WCS(header)


def _expected_sum(root: Path, names: list[str], ra: float, dec: float, n: int, pixscale: float) -> float:
    """Σ of the brick pixels whose centres lie in the field and in their brick's unique area (astropy)."""
    field = WCS(naxis=2)
    field.wcs.ctype, field.wcs.crval, field.wcs.crpix = ["RA---TAN", "DEC--TAN"], [ra, dec], [(n + 1) / 2] * 2
    field.wcs.cdelt, field.wcs.lonpole = [-pixscale / 3600, pixscale / 3600], 180.0
    total = 0.0
    for name in names:
        data, w = _brick_wcs(root, name)
        px, py = w.world_to_pixel_values(ra, dec)
        reach = int(n * pixscale / PIX * 0.75) + 3
        x0, y0 = max(int(px) - reach, 0), max(int(py) - reach, 0)
        yy, xx = np.mgrid[y0 : min(int(py) + reach, 3600), x0 : min(int(px) + reach, 3600)]
        r, d = w.pixel_to_world_values(xx, yy)
        fx, fy = field.world_to_pixel_values(r, d)
        b = TABLE.loc[name]
        inside = (np.abs(fx - (n - 1) / 2) < n / 2) & (np.abs(fy - (n - 1) / 2) < n / 2)
        inside &= (d >= b.DEC1) & ((d < b.DEC2) | (b.DEC2 == 90))
        inside &= ((r >= b.RA1) & (r < b.RA2)) | (b.RA2 - b.RA1 == 360)
        total += float(data[yy[inside], xx[inside]].sum())
    return total


def _quadrant_boxes(img: np.ndarray, arcsec: float) -> dict[str, float]:
    """Flux in 7 × 7 boxes ``arcsec`` north/south and east/west of the centre of a 0.262" cutout."""
    h, k = (img.shape[0] - 1) / 2, arcsec / PIX
    boxes = {}
    for name, dy, dx in (("NE", -1, -1), ("NW", -1, 1), ("SE", 1, -1), ("SW", 1, 1)):
        y, x = round(h + dy * k), round(h + dx * k)
        boxes[name] = float(img[y - 3 : y + 4, x - 3 : x + 4].sum())
    return boxes


def _centroid(img: np.ndarray) -> tuple[float, float]:
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    return float((img * yy).sum() / img.sum()), float((img * xx).sum() / img.sum())


# -------------------------------------------------------------------------------------------------
# Geometry


def test_own_tan_matches_astropy():
    rng = np.random.default_rng(3)
    for ra0, dec0 in ((0.125, 0.0), (112.67, 22.25), (300.0, -60.0), (180.0, 90.0)):
        header = brick_header("x", ra0, dec0, "r")
        header["LONPOLE"] = 180.0
        x, y = rng.uniform(-100, 3700, (2, 500))
        ra, dec = WCS(header).pixel_to_world_values(x, y)
        mine = Tan.from_header(header, "f")
        x2, y2 = mine.world_to_pixel(ra, dec)
        assert np.abs(x2 - x).max() < 1e-6 and np.abs(y2 - y).max() < 1e-6


def test_locate_and_touching_against_brute_force(sky):
    bricks = open_bricks(str(sky))
    t = brick_table()
    ra1, ra2, dec1, dec2 = (t[c].to_numpy() for c in ("RA1", "RA2", "DEC1", "DEC2"))

    def brute(ra, dec, rows=slice(None)):
        hit = (ra >= ra1[rows]) & (ra < ra2[rows]) & (dec >= dec1[rows]) & ((dec < dec2[rows]) | (dec2[rows] == 90))
        return int(np.arange(len(ra1))[rows][np.flatnonzero(hit)[0]])

    rng = np.random.default_rng(5)
    ra = np.r_[rng.uniform(0, 360, 300), 0.0, 359.9999999, 0.125, 10.0, 123.0]
    dec = np.r_[np.degrees(np.arcsin(rng.uniform(-1, 1, 300))), 0.0, 0.0, 0.125, 90.0, -90.0]
    assert bricks.locate(ra, dec).tolist() == [brute(r, d) for r, d in zip(ra, dec, strict=True)]
    # touching: a superset of the bricks holding a dense grid over the field (RA wrap, a pole cap, a corner)
    for ra_c, dec_c, half in ((359.999, 0.1, 0.01), (0.001, 89.99, 0.02), (0.25, 0.125, 0.005), (42.0, -89.9, 0.2),
                              (100.0, 60.0, 0.1)):  # fmt: skip
        got = set(bricks.touching(ra_c, dec_c, half))
        grid = WCS(naxis=2)  # 25 × 25 points over the square field, in its own tangent plane
        grid.wcs.ctype, grid.wcs.crval, grid.wcs.crpix = ["RA---TAN", "DEC--TAN"], [ra_c, dec_c], [13.0, 13.0]
        grid.wcs.cdelt, grid.wcs.lonpole = [-half / 12, half / 12], 180.0
        ra_s, dec_s = grid.pixel_to_world_values(*np.meshgrid(np.arange(25.0), np.arange(25.0)))
        rows = np.flatnonzero(np.abs(t.DEC.to_numpy() - dec_c) < 2 * half + 0.3)
        need = {brute(r % 360, d, rows) for r, d in zip(ra_s.ravel(), dec_s.ravel(), strict=True)}
        assert need <= got and len(got) <= 3 * len(need) + 8, (ra_c, dec_c, need, got)


# -------------------------------------------------------------------------------------------------
# Pixels


def test_orientation_north_up_east_left_and_the_brick_flipped(sky):
    bricks = open_bricks(str(sky))
    data, w = _brick_wcs(sky, "0001p000")
    px, py = (int(round(float(v))) for v in w.world_to_pixel_values(*CATALOG[11][:2]))
    ra, dec = (float(v) for v in w.pixel_to_world_values(px, py))  # the pixel centre nearest galaxy 11
    n = 81
    [cut] = cut_cutouts(bricks, [ra], [dec], n * PIX, n, "r")
    assert cut.status == "ok" and cut.image.shape == (n, n, 1) and cut.image.dtype == np.float32
    h = n // 2
    np.testing.assert_allclose(cut.image[..., 0], np.flip(data[py - h : py + h + 1, px - h : px + h + 1], 0),
                               rtol=1e-4, atol=1e-5)  # fmt: skip
    # the bright neighbour 8" north and 8" east: upper left (row < centre, column < centre)
    box = _quadrant_boxes(cut.image[..., 0], 8.0)
    assert box["NE"] > 5 * max(box["NW"], box["SE"], box["SW"]), box


@pytest.mark.parametrize("n", [63, 64, 128])
def test_galaxy_at_the_centre_for_any_size_and_scale(gauss, n):
    bricks = open_bricks(str(gauss))
    _, w = _brick_wcs(gauss, "0001p000")
    ra, dec = (float(v) for v in w.pixel_to_world_values(*GAUSS_AT[0]))
    for scale in (0.5, 1.0, 2.3):
        [cut] = cut_cutouts(bricks, [ra], [dec], n * scale * PIX, n, "r")
        cy, cx = _centroid(cut.image[..., 0].astype(np.float64))
        assert abs(cy - (n - 1) / 2) < 0.1 and abs(cx - (n - 1) / 2) < 0.1, (n, scale, cy, cx)
        assert cut.image.sum() == pytest.approx(100.0, rel=1e-4)


def test_flux_conserved_for_any_scale(sky):
    """Fields whose edges fall on brick pixel edges: the cutout's sum is the sum of the pixels inside."""
    bricks = open_bricks(str(sky))
    data, w = _brick_wcs(sky, "0001p000")
    for scale, n, corner in ((0.4, 25, True), (1.0, 63, False), (3.0, 21, False)):
        x, y = (1210.5, 1520.5) if corner else (1210.0, 1520.0)
        ra, dec = (float(v) for v in w.pixel_to_world_values(x, y))
        [cut] = cut_cutouts(bricks, [ra], [dec], n * scale * PIX, n, "r")
        half = n * scale / 2
        box = data[round(y - half + 0.5) : round(y + half + 0.5), round(x - half + 0.5) : round(x + half + 0.5)]
        assert box.shape == (round(n * scale),) * 2
        assert float(cut.image.sum(dtype=np.float64)) == pytest.approx(box.sum(), abs=1e-5 * np.abs(box).sum())


def test_a_field_across_a_brick_edge_has_no_seam_and_no_double_count(sky):
    bricks = open_bricks(str(sky))
    ra, dec, radius = CATALOG[31]
    n = 64
    assert [bricks.names[i] for i in bricks.touching(ra, dec, n * PIX / 7200)] == ["0001p000", "0001p002"]
    [cut] = cut_cutouts(bricks, [ra], [dec], n * PIX, n, "r", with_invvar=True)
    img = cut.image[..., 0].astype(np.float64)
    rows_north = round((0.125 - dec) * 3600 / PIX - 0.5 + (n - 1) / 2)  # output rows above this are 0001p002's
    north = img[: (n - 1) // 2 - rows_north]
    assert north.sum() > 10 * SIGMA * math.sqrt(north.size)  # the neighbour brick carries the galaxy's light
    assert (cut.invvar > 0).all()  # data everywhere: no gap at the seam
    assert img.sum() == pytest.approx(_expected_sum(sky, ["0001p000", "0001p002"], ra, dec, n, PIX),
                                      abs=5 * SIGMA * math.sqrt(4 * n))  # fmt: skip
    g = Galaxy(objid=31, ra=ra, dec=dec, radius_arcsec=radius, z=0.03, agn_weight=1.0)
    rendered = render_flux(g, [], ra, dec, n, PIX, "r").astype(np.float64)
    assert abs(img.sum() - rendered.sum()) < 6 * SIGMA * math.sqrt(2 * n * n)
    assert rendered.sum() > 40 * SIGMA * math.sqrt(n * n)  # and there is a galaxy to compare


def test_ra_wrap_and_the_pole(sky, pole):
    bricks = open_bricks(str(sky))
    ra, dec, _ = CATALOG[41]
    n = 64
    assert sorted(bricks.names[i] for i in bricks.touching(ra, dec, n * PIX / 7200)) == ["0001p000", "3598p000"]
    [cut] = cut_cutouts(bricks, [ra], [dec], n * PIX, n, "r")
    assert cut.status == "ok"
    expected = _expected_sum(sky, ["0001p000", "3598p000"], ra, dec, n, PIX)
    assert cut.image.sum(dtype=np.float64) == pytest.approx(expected, abs=5 * SIGMA * math.sqrt(4 * n))
    root, (target, near, cap) = pole
    polar = open_bricks(str(root))
    for g, scale in ((target, 1.0), (cap, 1.7)):
        [cut] = cut_cutouts(polar, [g.ra], [g.dec], n * scale * PIX, n, "r")
        assert cut.status == "ok"
        expected = _expected_sum(root, ["1800p900"], g.ra, g.dec, n, scale * PIX)
        assert cut.image.sum(dtype=np.float64) == pytest.approx(expected, abs=5 * SIGMA * math.sqrt(4 * n * scale))
    # the field is turned ~150° against the brick's axes there: the neighbour 6" NE is still upper left
    [cut] = cut_cutouts(polar, [target.ra], [target.dec], n * PIX, n, "r")
    box = _quadrant_boxes(cut.image[..., 0], 6.0)
    assert box["NE"] > 5 * max(box["NW"], box["SE"], box["SW"]), box
    rgb, flux = (cut_cutouts(polar, [target.ra], [target.dec], n * PIX, n, "zrg", pixels=p)[0].image
                 for p in ("rgb", "flux"))  # fmt: skip
    assert rgb.dtype == np.uint8 and np.array_equal(rgb, flux_to_rgb(flux[..., ::-1], "grz", PIX))


def test_inverse_variance_by_hand(gauss):
    bricks = open_bricks(str(gauss))
    _, w = _brick_wcs(gauss, "0001p000")
    n = 32
    ra, dec = (float(v) for v in w.pixel_to_world_values(600.5, 700.5))  # a pixel corner: 2 × 2 inputs per output
    [cut] = cut_cutouts(bricks, [ra], [dec], n * 2 * PIX, n, "r", with_invvar=True)
    assert cut.invvar.shape == (n, n, 1) and cut.invvar.dtype == np.float32
    np.testing.assert_allclose(cut.invvar, 1 / (4 * SIGMA_GAUSS**2), rtol=1e-3)  # 1 / Σ w² σ², w = 1 (4 of them)
    # n even: output pixel (n-1)/2 is a corner. On an input corner at scale 1: one input per output
    ra, dec = (float(v) for v in w.pixel_to_world_values(600.5, 700.5))
    [cut] = cut_cutouts(bricks, [ra], [dec], n * PIX, n, "r", with_invvar=True)
    np.testing.assert_allclose(cut.invvar, SIGMA_GAUSS**-2, rtol=1e-3)
    # on an input centre: each output takes quarters of four inputs, Σ w² σ² = 4 × σ² / 16
    ra, dec = (float(v) for v in w.pixel_to_world_values(600.0, 700.0))
    [cut] = cut_cutouts(bricks, [ra], [dec], n * PIX, n, "r", with_invvar=True)
    np.testing.assert_allclose(cut.invvar, 4 * SIGMA_GAUSS**-2, rtol=1e-3)
    # across RA 0 into 3598p000, which has no data here: invvar 0 and no flux there, the rest as before
    ra, dec = (float(v) for v in w.pixel_to_world_values(3500.0, 700.0))  # 17 px east of RA 0
    [cut] = cut_cutouts(bricks, [ra], [dec], 200 * PIX, 200, "r", with_invvar=True)
    assert cut.status == "ok"
    empty = cut.invvar[..., 0] == 0
    assert empty[:, -40:].all() and not empty[:, :100].any() and (cut.image[..., 0][empty] == 0).all()


# -------------------------------------------------------------------------------------------------
# What cannot be cut, and roots that cannot be used


def test_no_coverage_and_a_broken_brick_fails_only_its_galaxies(sky, tmp_path):
    root = _root_beside(sky, tmp_path / "broken")
    (root / "coadd" / "000").mkdir(parents=True)
    os.symlink(sky / "coadd" / "000" / "0001p000", root / "coadd" / "000" / "0001p000")
    bad = brick_path(root, "3598p000", "image", "r")
    bad.parent.mkdir(parents=True)
    good = brick_path(sky, "3598p000", "image", "r")
    bad.write_bytes(good.read_bytes()[: good.stat().st_size * 6 // 10])  # truncated
    shutil.copy(brick_path(sky, "3598p000", "invvar", "r"), brick_path(root, "3598p000", "invvar", "r"))
    brick_path(root, "3598p002", "image", "r").parent.mkdir(parents=True)  # a brick directory without its files
    bricks = open_bricks(str(root))
    at = [CATALOG[11], CATALOG[61], CATALOG[41], (359.9, 0.2, 0), (10.0, 0.0, 0)]
    out = cut_cutouts(bricks, [a[0] for a in at], [a[1] for a in at], 20.0, 32, "r", with_invvar=True)
    assert [o.status for o in out] == ["ok", "failed", "failed", "failed", "no_coverage"]
    assert str(bad) in out[1].reason and "truncated" in out[1].reason and str(bad) in out[2].reason
    assert str(brick_path(root, "3598p002", "image", "r")) in out[3].reason and "missing" in out[3].reason
    assert "0101p000" in out[4].reason


def test_roots_that_cannot_be_used(sky, tmp_path):
    with pytest.raises(FetchError, match="survey-bricks.fits.gz") as e:
        open_bricks(str(tmp_path))
    assert str(tmp_path) in str(e.value) and "--bricks" in str(e.value)
    short = tmp_path / "short"
    short.mkdir()
    Table({"BRICKNAME": ["0001p000"], "RA": [0.125], "DEC": [0.0]}).write(short / "t.fits")
    (short / SURVEY_BRICKS).write_bytes(gzip.compress((short / "t.fits").read_bytes()))
    with pytest.raises(FetchError, match="RA1, RA2, DEC1, DEC2"):
        open_bricks(str(short))
    with pytest.raises(FetchError, match=r"band 'g'.*legacysurvey-\w+-image-g.fits.fz.*--bands r"):
        check_bands(open_bricks(str(sky)), "rg", ("image", "invvar"))
    check_bands(open_bricks(str(sky)), "r", ("image", "invvar"))
    sin = _root_beside(sky, tmp_path / "sin")
    header = brick_header("0001p000", 0.125, 0.0, "r")
    header["CTYPE1"], header["CTYPE2"] = "RA---SIN", "DEC--SIN"
    _write(brick_path(sin, "0001p000", "image", "r"), np.zeros((3600, 3600), np.float32), header)
    with pytest.raises(FetchError, match=r"legacysurvey-0001p000-image-r.fits.fz has CTYPE1 = RA---SIN, not a TAN"):
        cut_cutouts(open_bricks(str(sin)), [0.1], [0.0], 20.0, 32, "r")


# -------------------------------------------------------------------------------------------------
# A remote root


@pytest.fixture
def served(sky):
    """``sky`` over HTTP on 127.0.0.1 (aiohttp's static files: Range requests, directory listings);
    yields (url, served) with the bytes of coadd files sent so far."""
    counts = {"coadd": 0}

    async def count(request, response):
        if request.method == "GET" and request.path.startswith("/coadd/"):
            counts["coadd"] += int(response.headers.get("Content-Length", 0))

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def start():
        app = web.Application()
        app.on_response_prepare.append(count)
        app.router.add_static("/", str(sky), show_index=True)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        return runner

    runner_box = {}
    thread = threading.Thread(target=lambda: (runner_box.update(r=loop.run_until_complete(start())),
                                              loop.run_forever()), daemon=True)  # fmt: skip
    thread.start()
    assert ready.wait(10)
    yield f"http://127.0.0.1:{port}", counts
    asyncio.run_coroutine_threadsafe(runner_box["r"].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_a_url_root_gives_the_local_cutouts_reading_only_their_tiles(sky, served):
    url, counts = served
    at = [CATALOG[11], CATALOG[41], CATALOG[31]]
    args = ([a[0] for a in at], [a[1] for a in at], 30.0, 64, "r", True)
    remote = cut_cutouts(open_bricks(url), *args)
    local = cut_cutouts(open_bricks(str(sky)), *args)
    for r, loc in zip(remote, local, strict=True):
        assert r.status == loc.status == "ok"
        assert np.array_equal(r.image, loc.image) and np.array_equal(r.invvar, loc.invvar)
    files = sum(p.stat().st_size for p in (sky / "coadd").rglob("*.fits.fz"))
    assert 0 < counts["coadd"] < files / 20, (counts, files)


def test_many_galaxies_in_a_brick_read_each_file_once_and_cut_the_same(sky, monkeypatch):
    """120 galaxies in one brick: each file is read once over the box around them all (one section per
    file, not one per galaxy), and every cutout equals the one cut with a section read of its own."""
    from pipeline.images import bricks as reader

    bricks = open_bricks(str(sky))
    _, w = _brick_wcs(sky, "0001p000")
    rng = np.random.default_rng(3)
    ra, dec = w.pixel_to_world_values(*rng.uniform(300, 3300, (2, 120)))
    sections = []
    original_read, original_prefetch = reader._Brick.read, reader._Brick.prefetch

    def counted_prefetch(self, boxes):
        original_prefetch(self, boxes)
        sections.append(("union", self.union is not None, len(boxes)))

    monkeypatch.setattr(reader._Brick, "prefetch", counted_prefetch)
    together = cut_cutouts(bricks, ra, dec, 20.0, 32, "r", with_invvar=True)
    assert ("union", True, 120) in sections
    monkeypatch.setattr(reader._Brick, "prefetch", lambda self, boxes: None)  # every galaxy its own section
    reads = []
    monkeypatch.setattr(reader._Brick, "read", lambda self, *a: reads.append(a) or original_read(self, *a))
    alone = cut_cutouts(bricks, ra, dec, 20.0, 32, "r", with_invvar=True)
    assert len(reads) == 2 * 120  # image and invvar per galaxy: what the union read saved
    for a, b in zip(together, alone, strict=True):
        assert a.status == b.status == "ok"
        assert np.array_equal(a.image, b.image) and np.array_equal(a.invvar, b.invvar)
