"""Fetch throughput: agnsurvey's cutout client and ``fetch`` stage against the paper's loop and ``legacystamps``.

Every method is aimed at the same offline cutout server (``agnsurvey sky serve``, the Legacy
Surveys viewer's URL API on 127.0.0.1) with a fixed injected latency per answer (default 50 ms, a
plausible round trip to the real service), in ONE run on the same machine and the same images:

1. **agnsurvey client**: :func:`pipeline.images.client.fetch_many` alone (one asyncio loop, one aiohttp
   session, decode + validate + resize 250 → 128 px in the loop) at concurrency 1, 8, 32, 64, 128
   with the politeness rate limit effectively off (1e6 requests/s). With latency L and C requests
   in flight, the ideal is C / L images/s; the measurement says how close the client gets.
2. **fetch stage**: the whole ``fetch`` stage (labels → Zarr cube, shard tasks, cube writes, status,
   manifest) at concurrency 64 in one process (``client=None``) and on a ``LocalCluster`` of W
   single-threaded worker processes (started before timing; the concurrency is shared out).
3. **sequential loop** (what the paper did): ``urllib.request.urlopen`` each URL, one after another,
   and write the JPEG to a file. Its ideal is 1 / L.
4. **legacystamps** (PyPI package, installed into this environment when the benchmark runs, never a
   project dependency): ``legacystamps.download`` on the same galaxies, one after another, as it
   works; pointed at the local server by replacing the ``requests`` name inside its module (below).

5. **viewer, polite**: the fetch stage on the cluster at its own politeness (20 requests/s).
6. **bricks** (:mod:`_fetch_bricks`): ``fetch --bricks`` at 1, 10 and 1,000 galaxies per brick on the
   workers, beside the tile-decompression floor (one process) and the polite viewer; peak worker memory.

Plus, in-process on pre-fetched JPEG bytes: CPU milliseconds per image for ``decode_jpeg``,
``resize`` and writing into a Zarr cube shard (``Cube.write_shard``), and the cube's bytes per image.

Why: fetching is meant to be latency bound, so concurrency should buy throughput linearly (aim:
>= 80 % of C / L) until the CPU becomes the bound, and the client must beat the sequential way it
was done before by >= 30x at concurrency 64. The server runs in its own process (its CPU is
measured separately) and its JPEG cache is warmed with every URL first, so the server does no
rendering while a method is timed (checked: renders during timing are reported). On a machine with
few cores the client and the server share them: the table says, for every point, the client's and
the server's CPU per image, how busy the whole machine was, and the CPU limit these imply.

    python benchmarks/bench_fetch.py [--latency 0.05] [--concurrency 1 8 32 64 128] [--images N]
        [--bricks 64] [--per-brick 1 10 1000] [--brick-cutouts 4000] [--keep]

Prints tables and writes ``benchmarks/results/bench_fetch-<timestamp>.json`` (machine info, parameters, raw timings).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _fetch_baselines import ensure_legacystamps, legacystamps_local_urls, legacystamps_point, sequential_point
from _fetch_bricks import BRICK_COLUMNS, BRICK_DEFINITIONS, brick_aims, brick_points, brick_rows, brick_summary
from _fetch_server import CACHE_MB, IMAGE_SIZE, LAYER, SIZE, Galaxy, Meter, Server, cutout_server, fmt_rate
from _machine import Table, arg_parser, machine_info, report, summary_row, usable_cores
from distributed import Client, LocalCluster

from pipeline.catalog.args import IngestArgs, LabelArgs
from pipeline.catalog.ingest import ingest
from pipeline.catalog.label import label
from pipeline.images.args import FetchArgs
from pipeline.images.client import ClientSettings, fetch_many
from pipeline.images.decode import decode_jpeg, resize
from pipeline.images.fetch import fetch
from pipeline.images.requests import cutout_url, pixscale_for
from pipeline.synthetic.args import SkyArgs
from pipeline.synthetic.catalog import SKY_FITS, make_sky
from storage.cube import STATUS_CODES, CubeLayout, create_cube, open_cube
from storage.hats_catalog import write_frame
from storage.tables import read_catalog, read_labels

SKY_SEED = 0
RATE_OFF = 1e6  # requests/s: the politeness limit, effectively off
TARGET_S = 4.0  # a client point gets about this many seconds' worth of images at its ideal rate
MIN_IMAGES = 64
LABELLED_FRACTION = 0.6  # at least this share of the offline sky survives labelling (~0.70 measured)
CPU_REPEAT = 3
POLITE = {f.name: f.default for f in dataclasses.fields(FetchArgs) if f.name in ("rate", "concurrency")}
"""The fetch stage's own defaults: the politeness users run the viewer path with."""
EXTRA_PACKAGES = ("aiohttp", "zarr", "numcodecs", "pillow", "psutil", "requests", "legacystamps")

