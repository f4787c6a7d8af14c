"""Catalog throughput: agnsurvey ``ingest`` + ``label`` against the I/O floor and the paper's pandas.

What is compared, per catalog size (offline NSA-like sky, 1M and 10M rows by default), in ONE run
on the same machine and the same files:

1. **agnsurvey**: ``ingest`` (FITS → a HATS catalog, sky-ordered and HEALPix-partitioned) then
   ``label`` (BPT columns, splits; a second HATS catalog; no plots) on the ``LocalCluster`` the
   ``agnsurvey`` command starts (:class:`cluster.client.Local`: W single-threaded worker processes
   from a forkserver, glibc's adaptive malloc left on), started once before any timing. Rate = rows in / (ingest s +
   label s). The peak resident memory of each worker process is sampled every 50 ms.
2. **I/O floor**: one process with pyarrow reads the 13 source columns the pipeline uses and writes
   them to one Parquet file with the pipeline's writer settings (snappy, no dictionary, columns
   declared not null), from the sky's Parquet dataset and from the FITS file (astropy memmap,
   copied to native byte order by the pipeline's own copy). FITS → Parquet is the reference
   ("x floor" = 1.00): it is the least work the pipeline must do on the same input (read once,
   write once). "floor x2" reads and writes twice (FITS → Parquet → Parquet), the minimum for two
   stages that each write a dataset.
3. **pandas**: how the paper worked: ``Table.read`` → pandas → drop bad coordinates and duplicate
   ids → keep four finite positive fluxes → x, y and the paper's rule → ``to_parquet``, one process,
   with the pipeline's writer settings (columns nullable, as pandas writes them).
4. **hats-import**: the peer importer, FITS → HATS catalog (the 13 columns, the same partition
   threshold) with ``pipeline_with_client`` on the same cluster: what ``ingest`` alone replaces.
5. **BPT kernel**: ``pipeline.catalog.bpt.bpt_class`` (and ``log_ratios`` + ``bpt_class``) on 10M points in
   one thread: rows/s per core.

Why: the stages are meant to be I/O bound (aims at 10M rows: ingest + label >= 0.5 x "floor x2",
faster than pandas, >= 5x hats-import; kernel >= 30M rows/s per core), and distributing them must
beat the single-process way it was done before. The benchmark checks that agnsurvey and pandas
keep the same rows and find the same classes, and refuses to report numbers for a wrong result.

    python benchmarks/bench_catalog.py --sizes 1000000 10000000 --workers 2

Prints a table and writes ``benchmarks/results/bench_catalog-<timestamp>.json`` (machine info,
parameters, every raw timing). The sky catalogs are generated (and timed, not compared) in a
temporary directory, or reused from ``--data DIR``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from _catalog_baselines import PARQUET_OPTIONS, SOURCE_COLUMNS, floor_fits, floor_parquet, run_hats_import, run_pandas
from _machine import Table, arg_parser, format_rate, machine_info, report, summary_row, usable_cores
from dask.utils import key_split
from distributed import Client, get_task_stream

from cluster.client import Local, connect
from pipeline.catalog import bpt
from pipeline.catalog.args import IngestArgs, LabelArgs
from pipeline.catalog.ingest import ingest
from pipeline.catalog.label import label
from pipeline.synthetic.args import SkyArgs
from pipeline.synthetic.catalog import SKY_FITS, SKY_MANIFEST, SKY_PARQUET, make_sky
from storage.hats_catalog import read_table

SKY_SEED = 0
KERNEL_ROWS = 10_000_000
KERNEL_REPEAT = 5

Timer = Callable[[], float]
now: Timer = time.perf_counter


# --------------------------------------------------------------------------------------------------
# Data


def sky_is_cached(sky_dir: Path, n: int) -> bool:
    """True when ``sky_dir`` holds a complete offline sky of ``n`` rows from seed SKY_SEED."""
    manifest = sky_dir / SKY_MANIFEST
    if not (manifest.exists() and (sky_dir / SKY_FITS).exists() and (sky_dir / SKY_PARQUET).is_dir()):
        return False
    params = json.loads(manifest.read_text()).get("parameters", {})
    return params.get("n") == n and params.get("seed") == SKY_SEED


def ensure_sky(data: Path, n: int, client: Client) -> dict[str, Any]:
    """Generate (and time) the offline sky of ``n`` rows under ``data``, or reuse a cached one."""
    sky_dir = data / f"sky-{n}"
    if sky_is_cached(sky_dir, n):
        return {"dir": str(sky_dir), "cached": True, "seconds": None}
    t0 = now()
    make_sky(SkyArgs(out=sky_dir, n=n, seed=SKY_SEED), client)
    return {"dir": str(sky_dir), "cached": False, "seconds": now() - t0}


@contextmanager
def scratch(path: Path, keep: bool) -> Iterator[Path]:
    """An empty output directory for one measurement, removed afterwards unless ``keep``. Dirty
    pages are written out first (``os.sync``, not timed): otherwise the disk writes an earlier
    method left in the page cache run, and take CPU, during the next one's timing."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.sync()
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)
        gc.collect()


