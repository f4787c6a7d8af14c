"""Render throughput: the offline sky's galaxy renderer, one thread, and how it scales on this machine.

What is measured, in ONE run on the same machine, each on its own N distinct catalog galaxies
(NSA-like rows from :func:`pipeline.synthetic.catalog.generate_rows`, seed 7) at 250 × 250 pixels
and the standard pixscale (PETROTH90 × 1.5 × 2 / 250 arcsec/pixel: the cutout spans three radii),
the target alone (no neighbours):

1. **render_field, 1 thread**: :func:`pipeline.synthetic.render.render_field` one galaxy after
   another. Rate = renders / wall s. This is the number the aim is about.
2. **encode_jpeg, 1 thread**: :func:`~pipeline.synthetic.render.encode_jpeg` (quality 90, the
   server's default) alone, on images rendered in 1.
3. **render_field + encode_jpeg, 1 thread**: what the offline cutout server does per request.
4. **render_field + encode_jpeg, W threads** (``ThreadPoolExecutor``) and **W processes**
   (``ProcessPoolExecutor``, workers started and warmed before timing): how far threads get past
   the GIL (numpy releases it only inside its larger array operations) and how processes scale.

Why: the offline sky server renders every cutout on demand, and the aim (from the issue) is
>= 500 renders/s per core at 250 × 250, so that a fetch benchmark or a training run is never
waiting for the renderer. Each measurement uses galaxies never rendered before in this process, so
the renderer's per-galaxy appearance cache is cold, as it is for a server answering each galaxy
once; the sky noise fields (computed once per process and correlation length, shared by every
render) are built before any timing by rendering a galaxy that is not in any timed set at scales
that need every one of them (:func:`warm_up`).

BLAS/OpenMP pools are pinned to one thread (environment variables set before numpy is imported),
so "1 thread" is one core's work.

    python benchmarks/bench_render.py [--n 3000] [--workers 2] [--repeat 3]

Prints a table and writes ``benchmarks/results/bench_render-<timestamp>.json`` (machine info,
parameters, every raw timing, including each single-thread render's time).
"""

from __future__ import annotations

import os

# One BLAS/OpenMP thread, set before numpy is imported (here and, inherited, in the worker processes).
os.environ.update(dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), "1"))

import argparse
import multiprocessing
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import numpy as np
from _machine import Table, arg_parser, format_rate, machine_info, report, usable_cores

from pipeline.synthetic.catalog import generate_rows
from pipeline.synthetic.render import NATIVE_PIXSCALE, Galaxy, agn_weight_from_fluxes, encode_jpeg, render_field

SIZE = 250  # pixels, the cutout size the pipeline fetches
FRAME_RADII = 1.5 * 2  # the cutout spans PETROTH90 × 1.5 on either side of the centre
JPEG_QUALITY = 90  # the offline server's default (serve.jpeg_quality)
CATALOG_SEED = 7
AIM_RENDERS_PER_S = 500.0  # per core, 250 × 250 (the aim)
ENCODE_ONLY_MAX = 500  # images kept from measurement 1 for the encode-only measurement
BATCH = 25  # galaxies per task in the thread and process pools
KEYS = ("render", "render_encode", "render_encode_threads", "render_encode_processes")  # each on its own galaxies

now: Callable[[], float] = time.perf_counter

try:
    import psutil
except ImportError:  # optional: without it, the table has no CPU accounting
    psutil = None


# --------------------------------------------------------------------------------------------------
# Galaxies


def catalog_galaxies(start: int, stop: int) -> list[Galaxy]:
    """Catalog rows [start, stop) of sky CATALOG_SEED as render inputs (appearance from the fluxes)."""
    rows = generate_rows(CATALOG_SEED, start, stop)
    weight = agn_weight_from_fluxes(rows["HAFLUX"], rows["N2FLUX"], rows["HBFLUX"], rows["O3FLUX"], rows["SIM_CLASS"])
    return [
        Galaxy(
            objid=int(rows["NSAID"][i]),
            ra=float(rows["RA"][i]),
            dec=float(rows["DEC"][i]),
            radius_arcsec=float(rows["PETROTH90"][i]),
            z=float(rows["Z"][i]),
            agn_weight=float(weight[i]),
        )
        for i in range(stop - start)
    ]


