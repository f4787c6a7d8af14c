"""The BPT kernel on hand-worked points: both sides of each line and exactly on it."""

import numpy as np
import pytest

from pipeline.catalog.bpt import bpt_class, kauffmann2003, kewley2001, log_ratios, training_label

SF, COMP, AGN = 0, 1, 2


def test_log_ratios_hand_worked():
    x, y = log_ratios(nii=[10.0], ha=[100.0], oiii=[100.0], hb=[10.0])
    assert x[0] == pytest.approx(-1.0) and y[0] == pytest.approx(1.0)


def test_lines_hand_worked():
    # Kauffmann at x = -0.56: 0.61 / (-0.61) + 1.3 = 0.3 ; Kewley at x = -0.14: 0.61/(-0.61) + 1.19 = 0.19
    assert kauffmann2003(np.array([-0.56]))[0] == pytest.approx(0.3)
    assert kewley2001(np.array([-0.14]))[0] == pytest.approx(0.19)


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [
        (-0.56, 0.29, SF),  # just below Kauffmann (0.3)
        (-0.56, 0.31, AGN),  # just above it
        (-1.5, -0.5, SF),  # deep in the star-forming branch
        (-0.105, -3.0, SF),  # just left of the x = -0.1 cut, below the curve (0.61/-0.155 + 1.3 = -2.635)
        (-0.1, -3.0, AGN),  # exactly on x = -0.1: not SF (x < -0.1 is strict), though below -2.767
        (-0.05, -6.0, AGN),  # below Kauffmann (-4.8), but right of x = -0.1 (the paper's extra cut)
        (0.3, -1.0, AGN),  # right of the Kauffmann asymptote
        (0.2, 1.0, AGN),  # Seyfert region
    ],
)
def test_paper_scheme(x, y, expected):
    assert bpt_class(np.array([x]), np.array([y]), "paper")[0] == expected


def test_points_exactly_on_lines_go_to_the_class_above():
    x = np.array([-0.56, -0.14, -0.56])
    y = np.array([kauffmann2003(np.array([-0.56]))[0], kewley2001(np.array([-0.14]))[0], 0.3])
    assert bpt_class(x[:1], y[:1], "paper")[0] == AGN
    assert bpt_class(x[:1], y[:1], "three-class")[0] == COMP
    assert bpt_class(x[1:2], y[1:2], "three-class")[0] == AGN
    assert bpt_class(x[1:2], y[1:2], "kewley2001")[0] == AGN


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [
        (-0.56, 0.29, SF),  # below Kauffmann
        (-0.56, 0.5, COMP),  # between: Kauffmann 0.3 < 0.5 < Kewley 0.61/(-1.03)+1.19 = 0.598
        (-0.56, 0.7, AGN),  # above Kewley
        (0.0, -1.0, COMP),  # Kauffmann(0) = -10.9 < -1 < Kewley(0) = -0.108
        (0.1, -0.5, COMP),  # right of Kauffmann asymptote, below Kewley (0.61/(-0.37)+1.19 = -0.459)
        (0.1, -0.4, AGN),  # above Kewley there
        (0.5, -3.0, AGN),  # right of the Kewley asymptote
    ],
)
def test_three_class_scheme(x, y, expected):
    assert bpt_class(np.array([x]), np.array([y]), "three-class")[0] == expected


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [(-0.56, 0.5, SF), (-0.56, 0.7, AGN), (0.1, -0.5, SF), (0.1, -0.4, AGN), (0.47, -5.0, AGN)],
)
def test_kewley_scheme(x, y, expected):
    assert bpt_class(np.array([x]), np.array([y]), "kewley2001")[0] == expected


def test_vectorised_matches_loop():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-2, 1, 5000), rng.uniform(-1.5, 1.5, 5000)
    got = bpt_class(x, y, "paper")
    expected = [SF if (xi < -0.1 and yi < 0.61 / (xi - 0.05) + 1.3) else AGN for xi, yi in zip(x, y, strict=True)]
    np.testing.assert_array_equal(got, expected)


def test_training_label_codes():
    np.testing.assert_array_equal(training_label(np.array([SF, COMP, AGN])), [0, -1, 1])
    assert training_label(np.array([SF])).dtype == np.int8


def test_unknown_scheme():
    with pytest.raises(ValueError, match="unknown BPT scheme"):
        bpt_class(np.zeros(1), np.zeros(1), "baldwin")
