"""The training reader: rows chosen right, every train row once per epoch, shuffled, reproducible,
augmentation that only moves pixels, parts for several processes, clear errors."""

import shutil

import numpy as np
import pytest
from conftest import decode_rows, training_workspace, write_table

from pipeline.errors import WorkspaceError
from pipeline.learn.augment import augment, dihedral
from pipeline.learn.batches import CubeBatches, plan_epoch
from pipeline.learn.rows import class_weights, select_rows
from storage.cube import open_cube
from storage.tables import read_labels
from storage.workspace import Workspace


def reader(ws, split="train", **kwargs):
    rows = select_rows(Workspace(ws))[split]
    return rows, CubeBatches(ws / "cube.zarr", rows, kwargs.pop("batch_size", 32), **kwargs)


def epoch_rows(batches: CubeBatches, epoch: int) -> tuple[list[int], list[np.ndarray]]:
    """Rows (decoded from the pixels) of every real image of one epoch, read in order as Keras does."""
    batches.set_epoch(epoch)
    seen, batch_list = [], []
    for i in range(len(batches)):
        x, y, w = batches[i]
        codes = decode_rows(x)[w > 0]
        seen += codes.tolist()
        batch_list.append(codes)
        assert (y[w > 0] == codes % 2).all()  # training_workspace labels row i with i % 2
        assert set(decode_rows(x)[w == 0]) <= set(codes)  # padding repeats the batch's images, at weight 0
        if batches.shuffle and len(codes):
            assert w.sum() == pytest.approx(len(w))  # a padded training batch weighs like a full one
    batches.on_epoch_end()
    return seen, batch_list


