"""The viewer's g, r, z -> RGB mapping, checked against hand-worked values of the formula."""

import numpy as np
import pytest

from pipeline.images.survey_rgb import flux_to_rgb


def _cube(g=0.0, r=0.0, z=0.0, shape=(4, 5)):
    return np.stack([np.full(shape, g), np.full(shape, r), np.full(shape, z)], axis=-1)


def test_zero_image_is_sky_level():
    # sky: every scaled band is the offset m = 0.03, so each channel is asinh(20 * 0.03) / sqrt(20)
    sky = int(np.floor(255 * np.arcsinh(20 * 0.03) / np.sqrt(20)))
    assert sky == 32
    rgb = flux_to_rgb(_cube(), "grz")
    assert rgb.shape == (4, 5, 3) and rgb.dtype == np.uint8
    assert np.all(rgb == sky)


def test_hand_worked_pixel():
    g, r, z = 0.01, 0.02, 0.05  # nanomaggies per 0.262" pixel
    vb, vg, vr = 6.0 * g + 0.03, 3.4 * r + 0.03, 2.2 * z + 0.03
    i = (vb + vg + vr) / 3
    k = np.arcsinh(20 * i) / np.sqrt(20) / i
    expected = np.floor(255 * np.clip([vr * k, vg * k, vb * k], 0, 1)).astype(np.uint8)
    np.testing.assert_array_equal(flux_to_rgb(_cube(g, r, z, (1, 1)), "grz")[0, 0], expected)


@pytest.mark.parametrize("band", ["g", "r", "z"])
def test_monotone_in_flux_per_band(band):
    levels = np.linspace(-0.05, 3.0, 60)
    plane = {"z": 0, "r": 1, "g": 2}[band]
    values = [int(flux_to_rgb(_cube(**{band: f}, shape=(1, 1)), "grz")[0, 0, plane]) for f in levels]
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    assert values[-1] > values[0]


def test_z_raises_only_red():
    base = flux_to_rgb(_cube(0.05, 0.05, 0.05), "grz")[0, 0].astype(int)
    more_z = flux_to_rgb(_cube(0.05, 0.05, 0.5), "grz")[0, 0].astype(int)
    assert more_z[0] > base[0]
    assert more_z[1] <= base[1] and more_z[2] <= base[2]


def test_band_order_follows_bands_argument():
    zrg = np.stack([np.full((2, 2), 0.5), np.zeros((2, 2)), np.zeros((2, 2))], axis=-1)  # z first
    np.testing.assert_array_equal(flux_to_rgb(zrg, "zrg"), flux_to_rgb(_cube(z=0.5, shape=(2, 2)), "grz"))


def test_extra_bands_ignored():
    rng = np.random.default_rng(0)
    grz = rng.uniform(0, 0.3, size=(6, 6, 3))
    with_i = np.concatenate([grz[..., :2], rng.uniform(0, 9, size=(6, 6, 1)), grz[..., 2:]], axis=-1)
    np.testing.assert_array_equal(flux_to_rgb(with_i, "griz"), flux_to_rgb(grz, "grz"))


def test_same_surface_brightness_at_coarser_pixscale():
    rng = np.random.default_rng(3)
    native = rng.uniform(0.0, 0.5, size=(8, 8, 3))
    # 0.524" pixels are 4 native pixels in area: 4x the flux per pixel is the same surface brightness
    a = flux_to_rgb(native, "grz", pixscale=0.262).astype(int)
    b = flux_to_rgb(4.0 * native, "grz", pixscale=0.524).astype(int)
    assert np.abs(a - b).max() <= 1 and np.mean(a == b) > 0.95
    assert np.any(flux_to_rgb(4.0 * native, "grz", pixscale=0.262) != a)


@pytest.mark.parametrize(("bands", "missing"), [("gr", "z"), ("rz", "g"), ("giz", "r")])
def test_missing_band_error(bands, missing):
    with pytest.raises(ValueError, match=rf"{missing}.*--bands grz"):
        flux_to_rgb(np.zeros((2, 2, len(bands))), bands)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="grz"):
        flux_to_rgb(np.zeros((2, 2, 2)), "grz")