now = time.perf_counter


# --------------------------------------------------------------------------------------------------
# Inputs: an offline sky, labelled, cut to exactly N galaxies


def prepare_workspace(data: Path, n_images: int) -> tuple[Path, Path, pd.DataFrame, dict[str, Any]]:
    """(sky FITS, workspace, catalog rows) with exactly ``n_images`` labelled galaxies.

    The sky is made with room to spare, ingested and labelled (one process, small); the workspace
    measured holds, as its catalog (cube_row 0..N-1), the first N labelled rows in sky order, and
    no labels: ``fetch`` then requests every one of them.
    """
    t0 = now()
    sky_n = math.ceil(n_images / LABELLED_FRACTION) + 256
    for _ in range(4):
        sky_dir, full = data / "sky", data / "ws-full"
        for path in (sky_dir, full):
            shutil.rmtree(path, ignore_errors=True)
        make_sky(SkyArgs(out=sky_dir, n=sky_n, seed=SKY_SEED))
        ingest(IngestArgs(workspace=full, inputs=(str(sky_dir / SKY_FITS),)))
        label(LabelArgs(workspace=full, plots=False))
        labels = read_labels(full, columns=["objid"])
        if len(labels) >= n_images:
            break
        sky_n *= 2
    else:
        raise RuntimeError(f"could not get {n_images} labelled galaxies from the offline sky")
    catalog = read_catalog(full)
    subset = catalog[catalog["objid"].isin(labels["objid"])].head(n_images).reset_index(drop=True)
    subset["cube_row"] = range(len(subset))
    ws = data / "ws"
    shutil.rmtree(ws, ignore_errors=True)
    write_frame(subset, ws / "catalog", "catalog")
    info = {"sky_rows": sky_n, "labelled_rows": len(labels), "images": len(subset), "seconds": now() - t0}
    return sky_dir / SKY_FITS, ws, subset, info


def galaxies(labels: pd.DataFrame) -> list[Galaxy]:
    """What the fetch stage will request for each row, to the bit (so the server's cache hits)."""
    pixscale, usable = pixscale_for(labels["radius_arcsec"].to_numpy(), SIZE)
    if not usable.all():
        raise RuntimeError("the benchmark's galaxies must all have usable radii")
    pixscale = pixscale.astype(np.float32)  # the cube stores float32; plan_jobs formats float(that)
    return [Galaxy(float(r), float(d), float(p)) for r, d, p in zip(labels["ra"], labels["dec"], pixscale, strict=True)]


def agnsurvey_urls(base: str, gals: Sequence[Galaxy]) -> list[str]:
    return [cutout_url(base, g.ra, g.dec, SIZE, g.pixscale, LAYER) for g in gals]


# --------------------------------------------------------------------------------------------------
# 1. agnsurvey's client alone