def test_every_train_row_exactly_once_per_epoch_in_a_new_order(tmp_path):
    training_workspace(tmp_path, n=700)
    rows, batches = reader(tmp_path, shuffle=True, augment_images=True, shuffle_buffer=96, block_rows=16)
    orders = []
    for epoch in range(3):
        seen, _ = epoch_rows(batches, epoch)
        assert sorted(seen) == sorted(rows.cube_row.tolist())  # each once: no loss, no repeat
        orders.append(seen)
    assert orders[0] != orders[1] != orders[2]
    assert orders[0] != sorted(orders[0])  # shuffled, not cube order
    # the buffer mixes blocks: a batch draws from several 16-row blocks
    _, first = epoch_rows(batches, 0)
    assert len(set((first[0] // 16).tolist())) > 3


def test_the_same_seed_gives_the_same_epochs_and_batches_can_be_rebuilt_out_of_order(tmp_path):
    training_workspace(tmp_path, n=500)
    _, a = reader(tmp_path, shuffle=True, augment_images=True, shuffle_buffer=64, seed=5)
    _, b = reader(tmp_path, shuffle=True, augment_images=True, shuffle_buffer=64, seed=5)
    _, c = reader(tmp_path, shuffle=True, augment_images=True, shuffle_buffer=64, seed=6)
    for epoch in (0, 1):
        sa, sb, sc = epoch_rows(a, epoch)[0], epoch_rows(b, epoch)[0], epoch_rows(c, epoch)[0]
        assert sa == sb and sa != sc
    a.set_epoch(1)
    in_order = [a[i] for i in range(len(a))]
    b.set_epoch(1)
    for i in (3, 0, len(b) - 1):  # out of order (Keras asks for a batch or two to learn shapes)
        for got, want in zip(b[i], in_order[i], strict=True):
            np.testing.assert_array_equal(got, want)


def test_validation_batches_are_in_cube_order_without_augmentation(tmp_path):
    training_workspace(tmp_path, n=300)
    rows, batches = reader(tmp_path, split="val", batch_size=16)
    seen, _ = epoch_rows(batches, 0)
    assert seen == rows.cube_row.tolist()
    cube = open_cube(tmp_path / "cube.zarr", mode="r")
    x, _, w = batches[0]
    np.testing.assert_array_equal(x[w > 0], cube.read_rows(rows.cube_row[:16]))


def test_augmentation_keeps_the_label_and_only_moves_pixels(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (40, 12, 12, 3), dtype=np.uint8)
    transforms = rng.integers(0, 8, 40)
    out = augment(images.copy(), transforms)
    for original, moved, k in zip(images, out, transforms, strict=True):
        np.testing.assert_array_equal(np.sort(moved, axis=None), np.sort(original, axis=None))  # same pixels
        np.testing.assert_array_equal(moved, dihedral(original[None], int(k))[0])
    # the eight transforms are the eight distinct symmetries of the square
    distinct = {dihedral(images[:1], k).tobytes() for k in range(8)}
    assert len(distinct) == 8
    # through the reader: label and pixel values unchanged, orientation changed for some images
    training_workspace(tmp_path, n=200, learnable=True, seed=1)
    rows, plain = reader(tmp_path, shuffle=True, augment_images=False, seed=2)
    _, turned = reader(tmp_path, shuffle=True, augment_images=True, seed=2)
    xp, yp, _ = plain[0]
    xt, yt, _ = turned[0]
    np.testing.assert_array_equal(yp, yt)
    assert not np.array_equal(xp, xt)
    np.testing.assert_array_equal(np.sort(xp.reshape(len(xp), -1), axis=1), np.sort(xt.reshape(len(xt), -1), axis=1))


def test_two_processes_read_disjoint_parts_that_cover_the_split(tmp_path):
    training_workspace(tmp_path, n=650)
    rows = select_rows(Workspace(tmp_path))["train"]
    parts = [CubeBatches(tmp_path / "cube.zarr", rows, 16, shuffle=True, shuffle_buffer=48, block_rows=16,
                         part=(p, 2)) for p in range(2)]  # fmt: skip
    per_process = -(-len(rows) // 2)
    assert len(parts[0]) == len(parts[1]) == -(-per_process // 16)
    for epoch in (0, 1):
        seen = [epoch_rows(p, epoch)[0] for p in parts]
        assert not set(seen[0]) & set(seen[1])
        assert sorted(seen[0] + seen[1]) == sorted(rows.cube_row.tolist())
        assert abs(len(seen[0]) - len(seen[1])) <= 1


def test_unpadded_batches_end_short_and_padding_is_never_blank(tmp_path):
    training_workspace(tmp_path, n=300)
    rows = select_rows(Workspace(tmp_path))["val"]
    short = CubeBatches(tmp_path / "cube.zarr", rows, 16, pad=False)
    sizes = [len(short[i][0]) for i in range(len(short))]
    assert sum(sizes) == len(rows) and sizes[-1] == len(rows) - 16 * (len(short) - 1) and sizes[-1] < 16
    padded = CubeBatches(tmp_path / "cube.zarr", rows, 16)
    x, _, w = padded[len(padded) - 1]
    assert len(x) == 16 and (w == 0).sum() == 16 - sizes[-1] and x[w == 0].any()


def test_a_read_error_is_raised_and_the_next_request_starts_again(tmp_path, monkeypatch):
    from pipeline.learn import batches as dataset

    training_workspace(tmp_path, n=200)
    rows, batches = reader(tmp_path, shuffle=True)
    real = dataset._read_block
    failures = iter([OSError("disk went away")])

    def flaky(cube, block_rows):
        error = next(failures, None)
        if error is not None:
            raise error
        return real(cube, block_rows)

    monkeypatch.setattr(dataset, "_read_block", flaky)
    with pytest.raises(OSError, match="disk went away"):
        batches[0]
    x, _, w = batches[0]  # no hang: a new reading thread
    assert (w > 0).sum() == 32
    batches.close()


def test_a_reader_dropped_mid_epoch_stops_its_thread(tmp_path):
    import gc
    import threading

    training_workspace(tmp_path, n=300)
    _, batches = reader(tmp_path, shuffle=True)
    batches[0]
    assert any(t.name == "cube-batches" and t.is_alive() for t in threading.enumerate())
    del batches
    gc.collect()
    for _ in range(100):
        if not any(t.name == "cube-batches" and t.is_alive() for t in threading.enumerate()):
            break
        threading.Event().wait(0.05)
    assert not any(t.name == "cube-batches" and t.is_alive() for t in threading.enumerate())


def test_plan_bounds_the_buffer(tmp_path):
    rows = np.arange(0, 5000, 2)
    plan = plan_epoch(rows, 32, -(-len(rows) // 32), 64, 256, np.random.default_rng(0))
    assert plan.fill == 256
    assert all(len(s) <= 32 for s in plan.slots) and all(s.max() < 256 for s in plan.slots if len(s))
    assert sorted(np.concatenate(plan.order).tolist()) == list(range(len(rows)))


def test_rows_are_ok_cutouts_with_a_training_label(tmp_path):
    n = 120
    status = np.ones(n, np.int8)
    status[::5] = 0  # pending
    status[1::7] = 2  # no coverage
    labels = np.arange(n) % 3 - 1  # -1 composite, 0 SF, 1 AGN
    frame = training_workspace(tmp_path, n=n, status=status, labels=labels)
    ws = Workspace(tmp_path)
    splits = select_rows(ws)
    chosen = np.sort(np.concatenate([s.cube_row for s in splits.values()]))
    want = np.flatnonzero((status == 1) & (labels >= 0))
    np.testing.assert_array_equal(chosen, want)
    for name, rows in splits.items():
        assert (frame.set_index("cube_row").loc[rows.cube_row, "split"] == name).all()
        np.testing.assert_array_equal(rows.label, labels[rows.cube_row])
    with_composites = select_rows(ws, composites="agn")
    chosen = np.sort(np.concatenate([s.cube_row for s in with_composites.values()]))
    np.testing.assert_array_equal(chosen, np.flatnonzero(status == 1))
    assert all(set(s.label[labels[s.cube_row] == -1]) <= {1.0} for s in with_composites.values())


def test_a_cube_of_another_catalog_and_no_cube_are_clear_errors(tmp_path):
    training_workspace(tmp_path / "a", n=50)
    labels = read_labels(tmp_path / "a")
    labels["objid"] += 1
    shutil.rmtree(tmp_path / "a" / "labels")
    write_table(labels, tmp_path / "a" / "labels")
    with pytest.raises(WorkspaceError, match=r"holds another catalog's cutouts.*fetch .*--restart"):
        select_rows(Workspace(tmp_path / "a"))
    write_table(labels, tmp_path / "b" / "labels")
    with pytest.raises(WorkspaceError, match=r"has no image cube; run `agnsurvey fetch"):
        select_rows(Workspace(tmp_path / "b"))


def test_balanced_class_weights_weigh_both_classes_the_same(tmp_path):
    training_workspace(tmp_path, n=300, labels=(np.arange(300) % 4 == 0).astype(int))
    rows = select_rows(Workspace(tmp_path))["train"]
    w_sf, w_agn = class_weights(rows, "balanced")
    n_sf, n_agn = rows.counts()
    assert w_sf * n_sf == pytest.approx(w_agn * n_agn) and w_sf * n_sf + w_agn * n_agn == pytest.approx(len(rows))
    assert class_weights(rows, "none") == (1.0, 1.0)
    batches = CubeBatches(tmp_path / "cube.zarr", rows, 64, class_weight=(w_sf, w_agn))
    _, y, w = batches[0]
    np.testing.assert_allclose(w, np.where(y == 1, w_agn, w_sf), rtol=1e-6)
    assert 0 < (y == 1).sum() < len(y)
