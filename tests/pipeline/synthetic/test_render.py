"""The galaxy renderer: determinism, geometry (scale, North up / East left), class statistics, BPT weights,
flux units and the JPEG as the viewer's mapping of that flux.

Expected values are computed here (hand-worked BPT points, offsets from the sky geometry, the
viewer's g, r, z → RGB formula written out again), never taken from the renderer.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from pipeline.synthetic.render import SIGMA_NMGY, Galaxy, agn_weight_from_fluxes, encode_jpeg, render_field, render_flux

SIGMA = np.array([SIGMA_NMGY[b] for b in "grz"])  # nanomaggies per native pixel, the documented noise


def galaxy(objid: int = 7, ra: float = 150.0, dec: float = 2.0, radius: float = 8.0, w: float = 0.0) -> Galaxy:
    return Galaxy(objid=objid, ra=ra, dec=dec, radius_arcsec=radius, z=0.03, agn_weight=w)


def standard(g: Galaxy, size: int = 250) -> np.ndarray:
    """The pipeline's cutout request, in flux (g, r, z nanomaggies per pixel): field of 3 radii."""
    return render_flux(g, [], g.ra, g.dec, size, g.radius_arcsec * 1.5 * 2 / size, "grz")


def light(flux: np.ndarray, pixscale: float) -> np.ndarray:
    """Surface brightness summed over g, r, z, in native-pixel noise sigmas of each band (float64)."""
    per_native = flux.astype(np.float64) * (0.262 / pixscale) ** 2
    return (per_native / SIGMA).sum(axis=2)


def centroid(f: np.ndarray, cx: float, cy: float, half: int) -> tuple[float, float]:
    """Light-weighted centroid (x, y) of the light above 5 sigmas (``f`` from :func:`light`) around (cx, cy)."""
    y0, x0 = int(round(cy)) - half, int(round(cx)) - half
    win = np.clip(f[y0 : y0 + 2 * half + 1, x0 : x0 + 2 * half + 1] - 5.0, 0, None)
    yy, xx = np.mgrid[: win.shape[0], : win.shape[1]]
    return x0 + (win * xx).sum() / win.sum(), y0 + (win * yy).sum() / win.sum()


def half_light_radius_arcsec(img: np.ndarray, pixscale: float, aperture_arcsec: float) -> float:
    f = img.astype(np.float64).sum(axis=2)  # flux per pixel: sums to the total whatever the pixscale
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
    flux = render_flux(galaxy(), [], 150.0, 2.0, size, pixscale, "zg")
    assert flux.shape == (size, size, 2) and flux.dtype == np.float32


def test_flux_bands_in_the_order_asked_and_unknown_bands_refused():
    g = galaxy(objid=77, w=1.0)
    grz = render_flux(g, [], g.ra, g.dec, 64, 0.2, "grz")
    assert np.array_equal(render_flux(g, [], g.ra, g.dec, 64, 0.2, "zrg"), grz[..., ::-1])
    assert np.array_equal(render_flux(g, [], g.ra, g.dec, 64, 0.2, "r")[..., 0], grz[..., 1])
    for bad in ("gri", "u", "", "gg"):
        with pytest.raises(ValueError):
            render_flux(g, [], g.ra, g.dec, 64, 0.2, bad)


def test_sky_noise_is_the_documented_nanomaggies_per_pixel():
    """Empty sky at the native scale: mean ~0, std the band's sigma; at 2x the pixscale each output pixel
    holds 4 native pixels' flux, so the noise per output pixel is sigma × 4 / sqrt(4) = 2 sigma."""
    native = render_flux(None, [], 200.0, 10.0, 400, 0.262, "grz").reshape(-1, 3)
    assert np.allclose(native.std(axis=0), SIGMA, rtol=0.1), native.std(axis=0)
    assert np.all(np.abs(native.mean(axis=0)) < 0.2 * SIGMA)
    coarse = render_flux(None, [], 200.0, 10.0, 400, 0.524, "grz").reshape(-1, 3)
    assert np.allclose(coarse.std(axis=0), 2 * SIGMA, rtol=0.15), coarse.std(axis=0)


def viewer_rgb(flux: np.ndarray, pixscale: float) -> np.ndarray:
    """The Legacy Surveys viewer's g, r, z → RGB (legacypipe get_rgb: scales g 6.0, r 3.4, z 2.2,
    m = 0.03, Q = 20, on flux per native pixel; R = z, G = r, B = g), written out independently."""
    img = flux.astype(np.float64) * (0.262 / pixscale) ** 2
    scaled = np.maximum(0.0, img * np.array([6.0, 3.4, 2.2]) + 0.03)  # g, r, z
    i = scaled.mean(axis=2)
    fi = np.arcsinh(20.0 * i) / math.sqrt(20.0)
    i = np.where(i == 0, 1e-6, i)
    rgb = np.clip(scaled * (fi / i)[..., None], 0.0, 1.0)[..., ::-1]  # g, r, z → R = z, G = r, B = g
    return np.floor(rgb * 255.0).astype(np.uint8)