def client_point(urls: list[str], server: Server, concurrency: int, meter: Meter) -> dict[str, Any]:
    settings = ClientSettings(cutout_url=server.url, layer=LAYER, size=SIZE, image_size=IMAGE_SIZE,
                              concurrency=concurrency, rate=RATE_OFF)  # fmt: skip
    point: dict[str, Any] = {"method": "agnsurvey fetch_many", "concurrency": concurrency, "loops": 1}
    with meter.measure(len(urls), point):
        outcomes, stats = asyncio.run(fetch_many(urls, settings))
    statuses = pd.Series([o.status for o in outcomes]).value_counts().to_dict()
    point.update({"outcomes": statuses, "requests": stats.requests, "retries": stats.retries, "bytes": stats.bytes})
    bad = [o for o in outcomes if o.status != "ok" or o.image is None or o.image.shape != (IMAGE_SIZE, IMAGE_SIZE, 3)]
    if bad:
        raise RuntimeError(f"concurrency {concurrency}: {len(bad)} cutouts not ok ({bad[0].reason}); timings void")
    return point


def warm_up(urls: list[str], server: Server) -> dict[str, Any]:
    """Request every URL once so that the server renders nothing while methods are timed."""
    t0 = now()
    settings = ClientSettings(cutout_url=server.url, size=SIZE, image_size=IMAGE_SIZE, concurrency=32, rate=RATE_OFF)
    outcomes, _ = asyncio.run(fetch_many(urls, settings))
    failed = [o.reason for o in outcomes if o.status != "ok"]
    if failed:
        raise RuntimeError(f"warm-up: {len(failed)} of {len(urls)} cutouts failed, e.g. {failed[0]}")
    # fetch() first probes the service with one tiny cutout (pipeline.images.client.probe): warm that too
    with urllib.request.urlopen(cutout_url(server.url, 180.0, 30.0, 8, 1.0, LAYER), timeout=30) as r:
        r.read()
    stats = server.stats()
    return {"urls": len(urls) + 1, "seconds": now() - t0, "server_renders": stats["renders"]}


# --------------------------------------------------------------------------------------------------
# 2. the whole fetch stage


def stage_point(ws: Path, server: Server, concurrency: int, client: Client | None, meter: Meter,
                n: int, rate: float = RATE_OFF) -> dict[str, Any]:  # fmt: skip
    shutil.rmtree(ws / "cube.zarr", ignore_errors=True)
    args = FetchArgs(workspace=ws, cutout_url=server.url, layer=LAYER, size=SIZE, image_size=IMAGE_SIZE,
                     concurrency=concurrency, rate=rate, restart=True)  # fmt: skip
    loops = sum(client.nthreads().values()) if client is not None else 1
    where = f"LocalCluster {len(client.nthreads())} workers" if client is not None else "1 process"
    polite = f", polite {rate:g}/s" if rate != RATE_OFF else ""
    point: dict[str, Any] = {"method": f"fetch stage, {where}{polite}", "concurrency": concurrency, "loops": loops,
                             "rate_limit": rate}  # fmt: skip
    with meter.measure(n, point):
        manifest = fetch(args, client)
    status = manifest.extra["status"]
    point["status"] = status
    point["stage_images_per_s"] = manifest.extra["this_run"]["images_per_second"]
    point["shards"] = manifest.outputs["shards"]
    if status.get("ok") != n:
        raise RuntimeError(f"fetch stage ({where}): {status} instead of {n} ok; timings void")
    point["cube"] = cube_bytes(ws / "cube.zarr", n)
    return point


def cube_bytes(cube_path: Path, n: int) -> dict[str, Any]:
    """Bytes on disk of the ``images`` array: its chunk/shard objects, and with metadata."""
    images = cube_path / "images"
    files = [p for p in images.rglob("*") if p.is_file()]
    data = sum(p.stat().st_size for p in files if p.name != "zarr.json")
    everything = sum(p.stat().st_size for p in files)
    cube = open_cube(cube_path, mode="r")
    return {
        "images_objects": sum(1 for p in files if p.name != "zarr.json"),
        "images_bytes": data,
        "images_bytes_with_metadata": everything,
        "bytes_per_image": data / n,
        "raw_bytes_per_image": IMAGE_SIZE * IMAGE_SIZE * 3,
        "compressors": str(getattr(cube.images, "compressors", "?")),
    }


