"""Training throughput: the real input pipeline (cube on disk → batches → fit) against the compute
ceiling (the same model and batch size fed from memory), per Keras backend installed.

In ONE run, for every backend (TensorFlow, JAX; each in its own process, since Keras picks its
backend at import), on the same cube:

1. **ceiling**: ``model.fit`` on the same batches already in memory (a ``PyDataset`` over a list:
   Keras' own input path, no reading, shuffling or augmentation): what the device can do with this
   model and batch size.
2. **pipeline**: ``model.fit`` on :class:`pipeline.learn.batches.CubeBatches` over the Zarr cube on disk
   (random block order, shuffle buffer, flips/rotations, reader threads, prefetch), as ``train``
   runs it. ``x ceiling`` = pipeline / ceiling: how much of the device the reader keeps busy.
3. **reader alone**: the same batches, no model: the reader's own rate (its ceiling on this CPU).

The cube holds more images than the shuffle buffer (default 4,096 images of 128×128×3, ~200 MB,
buffer 1,024), so memory is bounded by the buffer, not the cube: peak RSS above the process's
baseline is reported for the pipeline run (reader and model: JAX's CPU backend holds ~2 GB of
activations for this model) and for the reader alone. Images are smooth noise (they compress about like
cutouts); every rate is the best epoch of one 3-epoch fit (an epoch = ``--steps`` batches, one
``fit`` as ``train`` runs it), after a warm-up fit (compilation). The last column projects the paper's
run (10 epochs of 141,305 galaxies, 75 % of them training images: the paper took ~30 hours).

    python benchmarks/bench_train.py [--images 4096] [--steps 30] [--batch-size 64] [--buffer 1024]
                                     [--backends tensorflow jax] [--quick]

Prints a table and writes ``benchmarks/results/bench_train-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from importlib import util as importlib_util
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import Table, arg_parser, machine_info, report, summary_row  # noqa: E402

PAPER_IMAGES = 141_305
PAPER_TRAIN_FRACTION = 0.75
PAPER_HOURS = 30.0


def make_cube(path: Path, n: int, image_size: int = 128, seed: int = 0) -> dict[str, Any]:
    """A cube of ``n`` smooth-noise images with labels (WS/labels + WS/cube.zarr), all ``ok``."""
    import numpy as np
    import pandas as pd

    from pipeline.catalog.splits import SPLITS, split_codes
    from storage.cube import CubeLayout, create_cube
    from storage.hats_catalog import write_frame

    rng = np.random.default_rng(seed)
    objid = np.arange(n, dtype=np.int64)
    split = pd.Categorical.from_codes(split_codes(objid), categories=list(SPLITS))
    labels = pd.DataFrame({"objid": objid, "cube_row": objid, "label": (rng.random(n) < 0.4).astype(np.int8),
                           "split": split, "ra": rng.uniform(0, 360, n), "dec": rng.uniform(-10, 10, n)})  # fmt: skip
    write_frame(labels, path / "labels", "labels")
    layout = CubeLayout(n, image_size)
    cube = create_cube(path / "cube.zarr", layout, objid, np.ones(n, np.float32), np.zeros(n, np.int8), {})
    coarse = image_size // 8
    for shard in range(layout.n_shards):
        rows = layout.shard_rows(shard)
        low = rng.integers(0, 200, (len(rows), coarse, coarse, 3)).astype(np.uint8)
        images = low.repeat(8, axis=1).repeat(8, axis=2) + rng.integers(0, 12, (len(rows), image_size, image_size, 3),
                                                                        dtype=np.uint8)  # fmt: skip
        cube.write_shard(shard, images, np.ones(len(rows), np.int8))
    size = sum(f.stat().st_size for f in (path / "cube.zarr").rglob("*") if f.is_file())
    return {"images": n, "cube_bytes": size, "bytes_per_image": round(size / n, 1)}


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 20 ms)."""

    def __init__(self) -> None:
        import psutil

        self.process, self.peak, self.stop = psutil.Process(), 0, threading.Event()

    def __enter__(self) -> PeakRSS:
        self.base = self.process.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def measure_backend(ws: Path, steps: int, batch_size: int, buffer: int, model_name: str) -> dict[str, Any]:
    """In this process (its backend already chosen): ceiling, pipeline and reader-alone rates."""
    import keras

    from pipeline.learn.batches import CubeBatches
    from pipeline.learn.model import build_model
    from pipeline.learn.rows import Rows, select_rows
    from storage.workspace import Workspace

    rows = select_rows(Workspace(ws))["train"]
    images = steps * batch_size
    if len(rows) < images:
        raise SystemExit(f"the cube has {len(rows)} training images, fewer than --steps x --batch-size = {images}")
    rows = Rows(rows.cube_row[:images], rows.label[:images], rows.objid[:images])  # an epoch = ``steps`` batches

    def reader() -> CubeBatches:
        return CubeBatches(ws / "cube.zarr", rows, batch_size, shuffle=True, augment_images=True,
                           shuffle_buffer=buffer, seed=1)  # fmt: skip

    class InMemory(keras.utils.PyDataset):
        """The same batches as the reader makes, already in memory: Keras' own input path, no reading."""

        def __init__(self, source: CubeBatches) -> None:
            super().__init__()
            self.batches = [source[i] for i in range(steps)]
            source.close()

        def __len__(self) -> int:
            return steps

        def __getitem__(self, index: int) -> tuple:
            return self.batches[index]

    class EpochTimes(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            runs.setdefault(self.label, []).append(round(images / (time.perf_counter() - self.started), 1))

    runs: dict[str, list[float]] = {}

    def timed(data: Any, label: str) -> float:
        """Best epoch of one ``fit`` of 3 epochs, as ``train`` runs it (one fit, whole epochs, the
        reader restarting each epoch), after a warm-up fit (compilation). TensorFlow on the 2-core
        development VM runs some epochs at half speed, with the batches in memory too: every
        epoch's rate is kept in ``runs``."""
        keras.utils.set_random_seed(0)
        model = build_model(model_name, 128)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
        model.fit(data, epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)
        clock = EpochTimes()
        clock.label = label
        model.fit(data, epochs=3, verbose=0, shuffle=False, callbacks=[clock])  # the reader shuffles
        return max(runs[label])

    ceiling = timed(InMemory(reader()), "ceiling")
    batches = reader()
    with PeakRSS() as memory:
        pipeline = timed(batches, "pipeline")
    batches.close()

    alone = reader()
    alone.set_epoch(3)
    n_batches = len(alone)
    with PeakRSS() as reader_memory:
        start = time.perf_counter()
        for i in range(n_batches):
            alone[i]
        reader_rate = n_batches * batch_size / (time.perf_counter() - start)
    alone.on_epoch_end()
    devices = [str(d) for d in keras.distribution.list_devices()] if keras.backend.backend() == "jax" else []
    return {
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "devices": devices or ["default"],
        "model": model_name,
        "batch_size": batch_size,
        "steps": steps,
        "train_rows": len(rows),
        "ceiling_images_per_s": round(ceiling, 1),
        "pipeline_images_per_s": round(pipeline, 1),
        "ratio_to_ceiling": round(pipeline / ceiling, 3),
        "runs_images_per_s": runs,
        "reader_alone_images_per_s": round(reader_rate, 1),
        "peak_rss_above_base_mib": round((memory.peak - memory.base) / 2**20, 1),
        "reader_peak_rss_above_base_mib": round((reader_memory.peak - reader_memory.base) / 2**20, 1),
        "shuffle_buffer_mib": round(buffer * 128 * 128 * 3 / 2**20, 1),
        "epochs_10_of_paper_hours": round(10 * PAPER_IMAGES * PAPER_TRAIN_FRACTION / pipeline / 3600, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser(__doc__)
    parser.add_argument("--images", type=int, default=4096, help="images in the cube (default 4096)")
    parser.add_argument("--steps", type=int, default=30, help="batches per timed epoch (default 30)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--buffer", type=int, default=1024, help="shuffle buffer, images (default 1024)")
    parser.add_argument("--model", default="paper")
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax"])
    parser.add_argument("--quick", action="store_true", help="a small check: 1,536 images, 8 steps")
    parser.add_argument("--workspace", type=Path, help="keep the cube here (default: a temporary directory)")
    parser.add_argument("--_measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.steps, args.buffer = 1536, 8, 512
    if args._measure:
        result = measure_backend(args._measure, args.steps, args.batch_size, args.buffer, args.model)
        print("RESULT " + json.dumps(result))
        return 0

    machine = machine_info(extra_packages=("keras", "tensorflow", "tensorflow-cpu", "jax", "jaxlib", "zarr"))
    ws = args.workspace or Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        if not (ws / "cube.zarr").exists():
            cube = make_cube(ws, args.images)
        else:
            cube = {"images": args.images, "reused": str(ws)}
        results = []
        for backend in args.backends:
            module = "tensorflow" if backend == "tensorflow" else backend
            if importlib_util.find_spec(module) is None:
                print(f"{backend}: not installed, skipped")
                continue
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
            cmd = [sys.executable, __file__, "--_measure", str(ws), "--steps", str(args.steps), "--batch-size",
                   str(args.batch_size), "--buffer", str(args.buffer), "--model", args.model]  # fmt: skip
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode or not lines:
                print(f"{backend}: failed\n{done.stderr[-2000:]}")
                continue
            results.append(json.loads(lines[-1].removeprefix("RESULT ")))
    finally:
        if not args.workspace:
            shutil.rmtree(ws, ignore_errors=True)
    rows = [{"backend": r["backend"], "devices": ",".join(r["devices"]), "model": r["model"],
             "batch": r["batch_size"], "ceiling img/s": r["ceiling_images_per_s"],
             "pipeline img/s": r["pipeline_images_per_s"], "x ceiling": f"{r['ratio_to_ceiling']:.2f}",
             "reader alone img/s": r["reader_alone_images_per_s"],
             "fit peak RSS MiB": f"{r['peak_rss_above_base_mib']:.0f}",
             "reader peak RSS MiB": f"{r['reader_peak_rss_above_base_mib']:.0f} (buffer {r['shuffle_buffer_mib']:.0f})",
             "10 paper epochs h": r["epochs_10_of_paper_hours"]} for r in results]  # fmt: skip
    table = Table(rows, list(rows[0]) if rows else ["backend"],
                  right=["batch", "ceiling img/s", "pipeline img/s", "x ceiling", "reader alone img/s",
                         "10 paper epochs h"], key=None,
                  heading=f"\ncube: {cube}; the paper: 10 epochs in ~{PAPER_HOURS:.0f} h")  # fmt: skip
    summary = [summary_row(f"train ({r['backend']}, {r['model']})", f"{args.steps} batches of {args.batch_size}",
                           r["pipeline_images_per_s"], "img/s", "in-memory ceiling", r["ceiling_images_per_s"])
               for r in results]  # fmt: skip
    payload = {"parameters": vars(args) | {"workspace": str(args.workspace)}, "cube": cube, "results": results}
    report("bench_train", machine, payload, [table], summary=summary, notes_key=None)
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