def test_jpeg_is_the_viewer_mapping_of_the_flux():
    for g, pixscale in [(galaxy(objid=31, w=0.0), 0.1), (galaxy(objid=32, w=1.0, radius=20.0), 0.3)]:
        flux = render_flux(g, [], g.ra, g.dec, 120, pixscale, "grz")
        rgb = render_field(g, [], g.ra, g.dec, 120, pixscale)
        expected = viewer_rgb(flux, pixscale)
        assert np.abs(rgb.astype(int) - expected.astype(int)).max() <= 1  # float32 vs float64 rounding
        assert (rgb != expected).mean() < 0.01


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
        f = light(img, 6.0 * 3 / 250)
        centre = f[115:135, 115:135].mean()
        border = np.r_[f[:15].ravel(), f[-15:].ravel(), f[:, :15].ravel(), f[:, -15:].ravel()].mean()
        assert centre > 60, objid  # sigmas, three bands together
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
    # the viewer's mapping of zero flux: floor(255 * asinh(20 * 0.03) / sqrt(20)) = 32 counts
    assert math.floor(255 * math.asinh(0.6) / math.sqrt(20.0)) == 32
    assert 25 <= np.median(a) <= 60  # dark grey
    assert a.std() > 5  # noise, not a flat fill
    assert (a.max(axis=2) == 0).mean() < 0.01  # pure black means "outside the footprint" in the real service
    assert np.percentile(a, 99.9) < 200  # no source


def test_neighbour_appears_north_up_east_left():
    ra, dec, pixscale, size = 40.0, 30.0, 0.262, 250
    east, north = 15.0, 8.0  # arcsec
    n = galaxy(objid=901, ra=ra + east / 3600 / math.cos(math.radians(dec)), dec=dec + north / 3600, radius=3.0, w=1.0)
    f = light(render_flux(None, [n], ra, dec, size, pixscale), pixscale)
    c = (size - 1) / 2
    ex, ey = c - east / pixscale, c - north / pixscale  # East left, North up
    x, y = centroid(f, ex, ey, 14)
    assert abs(x - ex) < 2.0 and abs(y - ey) < 2.0, (x, y, ex, ey)
    assert f[int(round(ey)), int(round(ex))] > 20
    assert f[int(round(2 * c - ey)), int(round(2 * c - ex))] < 10  # nothing at the mirrored position


def test_target_off_centre_and_across_ra_zero():
    """The target is drawn at its own position, also when the field straddles RA 0."""
    g = galaxy(objid=5, ra=0.001, dec=0.0, radius=4.0)  # 3.6" east of RA 0
    img = render_flux(g, [], 359.9995, 0.0, 200, 0.1)  # field centre 1.8" west of RA 0
    c = (200 - 1) / 2
    x, y = centroid(light(img, 0.1), c - 5.4 / 0.1, c, 20)
    assert abs(x - (c - 54)) < 3 and abs(y - c) < 3, (x, y)


def test_classes_differ_statistically_and_overlap():
    def stats(w: float) -> tuple[np.ndarray, np.ndarray]:
        colour, conc = [], []
        for objid in range(100):
            img = standard(galaxy(objid=10_000 * int(w * 2) + objid, radius=6.0, w=w), size=100).astype(np.float64)
            tot = np.clip(img[25:75, 25:75].sum(axis=(0, 1)), 1e-3, None)  # g, r, z nanomaggies
            colour.append(math.log(tot[2] / tot[0]))  # z over g: larger is redder
            f = light(img, 6.0 * 3 / 100)
            conc.append(f[45:55, 45:55].sum() / max(f[25:75, 25:75].sum(), 1.0))
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
    g = galaxy(objid=3)
    img = render_field(g, [], g.ra, g.dec, 250, g.radius_arcsec * 3 / 250)
    data = encode_jpeg(img, quality=90)
    assert data[:2] == b"\xff\xd8"
    back = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert back.shape == img.shape
    # pixel noise suffers from JPEG's chroma subsampling; 5x5 block means come back close
    blocks = (back.astype(float) - img.astype(float)).reshape(50, 5, 50, 5, 3).mean(axis=(1, 3))
    assert np.abs(blocks).mean() < 2
    with pytest.raises(ValueError):
        encode_jpeg(img.astype(np.float32))
