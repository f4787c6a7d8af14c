"""Flux-conserving resampling: totals, hand-worked cases, flips, centring, borders."""

import numpy as np
import pytest

from pipeline.images.resample import cutout_edges, integrate_axis, overlap_weights, resample_flux


@pytest.mark.parametrize("step", [0.3, 1.0, 1.7, 4.2])
@pytest.mark.parametrize("n_out", [7, 8])
def test_sum_conserved_inside(step, n_out):
    rng = np.random.default_rng(int(step * 10) + n_out)
    # the cutout spans n_out * step input pixels; make the image comfortably larger
    size = int(np.ceil(n_out * step)) + 20
    image = rng.uniform(0.0, 5.0, size=(size, size + 3, 3))
    cy, cx = (size - 1) / 2 + 0.37, (size + 2) / 2 - 0.21
    ye, xe = cutout_edges(cy, n_out, step), cutout_edges(cx, n_out, -step)
    out = resample_flux(image, ye, xe)
    assert out.shape == (n_out, n_out, 3) and out.dtype == np.float32
    # independent: integrate the piecewise-constant image over the field with a fine 1-D CDF
    for b in range(3):
        expected = _box_integral(image[..., b], ye.min(), ye.max(), xe.min(), xe.max())
        np.testing.assert_allclose(out[..., b].astype(np.float64).sum(), expected, rtol=1e-5)


def _box_integral(img, y0, y1, x0, x1):
    """Integral of the pixel-constant image over [y0, y1] x [x0, x1] via per-pixel coverage lengths."""
    def cover(n, a, b):
        k = np.arange(n)
        return np.array([max(0.0, min(b, kk + 0.5) - max(a, kk - 0.5)) for kk in k])

    cy, cx = cover(img.shape[0], y0, y1), cover(img.shape[1], x0, x1)
    return float(sum(cy[i] * cx[j] * img[i, j] for i in range(img.shape[0]) for j in range(img.shape[1])))


def test_hand_worked_1d():
    # input pixels 0 and 1 cover [-0.5, 1.5]; one output pixel of step 2 centred at 0.5 covers it all
    np.testing.assert_allclose(overlap_weights(np.array([-0.5, 1.5]), 2), [[1.0, 1.0]])
    img = np.array([[3.0, 5.0]])
    out = resample_flux(img, np.array([-0.5, 0.5]), np.array([-0.5, 1.5]))
    np.testing.assert_allclose(out, [[8.0]])
    # step 0.5: each input pixel splits into two halves
    out = resample_flux(img, np.array([-0.5, 0.5]), cutout_edges(0.5, 4, 0.5))
    np.testing.assert_allclose(out, [[1.5, 1.5, 2.5, 2.5]])
    # a partial overlap: [0.25, 1.0] takes 0.25 of pixel 0 and 0.5 of pixel 1
    np.testing.assert_allclose(overlap_weights(np.array([0.25, 1.0]), 2), [[0.25, 0.5]])


def test_cutout_edges_hand_worked():
    np.testing.assert_allclose(cutout_edges(10.0, 2, 1.0), [9.0, 10.0, 11.0])
    np.testing.assert_allclose(cutout_edges(10.0, 3, 2.0), [7.0, 9.0, 11.0, 13.0])
    np.testing.assert_allclose(cutout_edges(10.0, 1, -4.0), [12.0, 8.0])


def test_flipped_edges_give_flipped_output():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(40, 50))
    ye, xe = cutout_edges(19.3, 9, 1.7), cutout_edges(25.1, 12, 2.3)
    plain = resample_flux(image, ye, xe)
    np.testing.assert_allclose(resample_flux(image, ye[::-1], xe), plain[::-1, :], rtol=1e-6)
    np.testing.assert_allclose(resample_flux(image, ye, xe[::-1]), plain[:, ::-1], rtol=1e-6)
    np.testing.assert_allclose(resample_flux(image, ye[::-1], xe[::-1]), plain[::-1, ::-1], rtol=1e-6)
    # a negative step is the same flip
    np.testing.assert_allclose(resample_flux(image, ye, cutout_edges(25.1, 12, -2.3)), plain[:, ::-1], rtol=1e-6)