# --------------------------------------------------------------------------------------------------
# 1. agnsurvey on a LocalCluster


def task_breakdown(records: list[dict[str, Any]], wall_s: float, workers: int) -> dict[str, Any]:
    """Worker time by task kind (compute, summed over workers), transfers and the busy fraction."""
    compute: dict[str, float] = defaultdict(float)
    other: dict[str, float] = defaultdict(float)
    for rec in records:
        for ss in rec.get("startstops", ()):
            seconds = ss["stop"] - ss["start"]
            if ss["action"] == "compute":
                compute[key_split(rec["key"])] += seconds
            else:
                other[ss["action"]] += seconds
    busy = sum(compute.values())
    top = dict(sorted(compute.items(), key=lambda kv: -kv[1]))
    return {
        "tasks": len(records),
        "compute_s_by_prefix": {k: round(v, 3) for k, v in top.items()},
        "other_s_by_action": {k: round(v, 3) for k, v in other.items()},
        "worker_busy_fraction": round(busy / (wall_s * workers), 3) if wall_s > 0 else None,
    }


class PeakMemory:
    """Peak resident memory (bytes) of each worker process while the block runs, sampled every
    ``every`` seconds by a thread of this process (psutil on the workers' pids: same machine)."""

    def __init__(self, client: Client, every: float = 0.05):
        import psutil

        self.processes = {addr: psutil.Process(pid) for addr, pid in client.run(os.getpid).items()}
        self.every, self.peak = every, dict.fromkeys(self.processes, 0)
        self.start = {addr: p.memory_info().rss for addr, p in self.processes.items()}
        self._stop = threading.Event()

    def _poll(self) -> None:
        while not self._stop.is_set():
            for addr, process in self.processes.items():
                self.peak[addr] = max(self.peak[addr], process.memory_info().rss)
            self._stop.wait(self.every)

    def __enter__(self) -> PeakMemory:
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> dict[str, Any]:
        return {"peak_rss_mb": {a: round(v / 2**20) for a, v in self.peak.items()},
                "start_rss_mb": {a: round(v / 2**20) for a, v in self.start.items()}}  # fmt: skip


def run_agnsurvey(fits_path: Path, workspace: Path, client: Client, workers: int) -> dict[str, Any]:
    """Time ``ingest`` then ``label`` (plots off) on ``client``; class counts read back afterwards."""
    with get_task_stream(client=client) as ingest_stream:
        t0 = now()
        ingested = ingest(IngestArgs(workspace=workspace, inputs=(str(fits_path),)), client)
        t1 = now()
    with get_task_stream(client=client) as label_stream:
        t2 = now()
        labelled = label(LabelArgs(workspace=workspace, plots=False), client)
        t3 = now()
    classes = read_table(workspace / "labels", ["bpt_class"])["bpt_class"]
    return {
        "ingest_s": t1 - t0,
        "label_s": t3 - t2,
        "ingest_rows_in": ingested.rows_in,
        "ingest_rows_out": ingested.rows_out,
        "ingest_dropped": dict(ingested.dropped),
        "label_rows_in": labelled.rows_in,
        "label_rows_out": labelled.rows_out,
        "label_dropped": dict(labelled.dropped),
        "classes": {str(k): int(v) for k, v in classes.value_counts().items()},
        "ingest_tasks": task_breakdown(ingest_stream.data, t1 - t0, workers),
        "label_tasks": task_breakdown(label_stream.data, t3 - t2, workers),
        "partitions": ingested.outputs["partitions"],
        "rows_per_partition": ingested.outputs["rows_per_partition"],
    }


