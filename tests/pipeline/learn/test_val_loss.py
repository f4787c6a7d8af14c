"""Validation loss on padded multi-device batches: the mean binary cross-entropy of the real
validation images, as one device reports it (issue 19 §4), also after resuming from a checkpoint
compiled without the metric that measures it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import training_workspace

from pipeline.learn.rows import select_rows
from storage.cube import open_cube
from storage.workspace import Workspace

ROOT = Path(__file__).resolve().parents[3]
BATCH = 32  # the val split of 260 galaxies has 36: batches of 32 and 4 + 28 padding

TWO_DEVICES = """
import sys
import keras
from cluster import devices
from pipeline.learn.args import TrainArgs
from pipeline.learn.modeldir import load_model
from pipeline.learn.train import train
devices.prepare("cpu", 2)
settings = dict(workspace=sys.argv[1], batch_size=int(sys.argv[2]), accelerator="cpu", devices=2, augment=False)
train(TrainArgs(epochs=1, **settings))
path = TrainArgs(**settings).workspace.models / "paper" / "checkpoints" / "epoch-0001.keras"
old = load_model(path)  # as a checkpoint written before the val-loss metric: accuracy and AUC only
old.compile(optimizer=old.optimizer, loss="binary_crossentropy",
            weighted_metrics=[keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")])
old.save(path)
train(TrainArgs(epochs=2, **settings))
"""


def mean_bce(model: keras.Model, ws: Workspace) -> float:
    """Binary cross-entropy of ``model`` over the val split's images, by hand: one device, no padding."""
    val = select_rows(ws)["val"]
    images = open_cube(ws.cube, mode="r").read_rows(val.cube_row)
    p = np.clip(model.predict(images, batch_size=len(images), verbose=0)[:, 0].astype(np.float64), 1e-7, 1 - 1e-7)
    y = val.label.astype(np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_val_loss_on_two_devices_is_the_mean_over_the_real_validation_images(tmp_path, backend):
    training_workspace(tmp_path, n=260, image_size=32, learnable=True)
    ws = Workspace(tmp_path)
    n_val = len(select_rows(ws)["val"])
    assert n_val % BATCH, "the val split must leave a padded batch"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": backend}
    done = subprocess.run([sys.executable, "-c", TWO_DEVICES, str(tmp_path), str(BATCH)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 CPUs" in done.stdout
    directory = ws.models / "paper"
    history = json.loads((directory / "history.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2] and not {"bce", "val_bce"} & set(history[0])
    for row in history:  # each checkpoint holds the weights its epoch was validated with
        model = keras.saving.load_model(directory / "checkpoints" / f"epoch-{row['epoch']:04d}.keras")
        assert row["val_loss"] == pytest.approx(mean_bce(model, ws), rel=1e-4), row
    assert json.loads((directory / "state.json").read_text())["history"] == history
    recorded = [h["val_loss"] for h in history]
    assert pd.read_csv(directory / "history.csv")["val_loss"].tolist() == pytest.approx(recorded)
    final = ws.read_manifest("train-paper")["extra"]["final"]
    assert final["val_loss"] == pytest.approx(history[-1]["val_loss"])


def test_the_metric_leaves_out_weight_0_padding_which_keras_loss_counts():
    from pipeline.learn.callbacks import val_loss_metric

    y = np.array([0, 1, 1, 0, 1], np.float32)
    p = np.array([0.2, 0.7, 0.9, 0.4, 0.6], np.float32)[:, None]  # labels (n,), predictions (n, 1), as in training
    by_hand = float(-np.mean(y * np.log(p[:, 0]) + (1 - y) * np.log(1 - p[:, 0])))
    last = np.r_[y[3:], y[3:]], np.r_[p[3:], p[3:]], np.array([1, 1, 0, 0], np.float32)  # 2 real, 2 padding
    metric = val_loss_metric()
    metric.update_state(y[:3], p[:3], sample_weight=np.ones(3, np.float32))
    metric.update_state(*last)
    assert float(metric.result()) == pytest.approx(by_hand, rel=1e-6)
    loss = keras.losses.BinaryCrossentropy()  # Keras' loss divides by the batch size, padding included
    assert float(loss(*last)) == pytest.approx(float(loss(y[3:], p[3:])) / 2, rel=1e-6)


def test_the_callback_puts_the_metric_in_place_of_keras_val_loss():
    from pipeline.learn.callbacks import ValLoss

    logs = {"loss": 0.7, "bce": 0.69, "accuracy": 0.5, "val_loss": 0.34, "val_bce": 0.6, "val_auc": 0.8}
    ValLoss().on_epoch_end(0, logs)
    assert logs == {"loss": 0.7, "accuracy": 0.5, "val_loss": 0.6, "val_auc": 0.8}  # in place: later callbacks see it
    no_validation = {"loss": 0.7, "bce": 0.69}
    ValLoss().on_epoch_end(0, no_validation)
    assert no_validation == {"loss": 0.7}
