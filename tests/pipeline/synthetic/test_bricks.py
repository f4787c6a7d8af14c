"""The brick mirror writer: Legacy Surveys brick geometry, file layout, WCS and galaxy placement.

Expected brick values are hand-worked from the DR9/DR10 rule (rows of 0.25°, an even number of
bricks per row from the edge nearest the equator) and a known real brick (1126p222); pixel positions
come from astropy's WCS of the written header, never from the writer's own projection.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from pipeline.synthetic.args import BrickArgs
from pipeline.synthetic.bricks import SURVEY_BRICKS, brick_path, brick_table, read_brick, write_bricks
from pipeline.synthetic.render import SIGMA_NMGY, Galaxy, render_flux

# Two galaxies in stripe 82 (inside the footprint), on either side of RA 0: no line fluxes, so the
# appearance weight falls back to 0.5 (a composite look); radii in arcsec.
GALAXIES = [(101, 359.95, 0.01, 4.0), (102, 0.05, -0.02, 3.0)]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cat") / "two.fits"
    t = Table(
        {
            "NSAID": [g[0] for g in GALAXIES],
            "RA": [g[1] for g in GALAXIES],
            "DEC": [g[2] for g in GALAXIES],
            "Z": [0.03, 0.04],
            "PETROTH90": [g[3] for g in GALAXIES],
            **{c: [np.nan, np.nan] for c in ("HAFLUX", "N2FLUX", "HBFLUX", "O3FLUX")},
        }
    )
    t.write(path)
    return path


@pytest.fixture(scope="module")
def mirror(tmp_path_factory, catalog) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("bricks")
    args = BrickArgs(out=root, catalog=(str(catalog),), ra_min=359.9, ra_max=0.1, dec_min=-0.05, dec_max=0.05,
                     bands="r", invvar=False)  # fmt: skip
    return root, write_bricks(args).to_dict()


def test_brick_table_follows_the_survey_geometry():
    t = brick_table()
    assert len(t) == 662_174  # the DR9 / DR10 survey-bricks.fits.gz row count
    assert t.BRICKID.tolist() == list(range(1, len(t) + 1))
    real = t[t.BRICKNAME == "1126p222"].iloc[0]  # a real brick: RA 112.668666, Dec 22.25
    assert abs(real.RA - 112.668666) < 1e-5 and real.DEC == 22.25
    for dec, row in t.groupby("DEC"):
        n = len(row)
        if abs(dec) == 90:
            assert n == 1 and row.RA1.iloc[0] == 0 and row.RA2.iloc[0] == 360
            continue
        expected = 2 * math.ceil(1440 * math.cos(math.radians(abs(dec) - 0.125)) / 2)
        assert n == expected, dec
    equator = t[t.DEC == 0].sort_values("RA")
    assert len(equator) == 1440 and equator.RA1.iloc[0] == 0 and equator.RA2.iloc[-1] == 360
    assert np.allclose(equator.RA1.to_numpy()[1:], equator.RA2.to_numpy()[:-1])
    assert equator.BRICKNAME.iloc[0] == "0001p000" and equator.BRICKNAME.iloc[-1] == "3598p000"
    south = t[t.DEC == -22.25].iloc[0]
    assert south.BRICKNAME.endswith("m222") and south.DEC1 == -22.375 and south.DEC2 == -22.125


def test_a_region_across_ra_zero_writes_bricks_on_both_sides(mirror):
    root, manifest = mirror
    assert sorted(manifest["outputs"]["bricks"]) == ["0001p000", "3598p000"]
    assert manifest["extra"]["bricks_written"] == 2 and manifest["extra"]["seconds_per_brick"] > 0
    for name in ("0001p000", "3598p000"):
        path = root / "coadd" / name[:3] / name / f"legacysurvey-{name}-image-r.fits.fz"
        assert path.exists() and path == brick_path(root, name, "image", "r")
        assert not brick_path(root, name, "invvar", "r").exists()  # --no-invvar
        assert not brick_path(root, name, "image", "g").exists()
    assert not list(root.rglob(".*tmp*"))  # no temporary file left behind
    with fits.open(root / SURVEY_BRICKS) as hdul:
        table = hdul[1].data
        assert len(table) == 662_174
        assert {"BRICKNAME", "BRICKID", "RA", "DEC", "RA1", "RA2", "DEC1", "DEC2"} <= set(table.columns.names)


def test_brick_wcs_and_galaxies_where_the_wcs_puts_them(mirror):
    root, _ = mirror
    t = brick_table().set_index("BRICKNAME")
    for (objid, ra, dec, radius), name in zip(GALAXIES, ("3598p000", "0001p000"), strict=True):
        with fits.open(brick_path(root, name, "image", "r")) as hdul:
            assert isinstance(hdul[1], fits.CompImageHDU) and hdul[1].compression_type == "RICE_1"
        data, header = read_brick(root, name, "r")
        assert data.shape == (3600, 3600) and data.dtype == np.float32
        assert header["BAND"] == "r" and header["BRICKNAM"] == name
        wcs = WCS(header)
        cx, cy = wcs.world_to_pixel_values(t.loc[name].RA, t.loc[name].DEC)
        assert (float(cx), float(cy)) == pytest.approx((1799.5, 1799.5), abs=1e-6)
        # noise: the documented sigma per native pixel (quantised by the compression to sigma / 16)
        assert np.std(data[:500, :500]) == pytest.approx(SIGMA_NMGY["r"], rel=0.05)
        x, y = (float(v) for v in wcs.world_to_pixel_values(ra, dec))
        x0, y0 = int(round(x)), int(round(y))
        win = data[y0 - 25 : y0 + 26, x0 - 25 : x0 + 26].astype(np.float64)
        w = np.clip(win - 5 * SIGMA_NMGY["r"], 0, None)
        yy, xx = np.mgrid[-25:26, -25:26]
        assert (w * xx).sum() / w.sum() + x0 == pytest.approx(x, abs=0.5)
        assert (w * yy).sum() / w.sum() + y0 == pytest.approx(y, abs=0.5)
        # the same galaxy as the server's cutout draws it (rows flipped to FITS order): equal within noise
        g = Galaxy(objid=objid, ra=ra, dec=dec, radius_arcsec=radius, z=0.0, agn_weight=0.5)
        cut = np.flip(render_flux(g, [], ra, dec, 51, 0.262, "r")[..., 0], axis=0).astype(np.float64)
        r = np.hypot(xx, yy) < 20
        n_pix = r.sum()
        assert abs(win[r].sum() - cut[r].sum()) < 6 * SIGMA_NMGY["r"] * math.sqrt(2 * n_pix), objid
        assert cut[r].sum() > 20 * SIGMA_NMGY["r"] * math.sqrt(n_pix)  # and there is a galaxy to compare


def test_a_rerun_skips_finished_bricks_and_a_client_writes_the_same(mirror, catalog, tmp_path, cluster_client):
    root, _ = mirror
    args = dict(catalog=(str(catalog),), ra_min=359.9, ra_max=0.1, dec_min=-0.05, dec_max=0.05, bands="r",
                invvar=False)  # fmt: skip
    again = write_bricks(BrickArgs(out=root, **args)).to_dict()
    assert again["extra"]["bricks_written"] == 0 and again["extra"]["bricks_skipped"] == 2
    other = tmp_path / "dask"
    write_bricks(BrickArgs(out=other, **args), client=cluster_client)
    for name in ("0001p000", "3598p000"):
        assert np.array_equal(read_brick(root, name, "r")[0], read_brick(other, name, "r")[0])


def test_bad_arguments_are_refused():
    from pipeline.errors import ConfigError

    for bad in ({"bands": "gri"}, {"dec_min": 10.0, "dec_max": 5.0}, {"ra_min": -1.0}, {"catalog": ()}):
        with pytest.raises(ConfigError):
            BrickArgs(**{"out": "x", "catalog": ("c.fits",), **bad})
