"""The device side of ``gpu_check.py``: the measurements that run in the one process holding the
accelerators (started as ``gpu_check.py --_measure DATA``, after :func:`cluster.devices.prepare`).

Each measurement prints one ``PART {json}`` line the moment it is done, so a run stopped at its
deadline keeps what it measured:

- ``train`` (:func:`train_rates`): one model (``build_model``) under the mixed-precision policy on
  one :class:`~cluster.devices.Placement` (one device, or all of them under the Keras distribution
  of ``devices.distributed``, as ``train`` places a model). The ceiling is ``model.fit`` on the
  batches already in memory (numpy arrays: Keras' own input path, nothing read); then the same
  compiled model is fed by :class:`~pipeline.learn.batches.CubeBatches` over the cube on disk, as
  ``train`` reads it (random block order, shuffle buffer, flips/rotations, reader threads).
  Every epoch's optimizer steps are read back from the optimizer: what really ran.
- ``score_device`` (:func:`score_rates`): the ``score`` stage in this process (no cluster) on the
  cube, cold then warm, beside the in-memory scoring ceiling (``bench_score.ceiling``).
- ``reader`` (:func:`reader_rates`): the batch reader alone, no model: images/s and images per
  second of CPU time (per busy core).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cluster import devices
from pipeline.learn.batches import CubeBatches
from pipeline.learn.model import build_model
from pipeline.learn.rows import Rows, select_rows
from storage.workspace import Workspace

WARMUP_STEPS = 2  # one short fit first: compilation, not timed


def emit(part: str, **values: Any) -> None:
    """One result line for ``gpu_check.py`` (which reads every ``PART`` line of this process);
    ``part``: train, score_device, reader, devices or skipped."""
    print("PART " + json.dumps({"part": part, **values}, default=str), flush=True)


def training_rows(ws: Path, n: int) -> Rows:
    """The first ``n`` rows of the cube's train split; SystemExit when it holds fewer."""
    rows = select_rows(Workspace(ws))["train"]
    if len(rows) < n:
        raise SystemExit(f"the cube has {len(rows)} training images, fewer than the {n} a measurement needs")
    return Rows(rows.cube_row[:n], rows.label[:n], rows.objid[:n])


def device_names(where: devices.Placement) -> list[str]:
    """The devices ``where`` uses: platform:id and model (e.g. 'gpu:0 NVIDIA H100 80GB HBM3')."""
    if devices.backend() != "jax":
        return [str(d) for d in devices.gpus()[: where.local]] or ["default"]
    import jax

    return [f"{d.platform}:{d.id} {d.device_kind}" for d in jax.local_devices(backend=where.kind)[: where.local]]


class EpochClock(keras.callbacks.Callback):
    """Optimizer steps and seconds of every epoch of one ``fit``. The steps are read from the
    optimizer at the epoch's end, which also waits for the device to finish the last one."""

    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[tuple[int, float]] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.first = int(self.model.optimizer.iterations)
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        steps = int(self.model.optimizer.iterations) - self.first
        self.epochs.append((steps, time.perf_counter() - self.started))


def timed_fit(model: keras.Model, batch: int, epochs: int, *data: Any, **fit: Any) -> dict[str, Any]:
    """``epochs`` epochs of one ``fit`` on ``data``: images and img/s of each epoch; the best epoch
    is the rate (the first may carry a reader's start-up)."""
    clock = EpochClock()
    model.fit(*data, epochs=epochs, verbose=0, shuffle=False, callbacks=[clock], **fit)
    steps = [s for s, _ in clock.epochs]
    rates = [round(s * batch / seconds, 1) for s, seconds in clock.epochs]
    return {"steps_per_epoch": steps, "images_per_epoch": [s * batch for s in steps],
            "seconds_per_epoch": [round(seconds, 4) for _, seconds in clock.epochs],
            "epochs_images_per_s": rates, "images_per_s": max(rates)}  # fmt: skip