# --------------------------------------------------------------------------------------------------
# CPU per image: decode, resize, cube write (in this process, on JPEG bytes fetched beforehand)


def fetch_bodies(urls: list[str]) -> list[bytes]:
    def get(url: str) -> bytes:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.read()

    with ThreadPoolExecutor(32) as pool:
        return list(pool.map(get, urls))


def cpu_per_image(bodies: list[bytes], scratch: Path) -> dict[str, Any]:
    """CPU and wall ms per image of each step, best of CPU_REPEAT passes over ``bodies``."""
    n = len(bodies)
    timings: dict[str, list[tuple[float, float]]] = {"decode_jpeg": [], "resize": [], "cube_write": []}

    def timed(key: str, fn: Callable[[], Any]) -> Any:
        c0, w0 = time.process_time(), now()
        result = fn()
        timings[key].append((time.process_time() - c0, now() - w0))
        return result

    layout = CubeLayout(n, IMAGE_SIZE)
    cube = create_cube(scratch / "cpu-cube.zarr", layout, np.arange(n), np.ones(n), np.zeros(n), {})
    status = np.full(n, STATUS_CODES["ok"], dtype=np.int8)
    for _ in range(CPU_REPEAT):
        decoded = timed("decode_jpeg", lambda: [decode_jpeg(b, SIZE) for b in bodies])
        small = timed("resize", lambda d=decoded: np.stack([resize(im, IMAGE_SIZE) for im in d]))

        def write(images: np.ndarray = small) -> None:
            for shard in range(layout.n_shards):
                rows = layout.shard_rows(shard)
                cube.write_shard(shard, images[rows.start : rows.stop], status[rows.start : rows.stop])

        timed("cube_write", write)
    out: dict[str, Any] = {"images": n, "repeat": CPU_REPEAT, "jpeg_bytes_per_image": sum(map(len, bodies)) / n}
    for key, runs in timings.items():
        out[key] = {
            "cpu_ms_per_image": 1e3 * min(c for c, _ in runs) / n,
            "wall_ms_per_image": 1e3 * min(w for _, w in runs) / n,
            "runs_cpu_s": [c for c, _ in runs],
            "runs_wall_s": [w for _, w in runs],
        }
    out["total_cpu_ms_per_image"] = sum(out[k]["cpu_ms_per_image"] for k in timings)
    return out


# --------------------------------------------------------------------------------------------------
# Summary


def enrich(point: dict[str, Any], latency_s: float, cores: int, sequential_rate: float | None) -> dict[str, Any]:
    """Ideal rate, CPU limit implied by the measured CPU per image, ratios."""
    c, loops = point["concurrency"], point["loops"]
    cc = point["client_cpu_ms_per_image"] / 1e3
    sc = point["server_cpu_ms_per_image"] / 1e3
    ideal = min(c / latency_s, point.get("rate_limit", math.inf))
    # the client's work runs in `loops` event-loop threads (one core each at most); client and server
    # together share the machine's cores
    limits = [cores / (cc + sc)] if cc + sc > 0 else []
    if cc > 0:
        limits.append(loops / cc)
    cpu_limit = min(limits) if limits else math.inf
    rate = point["images_per_s"]
    return point | {
        "ideal_images_per_s": ideal,
        "pct_of_ideal": 100 * rate / ideal,
        "cpu_limit_images_per_s": cpu_limit,
        "bound": "latency" if ideal <= cpu_limit else "CPU",
        "pct_of_limit": 100 * rate / min(ideal, cpu_limit),
        "x_sequential": rate / sequential_rate if sequential_rate else None,
    }


