"""The per-band asinh stretch: values, fitting, serialisation, validation."""

import json

import numpy as np
import pytest

from pipeline.learn.stretch import Stretch


def test_apply_matches_arcsinh():
    s = Stretch("grz", (0.5, 1.0, 2.0))
    x = np.array([[0.0, 0.0, 0.0], [0.5, -1.0, 4.0], [100.0, 3.0, -0.02]])
    expected = np.stack([np.arcsinh(x[:, 0] / 0.5), np.arcsinh(x[:, 1] / 1.0), np.arcsinh(x[:, 2] / 2.0)], axis=1)
    out = s.apply(x)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_allclose(out[1], [np.arcsinh(1.0), np.arcsinh(-1.0), np.arcsinh(2.0)], rtol=1e-6)


def test_apply_any_leading_shape():
    s = Stretch("gr", (0.1, 0.2))
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 2))
    out = s.apply(x)
    assert out.shape == x.shape
    np.testing.assert_allclose(out[..., 1], np.arcsinh(x[..., 1] / 0.2), rtol=1e-6)


def test_wrong_channel_count_raises():
    s = Stretch("grz", (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"4 channels.*3 bands"):
        s.apply(np.zeros((5, 5, 4)))


def test_fit_recovers_noise_sigma():
    rng = np.random.default_rng(42)
    sigmas = (0.003, 0.01, 0.05)
    sample = np.stack([rng.normal(0.2, s, size=(20, 32, 32)) for s in sigmas], axis=-1)
    sample[0, :3, :3, 1] = 50.0  # a few bright sources barely move a robust estimate
    sample[1, 0, 0, 0] = np.nan
    sample[1, 0, 1, 2] = np.inf
    s = Stretch.fit(sample, "grz")
    assert s.bands == "grz"
    np.testing.assert_allclose(s.softening, sigmas, rtol=0.05)


def test_fit_floors_blank_band():
    sample = np.zeros((4, 4, 2))
    sample[..., 1] = np.nan
    s = Stretch.fit(sample, "gr")
    assert s.softening == (1e-6, 1e-6)


def test_round_trip_through_json():
    s = Stretch("grz", (0.0031, 0.012, 0.047))
    back = Stretch.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s


@pytest.mark.parametrize(
    ("d", "key"),
    [
        ({"softening": [1.0]}, "bands"),
        ({"bands": "g"}, "softening"),
        ({"bands": "g", "softening": [1.0], "extra": 1}, "extra"),
        ({"bands": 3, "softening": [1.0]}, "bands"),
        ({"bands": "g", "softening": "1.0"}, "softening"),
        ({"bands": "gr", "softening": [1.0]}, "softening"),
        ({"bands": "g", "softening": [-1.0]}, "softening"),
        ({"bands": "g", "softening": [0.0]}, "softening"),
        ({"bands": "g", "softening": [float("nan")]}, "softening"),
        ({"bands": "g", "softening": [True]}, "softening"),
    ],
)
def test_bad_dict_names_key(d, key):
    with pytest.raises(ValueError, match=repr(key)):
        Stretch.from_dict(d)