def pixscale_of(galaxy: Galaxy) -> float:
    """The standard cutout scale, arcsec/pixel: PETROTH90 × 1.5 × 2 over SIZE pixels."""
    return galaxy.radius_arcsec * FRAME_RADII / SIZE


def render(galaxy: Galaxy) -> np.ndarray:
    return render_field(galaxy, [], galaxy.ra, galaxy.dec, SIZE, pixscale_of(galaxy))


def render_encode_batch(galaxies: Sequence[Galaxy]) -> tuple[int, int]:
    """Render and JPEG-encode each galaxy; (images, JPEG bytes). Runs in threads and worker processes."""
    nbytes = 0
    for g in galaxies:
        nbytes += len(encode_jpeg(render(g), quality=JPEG_QUALITY))
    return len(galaxies), nbytes


def warm_up(galaxy: Galaxy) -> None:
    """Build this process's sky noise cache: render an untimed galaxy at scales needing every noise field.

    The renderer computes one noise field per correlation length (0.262" / pixscale, clipped to
    1-8 native pixels) the first time a scale needs it (tens of ms each); the standard scales of
    catalog galaxies span all of them, so without this the first timed renders would pay for it.
    """
    for ratio in np.geomspace(0.5, 16.0, 25):
        render_field(galaxy, [], galaxy.ra, galaxy.dec, SIZE, NATIVE_PIXSCALE / ratio)


def worker_pid() -> int:
    """Warm-up task: busy for a moment, so that the tasks submitted with it start the other workers."""
    time.sleep(0.2)
    return os.getpid()


# --------------------------------------------------------------------------------------------------
# CPU accounting: how much of the machine this benchmark had


class CpuMeter:
    """CPU seconds of this process (and of ``pids``) and of the whole machine between start and stop."""

    def __init__(self, pids: Sequence[int] = ()) -> None:
        self.pids = list(pids)

    def _ours(self) -> float:
        t = os.times()
        total = t.user + t.system
        for pid in self.pids:
            c = psutil.Process(pid).cpu_times()
            total += c.user + c.system
        return total

    @staticmethod
    def _machine() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    def __enter__(self) -> CpuMeter:
        self.result: dict[str, float] = {}
        if psutil is not None:
            self._t0, self._ours0, self._machine0 = now(), self._ours(), self._machine()
        return self

    def __exit__(self, *exc: object) -> None:
        if psutil is None or exc[0] is not None:
            return
        wall = now() - self._t0
        ours, machine = self._ours() - self._ours0, self._machine() - self._machine0
        self.result = {
            "cpu_s": ours,
            "machine_busy_s": machine,
            "ours_cores": ours / wall,
            "others_cores": max(machine - ours, 0.0) / wall,
        }


# --------------------------------------------------------------------------------------------------
# Measurements


def measure_render(galaxies: list[Galaxy]) -> tuple[dict[str, Any], list[np.ndarray]]:
    """1. render_field one after another; per-render times; keeps the first images for encode-only."""
    kept: list[np.ndarray] = []
    per = np.empty(len(galaxies))
    t0 = now()
    for i, g in enumerate(galaxies):
        t = now()
        img = render(g)
        per[i] = now() - t
        if i < ENCODE_ONLY_MAX:
            kept.append(img)
    wall = now() - t0
    return {
        "images": len(galaxies),
        "seconds": wall,
        "per_render_ms": {
            "median": float(np.median(per) * 1e3),
            "mean": float(per.mean() * 1e3),
            "p95": float(np.percentile(per, 95) * 1e3),
            "max": float(per.max() * 1e3),
        },
        "per_render_s": [round(float(s), 7) for s in per],
    }, kept


def measure_encode(images: list[np.ndarray]) -> dict[str, Any]:
    """2. encode_jpeg alone on already rendered images."""
    t0 = now()
    nbytes = sum(len(encode_jpeg(img, quality=JPEG_QUALITY)) for img in images)
    return {"images": len(images), "seconds": now() - t0, "jpeg_bytes": nbytes}


def measure_render_encode(galaxies: list[Galaxy]) -> dict[str, Any]:
    """3. render + encode one after another in this thread."""
    t0 = now()
    images, nbytes = render_encode_batch(galaxies)
    return {"images": images, "seconds": now() - t0, "jpeg_bytes": nbytes}


def batches(galaxies: list[Galaxy]) -> list[list[Galaxy]]:
    return [galaxies[i : i + BATCH] for i in range(0, len(galaxies), BATCH)]