def table_rows(points: list[dict[str, Any]]) -> list[dict[str, str]]:
    rows = []
    for p in points:
        rows.append(
            {
                "method": p["method"],
                "conc": str(p["concurrency"]),
                "images": f"{p['images']:,}",
                "s": f"{p['seconds']:.2f}",
                "img/s": fmt_rate(p["images_per_s"]),
                "ideal": fmt_rate(p["ideal_images_per_s"]),
                "% ideal": f"{p['pct_of_ideal']:.0f}",
                "CPU limit": fmt_rate(p["cpu_limit_images_per_s"]),
                "bound": p["bound"],
                "% of bound": f"{p['pct_of_limit']:.0f}",
                "x seq": f"{p['x_sequential']:.1f}" if p["x_sequential"] else "-",
                "client ms/img": f"{p['client_cpu_ms_per_image']:.2f}",
                "server ms/img": f"{p['server_cpu_ms_per_image']:.2f}",
                "busy %": f"{100 * p['machine_busy_fraction']:.0f}",
                "others %": f"{100 * p['others_busy_fraction']:.0f}",
            }
        )
    return rows


CPU_COLUMNS = ["step", "CPU ms/img", "wall ms/img"]
COLUMNS = ["method", "conc", "images", "s", "img/s", "ideal", "% ideal", "CPU limit", "bound", "% of bound",
           "x seq", "client ms/img", "server ms/img", "busy %", "others %"]  # fmt: skip


def cpu_table(cpu: dict[str, Any], cube: dict[str, Any] | None) -> list[dict[str, str]]:
    names = {
        "decode_jpeg": f"decode_jpeg ({SIZE}x{SIZE} JPEG)",
        "resize": f"resize -> {IMAGE_SIZE} (Lanczos)",
        "cube_write": "cube write (Cube.write_shard)",
    }
    rows = [
        {
            "step": names[k],
            "CPU ms/img": f"{cpu[k]['cpu_ms_per_image']:.3f}",
            "wall ms/img": f"{cpu[k]['wall_ms_per_image']:.3f}",
        }
        for k in names
    ]
    total_wall = sum(cpu[k]["wall_ms_per_image"] for k in names)
    rows.append(
        {"step": "total", "CPU ms/img": f"{cpu['total_cpu_ms_per_image']:.3f}", "wall ms/img": f"{total_wall:.3f}"}
    )
    rows.append(
        {"step": "JPEG bytes/image (as served)", "CPU ms/img": f"{cpu['jpeg_bytes_per_image']:,.0f}", "wall ms/img": ""}
    )
    if cube:
        rows.append({"step": "cube bytes/image (images array)", "CPU ms/img": f"{cube['bytes_per_image']:,.0f}",
                     "wall ms/img": f"raw {cube['raw_bytes_per_image']:,}"})  # fmt: skip
    return rows


def aims(points: list[dict[str, Any]], sequential: dict[str, Any] | None, latency_s: float) -> list[str]:
    lines = []
    client = [p for p in points if p["method"] == "agnsurvey fetch_many"]
    for p in client:
        if p["bound"] == "latency":
            verdict = "met" if p["pct_of_ideal"] >= 80 else "NOT met"
            lines.append(
                f"  fetch_many c={p['concurrency']}: {p['pct_of_ideal']:.0f} % of the ideal "
                f"{fmt_rate(p['ideal_images_per_s'])} img/s (latency-bound; aim >= 80 %: {verdict})"
            )
        else:
            lines.append(
                f"  fetch_many c={p['concurrency']}: CPU-bound (ideal {fmt_rate(p['ideal_images_per_s'])} > CPU "
                f"limit {fmt_rate(p['cpu_limit_images_per_s'])} img/s): {p['pct_of_limit']:.0f} % of the CPU limit, "
                f"{p['pct_of_ideal']:.0f} % of the ideal"
            )
    saturated = [p for p in client if p["bound"] == "CPU"]
    if saturated:
        limit = min(p["cpu_limit_images_per_s"] for p in saturated)
        lines.append(
            f"  the CPU bound (~{fmt_rate(limit)} img/s here) is reached near concurrency "
            f"{limit * latency_s:.0f} (= limit x latency)"
        )
    c64 = next((p for p in client if p["concurrency"] == 64), None)
    if c64 and sequential:
        ratio = c64["images_per_s"] / sequential["images_per_s"]
        lines.append(
            f"  fetch_many c=64 vs sequential loop: {ratio:.1f}x (aim >= 30x: {'met' if ratio >= 30 else 'NOT met'})"
        )
    return lines


