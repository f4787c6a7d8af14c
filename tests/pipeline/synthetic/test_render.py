"""The galaxy renderer: determinism, geometry (scale, North up / East left), class statistics, BPT weights.

Expected values are computed here (hand-worked BPT points, offsets from the sky geometry), never
taken from the renderer.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from pipeline.synthetic.render import Galaxy, agn_weight_from_fluxes, encode_jpeg, render_field

SKY = 16.0  # documented sky level of the stretch (counts)


def galaxy(objid: int = 7, ra: float = 150.0, dec: float = 2.0, radius: float = 8.0, w: float = 0.0) -> Galaxy:
    return Galaxy(objid=objid, ra=ra, dec=dec, radius_arcsec=radius, z=0.03, agn_weight=w)


def standard(g: Galaxy, size: int = 250) -> np.ndarray:
    """The pipeline's cutout request: field of 3 radii centred on the galaxy."""
    return render_field(g, [], g.ra, g.dec, size, g.radius_arcsec * 1.5 * 2 / size)


def light(img: np.ndarray) -> np.ndarray:
    """Sky-subtracted brightness (sum of the three channels), float."""
    return img.astype(np.float64).sum(axis=2) - 3 * SKY


def centroid(img: np.ndarray, cx: float, cy: float, half: int) -> tuple[float, float]:
    """Light-weighted centroid (x, y) of the positive light in a window around (cx, cy)."""
    y0, x0 = int(round(cy)) - half, int(round(cx)) - half
    win = np.clip(light(img)[y0 : y0 + 2 * half + 1, x0 : x0 + 2 * half + 1] - 15.0, 0, None)
    yy, xx = np.mgrid[: win.shape[0], : win.shape[1]]
    return x0 + (win * xx).sum() / win.sum(), y0 + (win * yy).sum() / win.sum()


def half_light_radius_arcsec(img: np.ndarray, pixscale: float, aperture_arcsec: float) -> float:
    f = light(img)
    c = (img.shape[0] - 1) / 2
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    r = np.hypot(xx - c, yy - c).ravel() * pixscale
    inside = r < aperture_arcsec
    order = np.argsort(r[inside])
    cum = np.cumsum(f.ravel()[inside][order])
    return float(r[inside][order][np.searchsorted(cum, cum[-1] / 2)])


# --------------------------------------------------------------------------------------------------


def test_deterministic_bytes_and_differs_by_objid():
    g = galaxy(objid=12345, w=0.5)
    a = render_field(g, [], g.ra, g.dec, 250, 0.1)
    b = render_field(g, [], g.ra, g.dec, 250, 0.1)
    assert a.tobytes() == b.tobytes()
    other = render_field(galaxy(objid=12346, w=0.5), [], g.ra, g.dec, 250, 0.1)
    assert a.tobytes() != other.tobytes()
    # the same galaxy listed among its own neighbours is drawn once
    assert render_field(g, [g], g.ra, g.dec, 250, 0.1).tobytes() == a.tobytes()


@pytest.mark.parametrize(("size", "pixscale"), [(1, 0.262), (17, 0.05), (64, 1.0), (250, 0.3), (600, 0.262)])
def test_shape_and_dtype(size, pixscale):
    img = render_field(galaxy(), [], 150.0, 2.0, size, pixscale)
    assert img.shape == (size, size, 3)
    assert img.dtype == np.uint8


def test_bad_catalog_values_do_not_break_a_field():
    """NaN radius / weight are drawn with defaults; a neighbour without a position is left out."""
    odd = Galaxy(objid=-4, ra=150.0, dec=2.0, radius_arcsec=float("nan"), z=float("nan"), agn_weight=float("nan"))
    lost = Galaxy(objid=8, ra=float("nan"), dec=2.0, radius_arcsec=5.0, z=0.02, agn_weight=0.0)
    img = render_field(odd, [lost], 150.0, 2.0, 64, 0.262)
    assert img.shape == (64, 64, 3)
    assert img.tobytes() == render_field(odd, [], 150.0, 2.0, 64, 0.262).tobytes()


