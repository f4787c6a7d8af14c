"""Splits are a pure function of objid: stable, in proportion, independent of neighbours."""

import numpy as np

from pipeline.catalog.splits import assign_split, unit_hash


def test_split_depends_only_on_the_id():
    ids = np.arange(10_000, dtype=np.int64)
    full = assign_split(ids)
    shuffled = np.random.default_rng(3).permutation(ids)
    again = dict(zip(shuffled, assign_split(shuffled), strict=True))
    assert all(again[i] == s for i, s in zip(ids, full, strict=True))
    subset = assign_split(ids[5000:])
    assert (subset == full[5000:]).all()


def test_split_proportions():
    split = assign_split(np.arange(200_000, dtype=np.int64), (0.75, 0.15, 0.10))
    frac = {name: np.mean(split == name) for name in ("train", "val", "test")}
    assert abs(frac["train"] - 0.75) < 0.005
    assert abs(frac["val"] - 0.15) < 0.005
    assert abs(frac["test"] - 0.10) < 0.005


def test_unit_hash_range_and_mixing():
    u = unit_hash(np.arange(100_000, dtype=np.int64))
    assert u.min() >= 0 and u.max() < 1
    # consecutive ids must not map to nearby values (sky-ordered ids would otherwise cluster)
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.02


def test_custom_fractions_and_no_test_split():
    split = assign_split(np.arange(1000, dtype=np.int64), (0.5, 0.5, 0.0))
    assert set(split) == {"train", "val"}