# --------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = arg_parser(__doc__)
    parser.add_argument("--latency", type=float, default=0.05, help="server latency per answer, s (default 0.05)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64, 128],
                        help="fetch_many concurrency points (default 1 8 32 64 128)")  # fmt: skip
    parser.add_argument("--images", type=int, default=4096,
                        help="galaxies in the run; the fetch stage fetches all, a client point up to this many "
                        f"(about {TARGET_S:g} s at its ideal rate)")  # fmt: skip
    parser.add_argument("--baseline-images", type=int, default=100,
                        help="images for the sequential loop and legacystamps (default 100)")  # fmt: skip
    parser.add_argument("--stage-concurrency", type=int, default=64, help="fetch stage concurrency (default 64)")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes for the fetch stage")
    parser.add_argument("--cpu-images", type=int, default=1024, help="JPEGs for the CPU-per-image measurement")
    parser.add_argument("--bricks", type=int, default=64,
                        help="bricks in the local mirror for the brick points (default 64; 0 skips them)")  # fmt: skip
    parser.add_argument("--per-brick", type=int, nargs="+", default=[1, 10, 1000],
                        help="galaxies per brick, one brick point each (default 1 10 1000)")  # fmt: skip
    parser.add_argument("--brick-cutouts", type=int, default=4000,
                        help="most cutouts per brick point (bricks used: min(--bricks, this / per brick))")  # fmt: skip
    parser.add_argument("--no-legacystamps", action="store_true", help="skip the legacystamps baseline")
    parser.add_argument("--keep", action="store_true", help="keep the data directory (sky, workspace, files)")
    args = parser.parse_args(argv)
    if args.latency <= 0 or args.images < 1 or args.baseline_images < 1 or args.workers < 1:
        parser.error("--latency, --images, --baseline-images and --workers must be positive")
    if any(c < 1 for c in args.concurrency) or args.stage_concurrency < 1 or args.cpu_images < 1:
        parser.error("concurrencies and --cpu-images must be positive")
    if args.bricks < 0 or any(d < 1 for d in args.per_brick) or args.brick_cutouts < 1:
        parser.error("--bricks must be >= 0, --per-brick and --brick-cutouts positive")
    return args


def point_images(concurrency: int, latency_s: float, pool: int) -> int:
    return min(pool, max(MIN_IMAGES, round(concurrency / latency_s * TARGET_S)))


def measure(args: argparse.Namespace, data: Path, module: Any | None, legacy_info: dict[str, Any]) -> dict[str, Any]:
    """Every method on one offline sky and one warmed server, the sequential loop first; raw results.

    ``module``: legacystamps, or None to skip it (a failed run is written into ``legacy_info``).
    """
    n_base, n_cpu = min(args.baseline_images, args.images), min(args.cpu_images, args.images)
    fits_path, ws, labels, setup = prepare_workspace(data, args.images)
    gals = galaxies(labels)
    print(f"offline sky: {setup['sky_rows']:,} rows, {setup['images']:,} galaxies used ({setup['seconds']:.1f} s)")
    with cutout_server(fits_path, args.latency, data) as server:
        urls = agnsurvey_urls(server.url, gals)
        warm_urls = urls + (legacystamps_local_urls(server, gals[:n_base]) if module is not None else [])
        print(f"server {server.url} (pid {server.proc.pid}); warming its cache with {len(warm_urls):,} URLs ...")
        warm = warm_up(warm_urls, server)
        print(f"  warm-up {warm['seconds']:.1f} s, {warm['server_renders']:,} renders", flush=True)
        meter = Meter(server)

        print(f"sequential loop, {n_base} images ...", flush=True)
        points = [sequential_point(urls[:n_base], data / "sequential", meter)]
        if module is not None:
            print(f"legacystamps, {n_base} images ...", flush=True)
            try:
                points.append(legacystamps_point(module, gals[:n_base], server, data / "legacystamps", meter))
            except Exception as exc:  # its failure is a result, not the end of the benchmark
                legacy_info |= {"available": False, "reason": f"run failed: {type(exc).__name__}: {exc}"}
        for c in args.concurrency:
            n = point_images(c, args.latency, len(urls))
            print(f"fetch_many concurrency {c}, {n:,} images ...", flush=True)
            points.append(client_point(urls[:n], server, c, meter))
        stage, bricks = cluster_points(ws, server, args, labels, meter, data)
        points += stage

        print(f"CPU per image on {n_cpu:,} JPEGs ...", flush=True)
        cpu = cpu_per_image(fetch_bodies(urls[:n_cpu]), data)
        return {"setup": setup, "warm_up": warm, "points": points, "cpu_per_image": cpu, "cube": points[-1]["cube"],
                "bricks": bricks, "server_stats_end": server.stats()}  # fmt: skip