def test_invalid_field_raises():
    for size, pixscale in [(0, 0.1), (10, 0.0), (10, -1.0), (10, float("nan"))]:
        with pytest.raises(ValueError):
            render_field(galaxy(), [], 150.0, 2.0, size, pixscale)


def test_target_light_is_concentrated_at_the_centre():
    for objid in range(20, 30):
        img = standard(galaxy(objid=objid, radius=6.0))
        f = light(img)
        centre = f[115:135, 115:135].mean()
        border = np.r_[f[:15].ravel(), f[-15:].ravel(), f[:, :15].ravel(), f[:, -15:].ravel()].mean()
        assert centre > 60, objid
        assert centre > 20 * max(border, 1.0), objid


def test_angular_size_is_physical_at_any_pixscale():
    """The same galaxy at twice the pixscale: the same half-light radius in arcsec, half in pixels."""
    ratios = []
    for objid in range(40, 50):
        g = galaxy(objid=objid, radius=10.0)
        fine = render_field(g, [], g.ra, g.dec, 300, 0.1)  # field 30"
        coarse = render_field(g, [], g.ra, g.dec, 150, 0.2)  # the same 30"
        ratios.append(half_light_radius_arcsec(fine, 0.1, 12.0) / half_light_radius_arcsec(coarse, 0.2, 12.0))
    assert abs(np.median(ratios) - 1.0) < 0.08, ratios
    # and the light radius follows the catalog radius: twice the radius, twice the size
    small = np.median(
        [half_light_radius_arcsec(standard(galaxy(objid=i, radius=5.0)), 0.06, 6.0) for i in range(60, 70)]
    )
    large = np.median(
        [half_light_radius_arcsec(standard(galaxy(objid=i, radius=10.0)), 0.12, 12.0) for i in range(60, 70)]
    )
    assert 1.6 < large / small < 2.4, (small, large)


def test_empty_sky_is_dark_noise_not_black_and_deterministic():
    a = render_field(None, [], 210.5, -5.25, 250, 0.262)
    assert a.tobytes() == render_field(None, [], 210.5, -5.25, 250, 0.262).tobytes()
    assert a.tobytes() != render_field(None, [], 211.5, -5.25, 250, 0.262).tobytes()
    assert 10 <= a.mean() <= 22
    assert a.std() > 1.5  # noise, not a flat fill
    assert (a == 0).mean() < 0.01  # pure black means "outside the footprint" in the real service
    assert a.max() < 70  # no source


def test_neighbour_appears_north_up_east_left():
    ra, dec, pixscale, size = 40.0, 30.0, 0.262, 250
    east, north = 15.0, 8.0  # arcsec
    n = galaxy(objid=901, ra=ra + east / 3600 / math.cos(math.radians(dec)), dec=dec + north / 3600, radius=3.0, w=1.0)
    img = render_field(None, [n], ra, dec, size, pixscale)
    c = (size - 1) / 2
    ex, ey = c - east / pixscale, c - north / pixscale  # East left, North up
    x, y = centroid(img, ex, ey, 14)
    assert abs(x - ex) < 2.0 and abs(y - ey) < 2.0, (x, y, ex, ey)
    f = light(img)
    assert f[int(round(ey)), int(round(ex))] > 100
    assert f[int(round(2 * c - ey)), int(round(2 * c - ex))] < 40  # nothing at the mirrored position


def test_target_off_centre_and_across_ra_zero():
    """The target is drawn at its own position, also when the field straddles RA 0."""
    g = galaxy(objid=5, ra=0.001, dec=0.0, radius=4.0)  # 3.6" east of RA 0
    img = render_field(g, [], 359.9995, 0.0, 200, 0.1)  # field centre 1.8" west of RA 0
    c = (200 - 1) / 2
    x, y = centroid(img, c - 5.4 / 0.1, c, 20)
    assert abs(x - (c - 54)) < 3 and abs(y - c) < 3, (x, y)