def train_rates(ws: Path, model_name: str, where: devices.Placement, batch_per_device: int, steps: int, epochs: int,
                buffer: int) -> dict[str, Any]:  # fmt: skip
    """Training img/s of ``model_name`` on ``where``: the in-memory ceiling, then the cube reader
    feeding the same compiled model. The global batch is ``batch_per_device`` x devices."""
    batch = batch_per_device * where.total
    rows = training_rows(ws, steps * batch)

    def reader() -> CubeBatches:
        return CubeBatches(ws / "cube.zarr", rows, batch, shuffle=True, augment_images=True, shuffle_buffer=buffer,
                           seed=1)  # fmt: skip

    with reader() as source:
        x, y, w = (np.concatenate(part) for part in zip(*(source[i] for i in range(steps)), strict=True))
    with devices.distributed(where):
        model = build_model(model_name, x.shape[1])
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
        started = time.perf_counter()
        model.fit(x, y, sample_weight=w, batch_size=batch, epochs=1, steps_per_epoch=WARMUP_STEPS, verbose=0,
                  shuffle=False)  # fmt: skip
        compile_s = time.perf_counter() - started
        ceiling = timed_fit(model, batch, epochs, x, y, sample_weight=w, batch_size=batch)
        with reader() as batches:
            pipeline = timed_fit(model, batch, epochs, batches)
    return {
        "model": model_name, "parameters": model.count_params(), "placement": where.describe(), "devices": where.total,
        "device_names": device_names(where), "policy": keras.mixed_precision.dtype_policy().name,
        "batch_size": batch, "batch_per_device": batch_per_device, "steps": steps, "epochs": epochs,
        "image_size": int(x.shape[1]), "shuffle_buffer": buffer, "warmup_and_compile_s": round(compile_s, 2),
        "ceiling": ceiling, "pipeline": pipeline,
        "ratio_to_ceiling": round(pipeline["images_per_s"] / ceiling["images_per_s"], 3),
    }  # fmt: skip


def score_rates(data: Path, image_size: int, where: devices.Placement) -> dict[str, Any]:
    """The ``score`` stage in this process on the whole cube (cold: model load and compile; warm:
    the model already loaded), beside the in-memory ceiling; the model is saved for the cluster row."""
    from bench_score import BATCH, ceiling, model_directory, score_cube

    from storage.cube import open_cube

    ws = data / "ws"
    model_dir = model_directory(data / "model", image_size)  # the paper CNN under this process's policy
    n = open_cube(ws / "cube.zarr", mode="r").layout.n
    top = ceiling(model_dir, ws, n)
    scored = score_cube(model_dir, ws, None)
    return {"model": "paper", "model_dir": str(model_dir), "placement": where.describe(), "images": n,
            "batch_size": BATCH, "policy": keras.mixed_precision.dtype_policy().name, "ceiling": top,
            "score": scored}  # fmt: skip


def reader_rates(ws: Path, n: int, batch: int, buffer: int, readers: int) -> dict[str, Any]:
    """The batch reader alone (no model), with 1 and with ``readers`` reader threads: images/s, and
    images per CPU second of this process (every thread counted): what one busy core delivers."""
    rows = training_rows(ws, n)
    out = []
    for threads in sorted({1, readers}):
        with CubeBatches(ws / "cube.zarr", rows, batch, shuffle=True, augment_images=True, shuffle_buffer=buffer,
                         seed=2, readers=threads) as batches:  # fmt: skip
            wall, cpu = time.perf_counter(), time.process_time()
            images = sum(len(batches[i][0]) for i in range(len(batches)))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        out.append({"readers": threads, "batches": len(batches), "batch_size": batch, "images": images,
                    "seconds": round(wall, 4), "cpu_s": round(cpu, 4), "images_per_s": round(images / wall, 1),
                    "images_per_core_s": round(images / max(cpu, 1e-9), 1)})  # fmt: skip
    return {"shuffle_buffer": buffer, "runs": out}


def measure(data: Path, accelerator: str, models: list[str], batch_per_device: int, steps: int, epochs: int,
            buffer: int, readers: int, deadline: float, min_left_s: float) -> int:  # fmt: skip
    """Every measurement in turn (the first model's rows, scoring and the reader first: what matters
    most if time runs out), each skipped with the reason when fewer than ``min_left_s`` seconds
    remain before ``deadline`` (epoch seconds)."""
    from storage.cube import open_cube

    ws = data / "ws"
    one = devices.placement(accelerator, 1)
    every = devices.placement(accelerator, None if accelerator == "gpu" else 2)
    emit("devices", platform=every.kind, count=every.total, names=device_names(every), backend=devices.backend(),
         policy=keras.mixed_precision.dtype_policy().name)  # fmt: skip
    image_size = open_cube(ws / "cube.zarr", mode="r").layout.image_size
    placements = [one, every] if every.total > 1 else [one]
    plan: list[tuple[str, str, Any]] = []
    for i, name in enumerate(models):
        for where in placements:
            plan.append(("train", f"train {name} on {where.describe()}",
                         (train_rates, ws, name, where, batch_per_device, steps, epochs, buffer)))  # fmt: skip
        if i == 0:
            plan.append(("score_device", "score from the cube on one device", (score_rates, data, image_size, one)))
            batch = batch_per_device * every.total
            plan.append(("reader", "batch reader alone", (reader_rates, ws, steps * batch, batch, buffer, readers)))
    for kind, what, (function, *arguments) in plan:
        left = deadline - time.time()
        if left < min_left_s:
            emit("skipped", what=what, reason=f"deadline: {left:.0f} s left of the run's budget")
            continue
        print(f"{what} ...", flush=True)
        started = time.perf_counter()
        result = function(*arguments)
        emit(kind, what=what, seconds=round(time.perf_counter() - started, 2), **result)
    return 0