def cluster_points(ws: Path, server: Server, args: argparse.Namespace, labels: pd.DataFrame, meter: Meter,
                   data: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:  # fmt: skip
    """The whole fetch stage in one process, then on a LocalCluster of ``--workers`` processes with the
    rate limit off and at the polite rate; then, on the same cluster, the bricks (None: ``--bricks 0``)."""
    n = len(labels)
    print(f"fetch stage, 1 process, concurrency {args.stage_concurrency}, {n:,} images ...", flush=True)
    points = [stage_point(ws, server, args.stage_concurrency, None, meter, n)]
    with (
        LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                     silence_logs=logging.ERROR) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        worker_pids = list(client.run(os.getpid).values())
        cluster_meter = Meter(server, lambda: [os.getpid(), *worker_pids])
        polite_n = min(n, max(8, round(POLITE["rate"] * TARGET_S)))
        print(f"fetch stage, LocalCluster {args.workers} workers, polite {POLITE['rate']:g}/s, {polite_n} images ...",
              flush=True)  # fmt: skip
        polite_ws = data / "ws-polite"
        write_frame(labels.head(polite_n), polite_ws / "catalog", "catalog")
        polite = stage_point(polite_ws, server, POLITE["concurrency"], client, cluster_meter, polite_n, POLITE["rate"])
        print(f"fetch stage, LocalCluster {args.workers} workers, {n:,} images ...", flush=True)
        points += [polite, stage_point(ws, server, args.stage_concurrency, client, cluster_meter, n)]
        bricks = None
        if args.bricks:
            bricks = brick_points(client, data, labels, cluster_meter, args.bricks, args.per_brick, args.brick_cutouts)
    return points, bricks


DEFINITIONS = {
    "images_per_s": "images / wall seconds of the method (fetch stage: the whole fetch() call)",
    "ideal_images_per_s": "concurrency / latency",
    "cpu_limit_images_per_s": "min(cores / (client + server CPU s per image), loops / client CPU s "
    "per image), from this point's own CPU measurements",
    "x_sequential": "images_per_s / the sequential urllib loop's",
    "client_cpu_ms_per_image": "CPU (user+system) of the measuring process (and fetch workers) / images",
    "server_cpu_ms_per_image": "CPU of the server process and its render pool / images",
    "machine_busy_fraction": "busy / total CPU time of the whole machine over the point",
    "others_busy_fraction": "CPU of processes other than the client(s) and the server / total CPU time",
} | BRICK_DEFINITIONS


def parameters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "latency_s": args.latency,
        "concurrency": args.concurrency,
        "images": args.images,
        "baseline_images": min(args.baseline_images, args.images),
        "stage_concurrency": args.stage_concurrency,
        "workers": args.workers,
        "cpu_images": min(args.cpu_images, args.images),
        "bricks": args.bricks,
        "per_brick": args.per_brick,
        "brick_cutouts": args.brick_cutouts,
        "polite": {"rate": POLITE["rate"], "concurrency": POLITE["concurrency"]},
        "size": SIZE,
        "image_size": IMAGE_SIZE,
        "layer": LAYER,
        "rate_limit": RATE_OFF,
        "target_seconds_per_point": TARGET_S,
        "server": {"cache_mb": CACHE_MB, "executor": "process", "process": "separate (agnsurvey sky serve)"},
        "sky_seed": SKY_SEED,
        "command": " ".join(sys.argv),
    }