def measure_pool(pool: Executor, galaxies: list[Galaxy]) -> dict[str, Any]:
    """4. render + encode in BATCH-galaxy tasks on a started pool; wall time of the whole set."""
    t0 = now()
    done = list(pool.map(render_encode_batch, batches(galaxies)))
    wall = now() - t0
    return {"images": sum(d[0] for d in done), "seconds": wall, "jpeg_bytes": sum(d[1] for d in done)}


def start_processes(workers: int, warm: Galaxy) -> tuple[ProcessPoolExecutor, list[int]]:
    """A process pool with all ``workers`` processes started and their noise caches built."""
    pool = ProcessPoolExecutor(max_workers=workers, initializer=warm_up, initargs=(warm,))
    futures = [pool.submit(worker_pid) for _ in range(2 * workers)]
    return pool, sorted({f.result() for f in futures})


# --------------------------------------------------------------------------------------------------
# Report


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return min(runs, key=lambda r: r["seconds"] / r["images"])


def summarise(results: dict[str, list[dict[str, Any]]], workers: int) -> list[dict[str, Any]]:
    """One table row per method (best of the repeats): images/s, ms per image, x the 1-thread rate."""
    methods = (
        ("render", "render_field", "1 thread"),
        ("encode", "encode_jpeg q90 (alone)", "1 thread"),
        ("render_encode", "render_field + encode_jpeg", "1 thread"),
        ("render_encode_threads", "render_field + encode_jpeg", f"{workers} threads"),
        ("render_encode_processes", "render_field + encode_jpeg", f"{workers} processes"),
    )
    base = {}
    rows = []
    for key, method, where in methods:
        run = best(results[key])
        rate = run["images"] / run["seconds"]
        cores = 1 if where.startswith("1 ") else workers
        rows.append(
            {
                "key": key,
                "method": method,
                "runs on": where,
                "images": run["images"],
                "seconds": run["seconds"],
                "img/s": rate,
                "img/s per core": rate / cores,
                "ms/img (core)": 1e3 * cores / rate,
                "our cores": run.get("ours_cores"),
                "others cores": run.get("others_cores"),
            }
        )
        base.setdefault(method, rate)
        rows[-1]["x 1 thread"] = rate / base[method]
    return rows


COLUMNS = (
    "method", "runs on", "images", "seconds", "img/s", "img/s per core", "ms/img (core)", "x 1 thread",
    "our cores", "others cores",
)  # fmt: skip


def formatted(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [
        {
            "method": r["method"],
            "runs on": r["runs on"],
            "images": str(r["images"]),
            "seconds": f"{r['seconds']:.2f}",
            "img/s": format_rate(r["img/s"]),
            "img/s per core": format_rate(r["img/s per core"]),
            "ms/img (core)": f"{r['ms/img (core)']:.2f}",
            "x 1 thread": f"{r['x 1 thread']:.2f}",
            "our cores": "-" if r["our cores"] is None else f"{r['our cores']:.2f}",
            "others cores": "-" if r["others cores"] is None else f"{r['others cores']:.2f}",
        }
        for r in rows
    ]


def aims(rows: list[dict[str, Any]]) -> list[str]:
    by = {r["key"]: r for r in rows}
    rate = by["render"]["img/s"]
    served = by["render_encode"]["img/s"]
    return [
        f"  render_field 250x250, 1 thread: {rate:.0f} renders/s per core "
        f"(aim >= {AIM_RENDERS_PER_S:.0f}): {'met' if rate >= AIM_RENDERS_PER_S else 'NOT met'}",
        f"  with encode_jpeg (what the server does per cutout): {served:.0f} /s per core",
    ]


# --------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = arg_parser(__doc__)
    parser.add_argument("--n", type=int, default=3000, help="distinct galaxies per measurement (default 3000)")
    parser.add_argument("--workers", type=int, default=2, help="threads / processes for the scaling rows")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of every measurement, new galaxies each; the best is shown"
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.workers < 1 or args.repeat < 1:
        parser.error("--n, --workers and --repeat must be positive")
    return args


def measure(sets: Iterator[list[Galaxy]], warm: Galaxy, workers: int, repeat: int) -> dict[str, list[dict[str, Any]]]:
    """Every measurement ``repeat`` times, each on the next unused set of galaxies; raw runs by key."""
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in (*KEYS, "encode")}
    for rep in range(repeat):
        print(f"[{rep + 1}/{repeat}] render_field, 1 thread ...", flush=True)
        with CpuMeter() as cpu:
            run, images = measure_render(next(sets))
        results["render"].append(run | cpu.result)
        with CpuMeter() as cpu:
            run = measure_encode(images)
        results["encode"].append(run | cpu.result)
        del images
        print(f"[{rep + 1}/{repeat}] render_field + encode_jpeg, 1 thread ...", flush=True)
        with CpuMeter() as cpu:
            run = measure_render_encode(next(sets))
        results["render_encode"].append(run | cpu.result)
        print(f"[{rep + 1}/{repeat}] render_field + encode_jpeg, {workers} threads ...", flush=True)
        with ThreadPoolExecutor(max_workers=workers) as pool, CpuMeter() as cpu:
            run = measure_pool(pool, next(sets))
        results["render_encode_threads"].append(run | cpu.result)
        print(f"[{rep + 1}/{repeat}] render_field + encode_jpeg, {workers} processes ...", flush=True)
        pool, pids = start_processes(workers, warm)
        if len(pids) < workers:
            print(f"  warning: only {len(pids)} of {workers} worker processes took warm-up tasks", flush=True)
        with pool, CpuMeter(pids) as cpu:
            run = measure_pool(pool, next(sets))
        results["render_encode_processes"].append(run | cpu.result | {"worker_pids": pids})
    return results