def test_classes_differ_statistically_and_overlap():
    def stats(w: float) -> tuple[np.ndarray, np.ndarray]:
        colour, conc = [], []
        for objid in range(100):
            img = standard(galaxy(objid=10_000 * int(w * 2) + objid, radius=6.0, w=w), size=100).astype(np.float64)
            sub = img[25:75, 25:75] - SKY
            tot = np.clip(sub.sum(axis=(0, 1)), 1, None)
            colour.append(math.log(tot[0] / tot[2]))  # red (z) over blue (g): larger is redder
            core = light(img)[45:55, 45:55].sum()
            conc.append(core / max(light(img)[25:75, 25:75].sum(), 1.0))
        return np.array(colour), np.array(conc)

    sf_col, sf_conc = stats(0.0)
    agn_col, agn_conc = stats(1.0)
    assert agn_col.mean() > sf_col.mean() + 0.05
    assert agn_conc.mean() > sf_conc.mean()
    # overlapping, not separable: neither feature alone tells the classes apart
    assert 0.7 < roc_auc_score(np.r_[np.zeros(100), np.ones(100)], np.r_[sf_col, agn_col]) < 0.98
    assert 0.55 < roc_auc_score(np.r_[np.zeros(100), np.ones(100)], np.r_[sf_conc, agn_conc]) < 0.9
    assert (sf_col > np.median(agn_col)).sum() >= 2  # some star-forming hosts redder than the median AGN


def test_agn_weight_from_hand_worked_bpt_points():
    def fluxes(x: float, y: float) -> tuple[float, float, float, float]:
        ha, hb = 100.0, 30.0
        return ha, ha * 10**x, hb, hb * 10**y

    # (x, y) → expected: Kauffmann K(x) = 0.61/(x-0.05)+1.3, Kewley W(x) = 0.61/(x-0.47)+1.19
    points = [
        ((-0.5, -0.3), 0.0),  # K(-0.5) = 0.191: below
        ((-0.5, 0.5), 0.5),  # above K, below W(-0.5) = 0.561
        ((-0.5, 0.7), 1.0),  # above W
        ((0.0, -0.5), 0.5),  # K(0) = -10.9: above; W(0) = -0.108: below
        ((0.1, -0.5), 0.5),  # x >= 0.05 is never star-forming; W(0.1) = -0.459: below
        ((0.1, -0.4), 1.0),  # above W(0.1)
        ((0.5, -1.0), 1.0),  # x >= 0.47
        ((-1.0, 0.0), 0.0),  # K(-1) = 0.719
    ]
    cols = np.array([fluxes(*p) for p, _ in points]).T
    assert agn_weight_from_fluxes(*cols).tolist() == [w for _, w in points]
    # invalid fluxes (one of the four <= 0 or not finite): from the true class when given, else 0.5
    ha = np.array([0.0, -1.0, np.nan, 10.0, 10.0, 10.0, 10.0])
    nii = np.array([1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    hb = np.array([1.0, 1.0, 1.0, 1.0, np.inf, -3.0, 1.0])
    oiii = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    sim = np.array([0, 1, 2, 3, 7, 0, 1])
    assert agn_weight_from_fluxes(ha, nii, hb, oiii, sim).tolist() == [0.0, 0.5, 1.0, 1.0, 0.5, 0.0, 0.5]
    assert agn_weight_from_fluxes(ha, nii, hb, oiii).tolist() == [0.5] * 7
    # valid fluxes win over the true class (the CNN learns BPT labels from these same fluxes)
    assert agn_weight_from_fluxes(*fluxes(-0.5, 0.7), sim_class=0).item() == 1.0


def test_encode_jpeg_round_trips():
    img = standard(galaxy(objid=3))
    data = encode_jpeg(img, quality=90)
    assert data[:2] == b"\xff\xd8"
    back = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert back.shape == img.shape
    assert np.abs(back.astype(int) - img.astype(int)).mean() < 3
    with pytest.raises(ValueError):
        encode_jpeg(img.astype(np.float32))