def run_memory(fits_path: Path, workspace: Path, client: Client) -> dict[str, Any]:
    """Peak resident memory of each worker during ``ingest`` and during ``label``, each on freshly
    restarted workers (RSS is not given back between runs, so warm workers would show the largest
    earlier run instead). Not timed."""
    out = {}
    for stage, run in (("ingest", lambda: ingest(IngestArgs(workspace=workspace, inputs=(str(fits_path),)), client)),
                       ("label", lambda: label(LabelArgs(workspace=workspace, plots=False), client))):  # fmt: skip
        client.restart()
        with PeakMemory(client) as memory:
            run()
        out[stage] = memory.report()
    return out


# --------------------------------------------------------------------------------------------------
# 5. The BPT kernel, one thread


def run_kernel(n: int = KERNEL_ROWS, repeat: int = KERNEL_REPEAT, seed: int = 1) -> dict[str, Any]:
    """Best-of-``repeat`` seconds of ``bpt_class`` (paper) and of ``log_ratios`` + ``bpt_class`` on n rows.

    numpy's ufuncs run in the calling thread; threadpoolctl (when installed) also pins BLAS/OpenMP
    pools to one thread so nothing else can help.
    """
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.5, 0.6, n)
    y = rng.uniform(-1.2, 1.5, n)
    ha = rng.lognormal(4.0, 1.0, n).astype(np.float32)
    hb = (ha / rng.uniform(2.86, 6.0, n)).astype(np.float32)
    nii = (ha * 10 ** rng.uniform(-1.5, 0.6, n)).astype(np.float32)
    oiii = (hb * 10 ** rng.uniform(-1.2, 1.5, n)).astype(np.float32)
    try:
        from threadpoolctl import threadpool_limits

        limiter: Any = threadpool_limits(limits=1)
        pinned = True
    except ImportError:
        limiter, pinned = _null_context(), False
    class_s, full_s = [], []
    with limiter:
        for _ in range(repeat):
            t0 = now()
            bpt.bpt_class(x, y, "paper")
            class_s.append(now() - t0)
        for _ in range(repeat):
            t0 = now()
            xx, yy = bpt.log_ratios(nii, ha, oiii, hb)
            bpt.bpt_class(xx, yy, "paper")
            full_s.append(now() - t0)
    return {"rows": n, "threads": 1, "threadpoolctl": pinned, "bpt_class_s": class_s, "log_ratios_bpt_class_s": full_s}


@contextmanager
def _null_context() -> Iterator[None]:
    yield


# --------------------------------------------------------------------------------------------------
# Checks, one size end to end, and the report


def verify(n: int, agn: dict[str, Any], pandas: dict[str, Any]) -> None:
    """Raise unless agnsurvey and pandas kept the same rows and found the same classes."""
    ours = {k: v for k, v in agn["classes"].items() if v}
    if agn["label_rows_out"] != pandas["rows_kept"] or ours != pandas["classes"]:
        raise RuntimeError(
            f"{n} rows: agnsurvey labelled {agn['label_rows_out']} rows {ours}, pandas kept "
            f"{pandas['rows_kept']} {pandas['classes']}: the results differ, so the timings mean nothing"
        )
    if agn["ingest_rows_out"] != pandas["rows_after_coords_and_ids"]:
        raise RuntimeError(
            f"{n} rows: agnsurvey ingested {agn['ingest_rows_out']} rows, pandas kept "
            f"{pandas['rows_after_coords_and_ids']} after the coordinate and duplicate-id cuts"
        )


