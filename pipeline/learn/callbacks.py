"""Keras callbacks of ``train``: the reader's epoch, atomic checkpoints with history, a progress bar.

Imported only once the training process has set up its devices (importing Keras picks a backend).
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import keras
import pandas as pd

from cluster.client import progress_enabled
from storage.fence import Fence
from storage.manifest import atomic_file, write_json_atomic


def fenced(fence: Fence | None, writer: bool) -> contextlib.AbstractContextManager:
    """The writer's saves of a training on workers happen under its attempt's fence (a process of
    an attempt given up, still running, writes nothing); a no-op elsewhere."""
    return fence.hold() if fence is not None and writer else contextlib.nullcontext()


def save_atomic(model: keras.Model, path: Path, writer: bool = True) -> None:
    """``model.save`` to a temporary name, then rename: a killed run never leaves half a file.

    With several training processes every one must save (reading weights spread over processes is
    a collective); only the ``writer`` keeps its file."""
    if writer:
        with atomic_file(path) as tmp:
            model.save(tmp)
        return
    with tempfile.TemporaryDirectory(prefix="agnsurvey-save-") as scratch:
        model.save(Path(scratch) / path.name)


class SetEpoch(keras.callbacks.Callback):
    """Tells the reader which epoch starts, so a resumed run reads that epoch's order."""

    def __init__(self, batches: Any) -> None:
        super().__init__()
        self.batches = batches

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.batches.set_epoch(epoch)


VAL_LOSS_METRIC = "bce"
"""The name of :func:`val_loss_metric`, whose validation figure :class:`ValLoss` reports as ``val_loss``."""


def val_loss_metric() -> keras.metrics.Metric:
    """Per-image binary cross-entropy, averaged by sample weight (compile it in ``weighted_metrics``).

    It is built from Keras' own classes only, so a saved model still loads with a plain
    ``keras.saving.load_model``. The loss object is used because it matches labels of shape (n,)
    to predictions of shape (n, 1); ``keras.metrics.BinaryCrossentropy`` refuses them."""
    return keras.metrics.MeanMetricWrapper(keras.losses.BinaryCrossentropy(reduction="none"), name=VAL_LOSS_METRIC)


class ValLoss(keras.callbacks.Callback):
    """Reports ``val_loss`` as the mean binary cross-entropy of the real validation images.

    Validation batches padded for several devices hold copies at weight 0. Keras' own
    ``val_loss`` divides each batch's weighted sum by the batch size, padding included, so it comes
    out too small by real / (real + padding). A weighted metric divides by the sum of the weights,
    which leaves the padding out. This callback puts the metric's ``val_bce`` in place of
    ``val_loss`` and drops the metric's own keys (they would only repeat the losses). It must come
    first in the list, because it edits the logs in place for the callbacks after it and for
    Keras' History. (The models have no regularisation losses, so the two figures measure the
    same thing.)
    """

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None:
            return
        if f"val_{VAL_LOSS_METRIC}" in logs:
            logs["val_loss"] = logs.pop(f"val_{VAL_LOSS_METRIC}")
        logs.pop(VAL_LOSS_METRIC, None)


class EpochClock(keras.callbacks.Callback):
    """Times each epoch: all of it, and its training part alone (until validation starts), for
    the training rate in images/s (``images`` real training images per epoch)."""

    def __init__(self, images: int) -> None:
        super().__init__()
        self.images, self.started, self.trained = images, time.monotonic(), None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started, self.trained = time.monotonic(), None

    def on_test_begin(self, logs: dict | None = None) -> None:
        self.trained = self.trained or time.monotonic()

    def times(self) -> dict[str, float | None]:
        now = time.monotonic()
        train_s = (self.trained or now) - self.started
        return {"seconds": round(now - self.started, 3), "train_seconds": round(train_s, 3),
                "images_per_second": round(self.images / train_s, 2) if train_s > 0 else None}  # fmt: skip


class Checkpoint(EpochClock):
    """After every epoch: ``checkpoints/epoch-NNNN.keras`` (written, then renamed), the history
    (JSON and CSV), then ``state.json``, the commit point a resumed run starts from; then the
    checkpoints other than the last ``keep`` and the best (lowest ``val_loss``) are deleted."""

    def __init__(self, directory: Path, state: dict[str, Any], images_per_epoch: int, writer: bool = True,
                 keep: int = 3, fence: Fence | None = None) -> None:  # fmt: skip
        super().__init__(images_per_epoch)
        self.directory, self.history, self.writer, self.keep = directory, list(state["history"]), writer, keep
        self.fence = fence

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}, **self.times()}
        self.history = [h for h in self.history if h["epoch"] < epoch + 1] + [row]
        with fenced(self.fence, self.writer):
            self._save(epoch)

    def _save(self, epoch: int) -> None:
        name = f"checkpoints/epoch-{epoch + 1:04d}.keras"
        if self.writer:
            (self.directory / "checkpoints").mkdir(parents=True, exist_ok=True)
        save_atomic(self.model, self.directory / name, self.writer)
        if not self.writer:
            return
        write_json_atomic(self.directory / "history.json", {"history": self.history})
        with atomic_file(self.directory / "history.csv") as tmp:
            pd.DataFrame(self.history).to_csv(tmp, index=False)
        write_json_atomic(self.directory / "state.json",
                          {"epochs_done": epoch + 1, "checkpoint": name, "history": self.history})  # fmt: skip
        for old in checkpoints_to_prune(self.directory / "checkpoints", self.history, self.keep):
            old.unlink(missing_ok=True)


def checkpoints_to_prune(directory: Path, history: list[dict[str, Any]], keep: int) -> list[Path]:
    """The epoch checkpoints in ``directory`` other than the last ``keep`` epochs' and the best epoch's
    (lowest ``val_loss`` in ``history``; none without one)."""
    files = {int(p.stem.split("-")[1]): p for p in directory.glob("epoch-*.keras") if p.stem.split("-")[1].isdigit()}
    scored = [h for h in history if isinstance(h.get("val_loss"), int | float) and h["val_loss"] == h["val_loss"]]
    kept = set(sorted(files)[-keep:]) | ({min(scored, key=lambda h: h["val_loss"])["epoch"]} if scored else set())
    return [files[e] for e in sorted(files) if e not in kept]


class Progress(EpochClock):
    """A bar per epoch (batches, loss, images/s) on a terminal; one line per finished epoch."""

    def __init__(self, epochs: int, batch_size: int, images: int) -> None:
        super().__init__(images)
        self.epochs, self.batch_size, self.show, self.epoch = epochs, batch_size, progress_enabled(), 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        super().on_epoch_begin(epoch, logs)
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if not self.show:
            return
        total = self.params.get("steps") or 0
        rate = (batch + 1) * self.batch_size / max(time.monotonic() - self.started, 1e-9)
        filled = int(30 * (batch + 1) / total) if total else 0
        loss = float((logs or {}).get("loss", float("nan")))
        print(f"\repoch {self.epoch + 1}/{self.epochs} [{'#' * filled}{'.' * (30 - filled)}] {batch + 1}/{total}"
              f"  loss {loss:.4f}  {rate:,.0f} img/s", end="", file=sys.stderr, flush=True)  # fmt: skip

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        from pipeline.learn.modeldir import epoch_line

        if self.show:
            print(file=sys.stderr)
        times = self.times()
        print(epoch_line(epoch + 1, self.epochs, {**(logs or {}), **times}, times["seconds"]), flush=True)
