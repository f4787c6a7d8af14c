"""Histogram counts agree with numpy's histogram2d; figures are written as PNG."""

import numpy as np

from pipeline.catalog import bpt_plots as plots


def test_counts_match_histogram2d():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-2.5, 1.5, 20_000), rng.uniform(-2, 2, 20_000)
    label = rng.integers(0, 2, 20_000).astype(np.int8)
    counts = plots.bpt_hist_counts(x, y, label)
    grid = dict(bins=plots.BINS, range=(plots.X_RANGE, plots.Y_RANGE))
    np.testing.assert_array_equal(counts["all"], np.histogram2d(x, y, **grid)[0])
    np.testing.assert_array_equal(counts["agn"], np.histogram2d(x[label == 1], y[label == 1], **grid)[0])
    assert counts["n_sf"] == (label == 0).sum() and counts["n_all"] == 20_000


def test_sum_and_png(tmp_path):
    parts = [plots.bpt_hist_counts(np.array([-0.5, 0.2]), np.array([0.0, 0.5]), np.array([0, 1], np.int8))] * 3
    total = plots.sum_counts(parts)
    assert total["all"].sum() == 6 and total["n_agn"] == 3
    written = plots.bpt_histograms(total, tmp_path, "paper")
    assert [p.name for p in written] == ["bpt_all.png", "bpt_sf.png", "bpt_agn.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written)
