"""Scoring throughput, side by side with its ceilings, in ONE run on the same machine:

1. **score from a cube**: ``agnsurvey score`` of a workspace's cube (``--images`` 128×128 images,
   the paper's CNN) on a LocalCluster of ``--workers`` worker processes, against the **ceiling**:
   ``model.predict`` in this process on the same images already in memory (same batch size).
   ``cold`` includes each worker's first model load (and Keras import); ``warm`` is a re-run with
   ``--restart`` on the same cluster (models already loaded): the steady-state rate.
2. **streaming fetch + score** against the offline sky server (``--latency`` s per answer, and a
   polite ``--rate`` requests/s, as a real service needs): ``score CATALOG`` from nothing (ingest,
   fetch every row, score each shard as soon as it is written), against **fetch alone** (the same
   rows fetched into another workspace). Ratio 1.0: scoring costs no time beyond the fetch.

    python benchmarks/bench_score.py [--images 4096] [--workers 2] [--stream-galaxies 2048]
                                     [--latency 0.1] [--rate 50] [--quick]

Prints a table and writes ``benchmarks/results/bench_score-<timestamp>.json``. With a GPU (a lent
device), the cube part shows images/s of scoring on it (``--workers 1`` keeps one model per GPU).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import Table, arg_parser, machine_info, report, summary_row  # noqa: E402
from bench_train import make_cube  # noqa: E402

BATCH = 256


def model_directory(path: Path, image_size: int) -> Path:
    """The paper's CNN (untrained: the rate does not depend on the weights), saved as train does,
    with a threshold.json as evaluate writes it."""
    from pipeline.learn.model import build_model
    from storage.manifest import file_checksum

    path.mkdir(parents=True, exist_ok=True)
    build_model("paper", image_size).save(path / "model.keras")
    stored = {"threshold": 0.5, "policy": "fixed:0.5", "chosen_on": "val",
              "model_checksum": file_checksum(path / "model.keras")}
    (path / "threshold.json").write_text(json.dumps(stored))
    return path


def ceiling(model_dir: Path, ws: Path, n: int) -> dict[str, Any]:
    """The compute ceiling of this machine: the images held in memory, scored by ``model.predict``
    (Keras' own loop) and by ``predict_on_batch`` over fixed batches (no input pipeline at all); the
    faster of the two is the ceiling."""
    import keras

    from storage.cube import open_cube

    images = open_cube(ws / "cube.zarr", mode="r").read_block(0, n)
    model = keras.saving.load_model(model_dir / "model.keras", compile=False)
    model.predict(images[:BATCH], batch_size=BATCH, verbose=0)  # compile both paths
    model.predict_on_batch(images[:BATCH])
    start = time.perf_counter()
    model.predict(images, batch_size=BATCH, verbose=0)
    predict_s = time.perf_counter() - start
    start = time.perf_counter()
    for first in range(0, n - BATCH + 1, BATCH):
        model.predict_on_batch(images[first : first + BATCH])
    batches_s = time.perf_counter() - start
    rates = {"model.predict": n / predict_s, "predict_on_batch": (n - n % BATCH) / batches_s}
    return {"images": n, "images_per_s_by_method": rates, "images_per_s": max(rates.values())}


def cube_catalog(ws: Path, n: int) -> None:
    """The catalog beside :func:`make_cube`'s cube (score reads ids and positions from it)."""
    import numpy as np
    import pandas as pd

    from storage.hats_catalog import write_frame
    from storage.healpix import healpix29

    rng = np.random.default_rng(0)
    ra, dec = rng.uniform(0, 360, n), rng.uniform(-10, 10, n)
    sky = np.argsort(healpix29(ra, dec), kind="stable")  # cube rows in sky order, as ingest numbers them
    write_frame(pd.DataFrame({"objid": np.arange(n), "cube_row": np.arange(n), "ra": ra[sky], "dec": dec[sky],
                              "radius_arcsec": np.full(n, 5.0, np.float32)}), ws / "catalog", "catalog")  # fmt: skip


def score_cube(model_dir: Path, ws: Path, client: Any) -> dict[str, Any]:
    from pipeline.score.args import ScoreArgs
    from pipeline.score.score import score

    out = {}
    for run in ("cold", "warm"):
        args = ScoreArgs(workspace=ws, model=str(model_dir), batch_size=BATCH, restart=True)
        start = time.perf_counter()
        manifest = score(args, client=client)
        seconds = time.perf_counter() - start
        out[run] = {"images": manifest.rows_out, "seconds": seconds, "images_per_s": manifest.rows_out / seconds}
    return out


def stream(model_dir: Path, data: Path, galaxies: int, latency: float, rate: float, client: Any) -> dict[str, Any]:
    """Fetch alone, then fetch + score from nothing, against one offline server."""
    import dask

    from pipeline.catalog.args import IngestArgs
    from pipeline.catalog.ingest import ingest
    from pipeline.images.args import FetchArgs
    from pipeline.images.fetch import fetch
    from pipeline.score.args import ScoreArgs
    from pipeline.score.score import score
    from pipeline.synthetic.args import SkyArgs
    from pipeline.synthetic.catalog import SKY_FITS, make_sky
    from pipeline.synthetic.server import serve_in_background
    from pipeline.synthetic.server_config import build_server_config

    with dask.config.set(scheduler="synchronous"):
        make_sky(SkyArgs(out=data / "sky", n=galaxies, seed=7))
    catalog = str(data / "sky" / SKY_FITS)
    settings = dict(rate=rate, concurrency=32, shard_images=64, inner_images=8)
    with serve_in_background(build_server_config(None, catalog=(catalog,), latency_s=latency)) as server:
        only = data / "fetch-only"
        ingest(IngestArgs(workspace=only, inputs=(catalog,)), client=client)
        start = time.perf_counter()
        fetched = fetch(FetchArgs(workspace=only, cutout_url=server.url, rows="all", **settings), client=client)
        fetch_s = time.perf_counter() - start
        both = data / "fetch-and-score"
        args = ScoreArgs(workspace=both, model=str(model_dir), inputs=(catalog,), batch_size=BATCH,
                         fetch=FetchArgs(workspace=both, cutout_url=server.url, **settings))  # fmt: skip
        start = time.perf_counter()
        scored = score(args, client=client)
        both_s = time.perf_counter() - start
    return {
        "galaxies": galaxies, "latency_s": latency, "rate_limit": rate,
        "fetch_only": {"ok": fetched.rows_out, "seconds": fetch_s, "images_per_s": galaxies / fetch_s},
        "fetch_and_score": {"scored": scored.rows_out, "seconds": both_s, "images_per_s": galaxies / both_s,
                            "includes": "ingest of the catalog, fetch, score, writing the scores"},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser(__doc__)
    parser.add_argument("--images", type=int, default=4096, help="images in the cube (default 4096)")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (default 2)")
    parser.add_argument("--stream-galaxies", type=int, default=2048, help="galaxies fetched and scored (default 2048)")
    parser.add_argument("--latency", type=float, default=0.1, help="offline server latency, s (default 0.1)")
    parser.add_argument("--rate", type=float, default=50.0, help="polite request rate, requests/s (default 50)")
    parser.add_argument("--quick", action="store_true", help="a small check: 2,048 images, 256 galaxies")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.stream_galaxies = 2048, 256
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from distributed import Client, LocalCluster

    machine = machine_info(extra_packages=("keras", "tensorflow", "tensorflow-cpu", "jax", "zarr"))
    data = Path(tempfile.mkdtemp(prefix="bench-score-"))
    try:
        ws = data / "cube-ws"
        cube = make_cube(ws, args.images)
        cube_catalog(ws, args.images)
        model_dir = model_directory(data / "model", 128)
        print(f"ceiling: model.predict on {args.images:,} images in memory ...", flush=True)
        top = ceiling(model_dir, ws, args.images)
        with (
            LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                         silence_logs=logging.ERROR) as cluster,
            Client(cluster) as client,
        ):  # fmt: skip
            print(f"score from the cube on {args.workers} workers (cold, then warm) ...", flush=True)
            scored = score_cube(model_dir, ws, client)
            print(f"fetch alone, then fetch + score, {args.stream_galaxies:,} galaxies ...", flush=True)
            streamed = stream(model_dir, data, args.stream_galaxies, args.latency, args.rate, client)
    finally:
        shutil.rmtree(data, ignore_errors=True)

    fo, fs = streamed["fetch_only"], streamed["fetch_and_score"]
    summary = [
        summary_row("score from cube (warm)", f"{args.images:,} images, {args.workers} workers",
                    scored["warm"]["images_per_s"], "img/s", "in-memory ceiling", top["images_per_s"]),
        summary_row("score from cube (cold)", f"{args.images:,} images, {args.workers} workers",
                    scored["cold"]["images_per_s"], "img/s", "in-memory ceiling", top["images_per_s"]),
        summary_row("fetch + score (streaming)", f"{args.stream_galaxies:,} galaxies, {args.rate:g} req/s, "
                    f"latency {args.latency:g} s", fs["images_per_s"], "img/s", "fetch alone", fo["images_per_s"]),
    ]  # fmt: skip
    rows = [{"measure": r["stage"], "work": r["work"], "img/s": f"{r['rate']:,.1f}", "reference": r["reference"],
             "ref img/s": f"{r['reference_rate']:,.1f}", "ratio": f"{r['ratio']:.2f}"} for r in summary]  # fmt: skip
    rates = ", ".join(f"{k} {v:,.0f}" for k, v in top["images_per_s_by_method"].items())
    notes = [f"in-memory ceiling: the faster of {rates} img/s (this process, all cores)",
             "aims: warm score >= 0.85 of the ceiling; streaming fetch + score >= 0.9 of fetch alone"]  # fmt: skip
    command = " ".join(["benchmarks/bench_score.py", *sys.argv[1:]])
    parameters = vars(args) | {"batch_size": BATCH, "command": command}
    payload = {"parameters": parameters, "cube": cube, "ceiling": top, "score": scored, "stream": streamed}
    table = Table(rows, list(rows[0]), right=["img/s", "ref img/s", "ratio"])
    report("bench_score", machine, payload, [table], notes, summary=summary, notes_key=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