DEFINITIONS = {
    "img/s": "images / wall seconds of the whole set; best of --repeat",
    "img/s per core": "img/s / threads or processes used",
    "ms/img (core)": "milliseconds of one core per image (1000 / img/s per core)",
    "x 1 thread": "img/s relative to the same method in 1 thread",
    "our cores": "CPU seconds of this process (+ pool workers) / wall seconds (psutil)",
    "others cores": "the machine's busy CPU seconds not ours / wall seconds: other work on the machine",
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = machine_info(extra_packages=("pillow",))
    n, workers = args.n, args.workers
    # Disjoint galaxy sets: one per (measurement, repeat), then one more for warming up.
    total = n * len(KEYS) * args.repeat + 1
    t0 = now()
    galaxies = catalog_galaxies(0, total)
    catalog_s = now() - t0
    if len({g.objid for g in galaxies}) != total:
        raise SystemExit("catalog objids are not distinct: the measurements would share galaxies")
    warm = galaxies[-1]
    sets = iter(galaxies[i : i + n] for i in range(0, total - 1, n))

    print(
        f"os.cpu_count() = {os.cpu_count()}, usable cores = {usable_cores()}, workers = {workers}; "
        f"{n} galaxies per measurement, {args.repeat} repeat(s)",
        flush=True,
    )
    load_before = os.getloadavg()
    warm_up(warm)
    results = measure(sets, warm, workers, args.repeat)
    load_after = os.getloadavg()

    rows = summarise(results, workers)
    single = best(results["render"])["per_render_ms"]
    notes = [
        f"os.cpu_count() = {os.cpu_count()}, usable cores = {usable_cores()}; load average (1 min) "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after",
        f"single-thread render time per galaxy: median {single['median']:.2f} ms, p95 {single['p95']:.2f} ms, "
        f"max {single['max']:.2f} ms",
        "aims:",
        *aims(rows),
    ]
    parameters = {
        "n": n,
        "workers": workers,
        "repeat": args.repeat,
        "size": SIZE,
        "pixscale": "PETROTH90 * 1.5 * 2 / 250 arcsec/pixel, per galaxy",
        "neighbours": 0,
        "jpeg_quality": JPEG_QUALITY,
        "catalog_seed": CATALOG_SEED,
        "catalog_rows": [0, total],
        "pool_batch": BATCH,
        "blas_threads_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
        "process_start_method": multiprocessing.get_start_method(),
        "command": " ".join(sys.argv),
    }
    payload = {
        "parameters": parameters,
        "definitions": DEFINITIONS,
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "catalog_generation_s": catalog_s,
        "aim_renders_per_s_per_core": AIM_RENDERS_PER_S,
        "aim_met": rows[0]["img/s"] >= AIM_RENDERS_PER_S,  # rows[0]: render_field, 1 thread
        "runs": results,
        "table": rows,
    }
    report("bench_render", machine, payload, [Table(formatted(rows), COLUMNS, right=COLUMNS[2:])], notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