def measure_size(n: int, data: Path, client: Client, workers: int, repeat: int, keep: bool,
                 skip_hats_import: bool = False) -> dict[str, Any]:  # fmt: skip
    """Every method on the sky of ``n`` rows, ``repeat`` times each; raw timings."""
    sky = ensure_sky(data, n, client)
    fits_path = Path(sky["dir"]) / SKY_FITS
    runs = data / f"runs-{n}"
    result: dict[str, Any] = {"rows": n, "sky": sky, "agnsurvey": [], "floor_parquet": [], "floor_fits": []}
    result["pandas"], result["hats_import"] = [], []
    for i in range(repeat):
        with scratch(runs / f"floor-parquet-{i}", keep) as out:
            result["floor_parquet"].append(floor_parquet(Path(sky["dir"]) / SKY_PARQUET, out))
        with scratch(runs / f"floor-fits-{i}", keep) as out:
            result["floor_fits"].append(floor_fits(fits_path, out))
        with scratch(runs / f"pandas-{i}", keep) as out:
            result["pandas"].append(run_pandas(fits_path, out))
        with scratch(runs / f"agnsurvey-{i}", keep) as out:
            result["agnsurvey"].append(run_agnsurvey(fits_path, out / "ws", client, workers))
        verify(n, result["agnsurvey"][-1], result["pandas"][-1])
        if i == 0:
            with scratch(runs / "memory", keep) as out:
                result["memory"] = run_memory(fits_path, out / "ws", client)
        if not skip_hats_import:
            with scratch(runs / f"hats-import-{i}", keep) as out:
                result["hats_import"].append(run_hats_import(fits_path, out, client))
            if result["hats_import"][-1]["rows"] != n:
                raise RuntimeError(f"hats-import wrote {result['hats_import'][-1]['rows']} rows of {n}")
    if not keep:
        shutil.rmtree(runs, ignore_errors=True)
    return result


def best(values: list[float]) -> float:
    return min(values)


def size_label(n: int) -> str:
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


def summarise(result: dict[str, Any], workers: int) -> list[dict[str, Any]]:
    """One row per method for one size: best seconds, rows/s, ratios to the FITS floor and to pandas."""
    n = result["rows"]
    agn = result["agnsurvey"]
    ff = result["floor_fits"]
    fp = result["floor_parquet"]
    seconds = {
        "agnsurvey ingest": best([r["ingest_s"] for r in agn]),
        "agnsurvey label": best([r["label_s"] for r in agn]),
        "agnsurvey ingest+label": best([r["ingest_s"] + r["label_s"] for r in agn]),
        "floor Parquet->Parquet": best([r["read_s"] + r["write_s"] for r in fp]),
        "floor FITS->Parquet": best([r["read_s"] + r["write_s"] for r in ff]),
        "floor x2 FITS->Pq->Pq": best([r["read_s"] + r["write_s"] + r["read2_s"] + r["write2_s"] for r in ff]),
        "pandas (paper)": best([r["seconds"] for r in result["pandas"]]),
    }
    if result.get("hats_import"):
        seconds["hats-import FITS->HATS"] = best([r["seconds"] for r in result["hats_import"]])
    where = {
        "agnsurvey ingest": f"{workers} workers",
        "agnsurvey label": f"{workers} workers",
        "agnsurvey ingest+label": f"{workers} workers",
        "hats-import FITS->HATS": f"{workers} workers",
    }
    floor_rate = n / seconds["floor FITS->Parquet"]
    pandas_rate = n / seconds["pandas (paper)"]
    rows = []
    for method, s in seconds.items():
        rate = n / s
        rows.append(
            {
                "size": size_label(n),
                "method": method,
                "runs on": where.get(method, "1 process"),
                "seconds": s,
                "rows/s": rate,
                "x floor": rate / floor_rate,
                "x pandas": rate / pandas_rate,
            }
        )
    if result["sky"]["seconds"] is not None:
        s = result["sky"]["seconds"]
        rows.append(
            {"size": size_label(n), "method": "sky generation (not compared)", "runs on": f"{workers} workers"}
            | {"seconds": s, "rows/s": n / s}
        )
    return rows