def notes(points: list[dict[str, Any]], sequential: dict[str, Any], latency_s: float, cores: int,
          load_start: tuple[float, ...], legacy_info: dict[str, Any]) -> list[str]:  # fmt: skip
    """The lines below the tables: the machine's load, what the columns mean, server renders, the aims."""
    renders = sum(p["server_renders"] for p in points)
    return [
        f"os.cpu_count() = {os.cpu_count()}, usable cores {cores}; load average at start "
        f"{load_start[0]:.2f}, at end {os.getloadavg()[0]:.2f} (other work on the machine adds noise)",
        f"ideal = concurrency / latency ({latency_s * 1e3:g} ms); CPU limit = min(cores / (client + server CPU "
        "per image), event loops / client CPU per image); busy % = whole machine, all processes; others % = "
        "processes other than this benchmark's client and server (both as a share of all cores)",
        f"server renders while timing: {renders} (0: every timed answer came from its cache)",
        f"legacystamps: {legacy_info.get('version', legacy_info.get('reason'))}",
        "aims:",
        *aims(points, sequential, latency_s),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = machine_info(EXTRA_PACKAGES)  # before anything runs: the commit measured
    cores = usable_cores()
    data = Path(tempfile.mkdtemp(prefix="agnsurvey-bench-fetch-"))
    print(f"data in {data}; os.cpu_count() = {os.cpu_count()}, {cores} usable cores; latency {args.latency * 1e3:g} ms")
    load_start = os.getloadavg()
    legacy_info: dict[str, Any] = {"available": False, "reason": "skipped (--no-legacystamps)"}
    module = None
    if not args.no_legacystamps:
        module, legacy_info = ensure_legacystamps()
    try:
        run = measure(args, data, module, legacy_info)
    finally:
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)

    sequential = run["points"][0]
    points = [enrich(p, args.latency, cores, sequential["images_per_s"]) for p in run["points"]]
    lines = notes(points, sequential, args.latency, cores, load_start, legacy_info)
    stage = points[-1]
    summary = [summary_row(f"fetch ({stage['method']})", f"{stage['images']:,} images, latency {args.latency:g} s",
                           stage["images_per_s"], "img/s", "bound: min(ideal, CPU limit)",
                           min(stage["ideal_images_per_s"], stage["cpu_limit_images_per_s"]))]  # fmt: skip
    bricks = run["bricks"]
    tables = [
        Table(table_rows(points), COLUMNS, right=COLUMNS[1:8] + COLUMNS[9:]),
        Table(cpu_table(run["cpu_per_image"], run["cube"]), CPU_COLUMNS, CPU_COLUMNS[1:], "cpu_table_text"),
    ]
    if bricks is not None:
        polite = next(p for p in points if "polite" in p["method"])
        tables.append(Table(brick_rows(bricks, polite["images_per_s"]), BRICK_COLUMNS, BRICK_COLUMNS[1:],
                            "bricks_table_text", f"\nbricks (band r, {IMAGE_SIZE} px flux cutouts), "
                            f"polite viewer {fmt_rate(polite['images_per_s'])} img/s:"))  # fmt: skip
        lines += brick_aims(bricks)
        summary += brick_summary(bricks, polite, POLITE["rate"])
    payload = {
        "parameters": parameters(args),
        "definitions": DEFINITIONS,
        "cores": cores,
        "cpu_count": os.cpu_count(),
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "setup": run["setup"],
        "warm_up": run["warm_up"],
        "legacystamps": legacy_info,
        "points": points,
        "cpu_per_image": run["cpu_per_image"],
        "cube": run["cube"],
        "server_stats_end": run["server_stats_end"],
        "bricks": bricks,
    }
    report("bench_fetch", machine, payload, tables, lines, summary=summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