def _centroid(out):
    iy, ix = np.indices(out.shape)
    t = out.sum()
    return (iy * out).sum() / t, (ix * out).sum() / t


@pytest.mark.parametrize("n_out", [5, 8, 31, 64])
@pytest.mark.parametrize("step", [0.4, 1.0, 2.5, -1.3])
def test_point_source_lands_at_centre(n_out, step):
    image = np.zeros((101, 101))
    image[50, 50] = 1000.0  # a single bright pixel at input coordinate (50, 50)
    out = resample_flux(image, cutout_edges(50.0, n_out, step), cutout_edges(50.0, n_out, step))
    cy, cx = _centroid(out.astype(np.float64))
    assert abs(cy - (n_out - 1) / 2) < 0.1 and abs(cx - (n_out - 1) / 2) < 0.1
    assert np.unravel_index(np.argmax(out), out.shape)[0] in {(n_out - 1) // 2, n_out // 2}


@pytest.mark.parametrize("n_out", [16, 25])
@pytest.mark.parametrize("step", [0.7, 1.9])
def test_gaussian_at_fractional_centre(n_out, step):
    cy, cx, sigma = 60.3, 57.8, 2.5
    y, x = np.indices((120, 120))
    image = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))
    out = resample_flux(image, cutout_edges(cy, n_out, step), cutout_edges(cx, n_out, step)).astype(np.float64)
    oy, ox = _centroid(out)
    assert abs(oy - (n_out - 1) / 2) < 0.1 and abs(ox - (n_out - 1) / 2) < 0.1


def test_partial_coverage_loses_exactly_the_outside_flux():
    rng = np.random.default_rng(2)
    image = rng.uniform(1.0, 2.0, size=(30, 30))
    # 10 x 10 output pixels of step 1: y centred on 2.0 covers [-3, 7] (2.5 pixels off the image),
    # x centred on 14.5 covers [9.5, 19.5] = input columns 10..19 exactly
    out = resample_flux(image, cutout_edges(2.0, 10, 1.0), cutout_edges(14.5, 10, 1.0))
    inside = image[0:7, 10:20].sum() + 0.5 * image[7, 10:20].sum()  # y in [-0.5, 7]: rows 0..6 + half of row 7
    np.testing.assert_allclose(out.sum(), inside, rtol=1e-6)
    assert np.all(out[:2] == 0) and np.all(out[2:] > 0)  # rows over y < -1 are empty; [-1, 0] is half inside
    np.testing.assert_allclose(out[2], 0.5 * image[0, 10:20], rtol=1e-6)


def test_nan_does_not_poison_distant_pixels():
    image = np.ones((20, 20))
    image[3, 4] = np.nan
    out = resample_flux(image, cutout_edges(9.5, 10, 2.0), cutout_edges(9.5, 10, 2.0))
    assert np.all(np.isfinite(out))
    # output pixel (1, 2) covers input rows 2..3 and cols 4..5: 4 pixels, one of them NaN -> 3
    assert out[1, 2] == pytest.approx(3.0)
    assert np.count_nonzero(out != 4.0) == 1


def test_bad_edges_raise():
    with pytest.raises(ValueError, match="edges"):
        overlap_weights(np.array([1.0]), 4)
    with pytest.raises(ValueError, match="step"):
        cutout_edges(0.0, 4, 0.0)


@pytest.mark.parametrize("edges", [(-3.0, 60.0, 21), (40.0, 5.3, 21), (0.2, 6.1, 31), (-0.5, 99.5, 129)])
@pytest.mark.parametrize("axis", [0, 1])
def test_integrate_axis_is_the_overlap_matrix_product(edges, axis):
    """The running-integral resampler gives the dense overlap matrix's sums (up, down, flipped, past
    the borders), along either axis of a (H, W, B) image."""
    lo, hi, n = edges
    e = np.linspace(lo, hi, n)
    rng = np.random.default_rng(n)
    image = rng.normal(size=(50, 37, 2)) if axis == 0 else rng.normal(size=(11, 50, 2))
    w = overlap_weights(e, 50)
    dense = np.einsum("ok,kwb->owb", w, image) if axis == 0 else np.einsum("ok,hkb->hob", w, image)
    np.testing.assert_allclose(integrate_axis(image, e, axis), dense, rtol=0, atol=1e-12)