def kernel_rows(kernel: dict[str, Any]) -> list[dict[str, Any]]:
    n = kernel["rows"]
    out = []
    methods = (("BPT kernel bpt_class", "bpt_class_s"), ("BPT log_ratios+bpt_class", "log_ratios_bpt_class_s"))
    for method, key in methods:
        s = best(kernel[key])
        out.append({"size": size_label(n), "method": method, "runs on": "1 thread", "seconds": s, "rows/s": n / s})
    return out


def formatted(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    def fmt(row: dict[str, Any]) -> dict[str, str]:
        out = {k: str(v) for k, v in row.items()}
        out["seconds"] = f"{row['seconds']:.2f}" if "seconds" in row else "-"
        out["rows/s"] = format_rate(row.get("rows/s"))
        out["x floor"] = f"{row['x floor']:.2f}" if "x floor" in row else "-"
        out["x pandas"] = f"{row['x pandas']:.2f}" if "x pandas" in row else "-"
        return out

    return [fmt(r) for r in rows]


def breakdown_lines(result: dict[str, Any]) -> list[str]:
    """Where agnsurvey's worker time went (best run), as short text lines."""
    run = min(result["agnsurvey"], key=lambda r: r["ingest_s"] + r["label_s"])
    lines = []
    for stage in ("ingest", "label"):
        tasks = run[f"{stage}_tasks"]
        top = list(tasks["compute_s_by_prefix"].items())[:5]
        parts = ", ".join(f"{k} {v:.1f}s" for k, v in top)
        memory = result["memory"][stage]
        peak = max(memory["peak_rss_mb"].values())
        lines.append(
            f"  {size_label(result['rows'])} {stage}: wall {run[f'{stage}_s']:.1f}s, workers busy "
            f"{100 * (tasks['worker_busy_fraction'] or 0):.0f}%, {tasks['tasks']} tasks, peak worker RSS "
            f"{peak} MB (fresh workers start at {max(memory['start_rss_mb'].values())} MB); top: {parts}"
        )
    partition = run["rows_per_partition"]
    lines.append(f"  {size_label(result['rows'])} partitions: {run['partitions']} of {partition['min']:,} to "
                 f"{partition['max']:,} rows (threshold {partition['threshold']:,})")  # fmt: skip
    return lines


def aims(results: list[dict[str, Any]], kernel: dict[str, Any], workers: int) -> list[str]:
    kernel_rate = kernel["rows"] / best(kernel["bpt_class_s"])
    lines = [f"  BPT kernel: {format_rate(kernel_rate)} rows/s per core (aim >= 30M): {_ok(kernel_rate >= 30e6)}"]
    for result in results:
        rows = {r["method"]: r for r in summarise(result, workers)}
        ours = rows["agnsurvey ingest+label"]["rows/s"]
        ratio2 = ours / rows["floor x2 FITS->Pq->Pq"]["rows/s"]
        ratio_pandas = rows["agnsurvey ingest+label"]["x pandas"]
        line = (f"  {size_label(result['rows'])} ingest+label: {ratio2:.2f} x floor x2 (aim >= 0.50: "
                f"{_ok(ratio2 >= 0.5)}), {ratio_pandas:.2f} x pandas (aim > 1: {_ok(ratio_pandas > 1)})")  # fmt: skip
        if "hats-import FITS->HATS" in rows:
            ratio_hats = ours / rows["hats-import FITS->HATS"]["rows/s"]
            line += f", {ratio_hats:.1f} x hats-import (aim >= 5: {_ok(ratio_hats >= 5)})"
        lines.append(line)
    return lines


def _ok(flag: bool) -> str:
    return "met" if flag else "NOT met"


def summary_rows(table: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    """``agnsurvey bench``'s rows: ingest+label beside pandas, the floor x2 and hats-import, per size."""
    summary = []
    for size in {row["size"] for row in table if "size" in row}:
        rate = {row["method"]: row.get("rows/s") for row in table if row.get("size") == size}
        if "agnsurvey ingest+label" not in rate:
            continue
        ours, work = rate["agnsurvey ingest+label"], f"{size} rows, {workers} workers"
        for reference in ("pandas (paper)", "floor x2 FITS->Pq->Pq", "hats-import FITS->HATS"):
            if reference in rate:
                summary.append(summary_row("catalog (ingest+label)", work, ours, "rows/s", reference, rate[reference]))
    return summary


# --------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = arg_parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000], help="catalog rows")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (1 thread each)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of every method per size; the best is shown")
    parser.add_argument("--data", type=Path, help="directory for sky catalogs (reused if present) and outputs")
    parser.add_argument("--keep", action="store_true", help="keep generated catalogs and outputs")
    parser.add_argument("--kernel-rows", type=int, default=KERNEL_ROWS, help="points for the BPT kernel")
    parser.add_argument("--no-hats-import", action="store_true", help="skip the hats-import comparison")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.repeat < 1 or any(s < 1 for s in args.sizes):
        parser.error("--sizes, --workers and --repeat must be positive")
    return args


def missing_peer() -> str | None:
    """Why the hats-import comparison cannot run here (it is a dev extra, not a dependency), or None."""
    try:
        import hats_import.pipeline  # noqa: F401
    except ImportError as exc:
        return (f"hats-import is not installed ({exc}); `pip install -e '.[dev]'` installs it. Measured without it: "
                "the pandas loop and the I/O floors are the references")  # fmt: skip
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = machine_info()  # before anything runs: the commit measured, not the one at the end
    peer = None if args.no_hats_import else missing_peer()
    if peer:
        print(peer, flush=True)
        args.no_hats_import = True
    data = args.data or Path(tempfile.mkdtemp(prefix="agnsurvey-bench-"))
    data.mkdir(parents=True, exist_ok=True)
    keep_data = args.keep or args.data is not None
    print(f"data in {data}; {usable_cores()} usable cores; {args.workers} workers", flush=True)
    try:
        t0 = now()
        logging.getLogger("distributed.nanny").setLevel(logging.ERROR)  # "Restarting worker" before memory runs
        with connect(Local(n_workers=args.workers, threads_per_worker=1)) as client:  # the cluster `agnsurvey` makes
            startup_s = now() - t0
            print(f"LocalCluster start-up: {startup_s:.2f} s", flush=True)
            results = []
            for n in args.sizes:
                print(f"measuring {size_label(n)} rows ...", flush=True)
                results.append(measure_size(n, data, client, args.workers, args.repeat, args.keep,
                                            skip_hats_import=args.no_hats_import))  # fmt: skip
        print(f"measuring the BPT kernel on {size_label(args.kernel_rows)} points ...", flush=True)
        kernel = run_kernel(args.kernel_rows)
    finally:
        if not keep_data:
            shutil.rmtree(data, ignore_errors=True)

    table = [row for r in results for row in summarise(r, args.workers)] + kernel_rows(kernel)
    notes = [f"LocalCluster start-up (not timed above): {startup_s:.2f} s"] + ([peer] if peer else [])
    notes += ["agnsurvey worker time by task kind (compute seconds summed over workers):"]
    notes += [line for r in results for line in breakdown_lines(r)]
    notes += ["aims:"] + aims(results, kernel, args.workers)
    payload = {
        "parameters": {
            "sizes": args.sizes,
            "workers": args.workers,
            "threads_per_worker": 1,
            "repeat": args.repeat,
            "kernel_rows": args.kernel_rows,
            "sky_seed": SKY_SEED,
            "parquet_options": PARQUET_OPTIONS,
            "source_columns": list(SOURCE_COLUMNS),
            "data_reused": args.data is not None,
            "command": " ".join(sys.argv),
        },
        "definitions": {
            "rows/s": "catalog rows in / seconds (agnsurvey: / (ingest s + label s)); best of --repeat",
            "x floor": "rows/s relative to 'floor FITS->Parquet' (1 process: read the 13 columns, write once)",
            "floor x2": "FITS -> Parquet, then that file -> Parquet again (ingest and label each write)",
        },
        "cluster_startup_s": startup_s,
        "peers_missing": [peer] if peer else [],
        "sizes": results,
        "kernel": kernel,
        "table": table,
    }
    columns = ["size", "method", "runs on", "seconds", "rows/s", "x floor", "x pandas"]
    report("bench_catalog", machine, payload, [Table(formatted(table), columns, right=columns[3:])], notes,
           summary=summary_rows(table, args.workers))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
