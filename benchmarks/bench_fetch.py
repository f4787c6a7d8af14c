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

Plus, in-process on pre-fetched JPEG bytes: CPU milliseconds per image for ``decode_jpeg``,
``resize`` and writing into a Zarr cube shard (``Cube.write_shard``), and the cube's bytes per image.

Why: fetching is meant to be latency bound, so concurrency should buy throughput linearly (aim:
>= 80 % of C / L) until the CPU becomes the bound, and the client must beat the sequential way it
was done before by >= 30x at concurrency 64. The server runs in its own process (its CPU is
measured separately) and its JPEG cache is warmed with every URL first, so the server does no
rendering while a method is timed (checked: renders during timing are reported). On a machine with
few cores the client and the server share them: the table says, for every point, the client's and
the server's CPU per image, how busy the whole machine was, and the CPU limit these imply.

    python benchmarks/bench_fetch.py [--latency 0.05] [--concurrency 1 8 32 64 128] [--images N] [--keep]

Prints tables and writes ``benchmarks/results/bench_fetch-<timestamp>.json`` (machine info,
parameters, every raw measurement).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import io
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
from _machine import machine_info, print_table, summary_row, usable_cores, write_results
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
SIZE = 250  # pixels requested (the paper's)
IMAGE_SIZE = 128  # pixels stored
LAYER = "ls-dr10"
RATE_OFF = 1e6  # requests/s: the politeness limit, effectively off
TARGET_S = 4.0  # a client point gets about this many seconds' worth of images at its ideal rate
MIN_IMAGES = 64
LABELLED_FRACTION = 0.6  # at least this share of the offline sky survives labelling (~0.70 measured)
CACHE_MB = 1024  # server JPEG cache: every URL of the run fits (~10 kB each)
CPU_REPEAT = 3
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


@dataclass(frozen=True)
class Galaxy:
    ra: float
    dec: float
    pixscale: float  # arcsec/pixel, as the fetch stage requests it (float32 in the cube)


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
# The server, in its own process; CPU meters


@dataclass
class Server:
    url: str  # the cutout endpoint, http://127.0.0.1:PORT/viewer/cutout.jpg
    proc: subprocess.Popen

    @property
    def base(self) -> str:
        return self.url.rsplit("/viewer/", 1)[0]

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base}/_offline/stats", timeout=10) as r:
            return json.loads(r.read())

    def cpu_seconds(self) -> float:
        """CPU (user + system) of the server process and its render pool so far."""
        return process_cpu([self.proc.pid], children=True)


@contextlib.contextmanager
def cutout_server(fits_path: Path, latency_s: float, data: Path) -> Iterator[Server]:
    """``agnsurvey --config serve.toml sky serve ...`` as a child process; yields once it listens.

    The CLI has no flag for the JPEG cache size, so a ``[serve]`` table sets ``cache_mb`` (and turns
    the request log off: it is not needed here). Render workers are processes, for the warm-up.
    """
    config = data / "serve.toml"
    config.write_text(f"[serve]\ncache_mb = {CACHE_MB}\nlog_limit = 0\n")
    url_file = data / "server-url.txt"
    url_file.unlink(missing_ok=True)
    exe = Path(sys.executable).with_name("agnsurvey")
    cmd = (
        [str(exe)]
        if exe.exists()
        else [sys.executable, "-c", "import sys; from pipeline.cli import main; sys.exit(main())"]
    )
    cmd += ["--config", str(config), "sky", "serve", "--catalog", str(fits_path), "--latency", str(latency_s)]
    cmd += ["--url-file", str(url_file), "--processes", "--host", "127.0.0.1", "--port", "0"]
    log = (data / "server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not url_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the cutout server did not start; see {data / 'server.log'}")
            time.sleep(0.1)
        yield Server(url_file.read_text().strip(), proc)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def process_cpu(pids: Sequence[int], children: bool = False) -> float:
    """Summed user + system CPU seconds of ``pids`` (and their live children)."""
    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs = [proc, *(proc.children(recursive=True) if children else [])]
            for p in procs:
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (all cores, all processes)."""
    t = psutil.cpu_times()
    total = sum(t)
    idle = t.idle + getattr(t, "iowait", 0.0)
    return total - idle, total


@dataclass
class Snapshot:
    wall: float
    client_cpu: float
    server_cpu: float
    busy: float
    total: float
    renders: int
    requests: int


class Meter:
    """Wall time, client and server CPU, machine busy time and server counters around one method."""

    def __init__(self, server: Server, client_pids: Callable[[], Sequence[int]] = lambda: [os.getpid()]):
        self.server, self.client_pids = server, client_pids

    def snap(self) -> Snapshot:
        stats = self.server.stats()
        busy, total = machine_busy()
        return Snapshot(now(), process_cpu(self.client_pids()), self.server.cpu_seconds(), busy, total,
                        stats["renders"], stats["requests"])  # fmt: skip

    @contextlib.contextmanager
    def measure(self, images: int, out: dict[str, Any]) -> Iterator[None]:
        a = self.snap()
        yield
        b = self.snap()
        seconds = b.wall - a.wall
        out.update(
            {
                "images": images,
                "seconds": seconds,
                "images_per_s": images / seconds,
                "client_cpu_ms_per_image": 1e3 * (b.client_cpu - a.client_cpu) / images,
                "server_cpu_ms_per_image": 1e3 * (b.server_cpu - a.server_cpu) / images,
                "machine_busy_fraction": (b.busy - a.busy) / max(b.total - a.total, 1e-9),
                # CPU of every other process (other work on a shared machine) as a share of all cores
                "others_busy_fraction": max(
                    0.0,
                    ((b.busy - a.busy) - (b.client_cpu - a.client_cpu) - (b.server_cpu - a.server_cpu))
                    / max(b.total - a.total, 1e-9),
                ),
                "server_requests": b.requests - a.requests,
                "server_renders": b.renders - a.renders,
                "loadavg_1m_after": os.getloadavg()[0],
            }
        )


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
                n: int) -> dict[str, Any]:  # fmt: skip
    shutil.rmtree(ws / "cube.zarr", ignore_errors=True)
    args = FetchArgs(workspace=ws, cutout_url=server.url, layer=LAYER, size=SIZE, image_size=IMAGE_SIZE,
                     concurrency=concurrency, rate=RATE_OFF, restart=True)  # fmt: skip
    loops = sum(client.nthreads().values()) if client is not None else 1
    where = f"LocalCluster {len(client.nthreads())} workers" if client is not None else "1 process"
    point: dict[str, Any] = {"method": f"fetch stage, {where}", "concurrency": concurrency, "loops": loops}
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
# 3. the paper's sequential loop


def sequential_point(urls: list[str], out: Path, meter: Meter) -> dict[str, Any]:
    """GET each URL with the standard library and save the JPEG, one after another."""
    out.mkdir(parents=True, exist_ok=True)
    point: dict[str, Any] = {"method": "sequential urllib + save (paper)", "concurrency": 1, "loops": 1}
    with meter.measure(len(urls), point):
        for i, url in enumerate(urls):
            with urllib.request.urlopen(url, timeout=30) as response:
                body = response.read()
            (out / f"{i:06d}.jpg").write_bytes(body)
    check_jpegs(sorted(out.glob("*.jpg")), len(urls), point["method"])
    point["bytes"] = sum(p.stat().st_size for p in out.glob("*.jpg"))
    return point


def check_jpegs(files: list[Path], n: int, method: str) -> None:
    if len(files) != n:
        raise RuntimeError(f"{method}: {len(files)} files written, {n} expected")
    for path in files:
        decode_jpeg(path.read_bytes(), SIZE)  # raises on a wrong answer


# --------------------------------------------------------------------------------------------------
# 4. legacystamps, pointed at the local server

# legacystamps 1.2.2 (legacystamps/legacystamps.py) builds its URL inside ``download`` from a string
# literal, 'https://www.legacysurvey.org/viewer/{mode}-cutout/?ra=..&dec=..&layer=..&pixscale=..&
# bands=..&size=..', and fetches it with ``requests.get(url, stream=True)`` in
# ``FileDownloader.download_file``, both through the module-level name ``requests`` of
# ``legacystamps.legacystamps``. There is no base-URL setting, so we rebind that one name to
# :class:`LocalRequests`: it forwards everything to the real ``requests`` module except ``get`` and
# ``head``, whose URL it rewrites from the real viewer's prefix to the local server's
# (``/viewer/jpeg-cutout/`` → ``http://127.0.0.1:PORT/viewer/jpeg-cutout``; the offline server routes
# the old name without the trailing slash). A URL with any other prefix raises instead of leaving
# the machine. The rebinding is undone afterwards; nothing else in the process is touched.
LEGACYSTAMPS_PREFIX = "https://www.legacysurvey.org/viewer/jpeg-cutout/"


class LocalRequests:
    """Stands in for ``requests`` inside ``legacystamps.legacystamps`` only: real viewer URL → local."""

    def __init__(self, real: Any, local_endpoint: str):
        self._real, self._local = real, local_endpoint
        self.rewritten = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def _rewrite(self, url: str) -> str:
        if not url.startswith(LEGACYSTAMPS_PREFIX):
            raise RuntimeError(f"legacystamps asked for {url!r}, not the viewer's JPEG cutout; refusing to go out")
        self.rewritten += 1
        return self._local + url[len(LEGACYSTAMPS_PREFIX) :]

    def get(self, url: str, *args: Any, **kwargs: Any) -> Any:
        return self._real.get(self._rewrite(url), *args, **kwargs)

    def head(self, url: str, *args: Any, **kwargs: Any) -> Any:
        return self._real.head(self._rewrite(url), *args, **kwargs)


def legacystamps_size_deg(g: Galaxy) -> float:
    """The ``size`` (degrees) for which legacystamps asks for SIZE pixels at ``g.pixscale``.

    It computes ``int(size * 3600 / pixscale)``; half a pixel more keeps float rounding from giving
    SIZE - 1. It sends the pixscale rounded to 3 decimals (agnsurvey sends 5): the same field to
    within 0.2 %, a different cache key, so its URLs are warmed separately.
    """
    return (SIZE + 0.5) * g.pixscale / 3600.0


def legacystamps_local_urls(server: Server, gals: Sequence[Galaxy]) -> list[str]:
    """The local twins of the URLs legacystamps will ask for (same parameters, same formatting)."""
    local = server.base + "/viewer/jpeg-cutout"
    return [
        f"{local}?ra={g.ra:f}&dec={g.dec:f}&layer={LAYER}&pixscale={g.pixscale:.3f}&bands=grz"
        f"&size={int(legacystamps_size_deg(g) * 3600 / g.pixscale)}"
        for g in gals
    ]


def ensure_legacystamps() -> tuple[Any | None, dict[str, Any]]:
    """Import legacystamps, pip-installing it into this environment first if needed."""
    info: dict[str, Any] = {"installed_now": False}
    if importlib.util.find_spec("legacystamps") is None:
        print("installing legacystamps into this environment (pip) ...", flush=True)
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "legacystamps"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, info | {"available": False, "reason": f"pip install failed: {exc}"}
        if done.returncode != 0:
            reason = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
            return None, info | {"available": False, "reason": f"pip install failed: {reason[0]}"}
        info["installed_now"] = True
        importlib.invalidate_caches()
    try:
        module = importlib.import_module("legacystamps.legacystamps")
    except Exception as exc:  # a broken install must not end the benchmark
        return None, info | {"available": False, "reason": f"import failed: {type(exc).__name__}: {exc}"}
    from importlib import metadata

    return module, info | {"available": True, "version": metadata.version("legacystamps")}


def legacystamps_point(module: Any, gals: Sequence[Galaxy], server: Server, out: Path, meter: Meter) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    point: dict[str, Any] = {"method": "legacystamps.download", "concurrency": 1, "loops": 1}
    real = module.requests
    shim = LocalRequests(real, server.base + "/viewer/jpeg-cutout")
    module.requests = shim
    try:
        # it prints the URL and a tqdm bar per image to stdout: kept out of the table, still paid for
        with contextlib.redirect_stdout(io.StringIO()), meter.measure(len(gals), point):
            for g in gals:
                module.download(g.ra, g.dec, "grz", size=legacystamps_size_deg(g), mode="jpeg", layer=LAYER,
                                pixscale=g.pixscale, ddir=str(out))  # fmt: skip
    finally:
        module.requests = real
    if shim.rewritten != len(gals):
        raise RuntimeError(f"legacystamps made {shim.rewritten} requests for {len(gals)} images")
    check_jpegs(sorted(out.glob("*.jpeg")), len(gals), point["method"])
    point["bytes"] = sum(p.stat().st_size for p in out.glob("*.jpeg"))
    return point


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
    ideal = c / latency_s
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


def fmt_rate(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    parser.add_argument("--no-legacystamps", action="store_true", help="skip the legacystamps baseline")
    parser.add_argument("--keep", action="store_true", help="keep the data directory (sky, workspace, files)")
    args = parser.parse_args(argv)
    if args.latency <= 0 or args.images < 1 or args.baseline_images < 1 or args.workers < 1:
        parser.error("--latency, --images, --baseline-images and --workers must be positive")
    if any(c < 1 for c in args.concurrency) or args.stage_concurrency < 1 or args.cpu_images < 1:
        parser.error("concurrencies and --cpu-images must be positive")
    return args


def point_images(concurrency: int, latency_s: float, pool: int) -> int:
    return min(pool, max(MIN_IMAGES, round(concurrency / latency_s * TARGET_S)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = machine_info(EXTRA_PACKAGES)  # before anything runs: the commit measured
    cores = usable_cores()
    data = Path(tempfile.mkdtemp(prefix="agnsurvey-bench-fetch-"))
    print(f"data in {data}; os.cpu_count() = {os.cpu_count()}, {cores} usable cores; latency {args.latency * 1e3:g} ms")
    load_start = os.getloadavg()
    n_base = min(args.baseline_images, args.images)
    n_cpu = min(args.cpu_images, args.images)
    points: list[dict[str, Any]] = []
    legacy_info: dict[str, Any] = {"available": False, "reason": "skipped (--no-legacystamps)"}
    module = None
    if not args.no_legacystamps:
        module, legacy_info = ensure_legacystamps()
    try:
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
            sequential = sequential_point(urls[:n_base], data / "sequential", meter)
            points.append(sequential)
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

            print(f"fetch stage, 1 process, concurrency {args.stage_concurrency}, {len(urls):,} images ...", flush=True)
            points.append(stage_point(ws, server, args.stage_concurrency, None, meter, len(urls)))
            with (
                LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                             silence_logs=logging.ERROR) as cluster,
                Client(cluster) as client,
            ):  # fmt: skip
                worker_pids = list(client.run(os.getpid).values())
                print(f"fetch stage, LocalCluster {args.workers} workers, {len(urls):,} images ...", flush=True)
                cluster_meter = Meter(server, lambda: [os.getpid(), *worker_pids])
                points.append(stage_point(ws, server, args.stage_concurrency, client, cluster_meter, len(urls)))
            cube = points[-1]["cube"]

            print(f"CPU per image on {n_cpu:,} JPEGs ...", flush=True)
            bodies = fetch_bodies(urls[:n_cpu])
            cpu = cpu_per_image(bodies, data)
            server_stats = server.stats()
    finally:
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)

    seq_rate = sequential["images_per_s"]
    points = [enrich(p, args.latency, cores, seq_rate) for p in points]
    print()
    text = print_table(table_rows(points), COLUMNS, right=COLUMNS[1:8] + COLUMNS[9:])
    print()
    cpu_text = print_table(
        cpu_table(cpu, cube), ["step", "CPU ms/img", "wall ms/img"], right=["CPU ms/img", "wall ms/img"]
    )
    renders = sum(p["server_renders"] for p in points)
    notes = [
        f"os.cpu_count() = {os.cpu_count()}, usable cores {cores}; load average at start "
        f"{load_start[0]:.2f}, at end {os.getloadavg()[0]:.2f} (other work on the machine adds noise)",
        f"ideal = concurrency / latency ({args.latency * 1e3:g} ms); CPU limit = min(cores / (client + server CPU "
        "per image), event loops / client CPU per image); busy % = whole machine, all processes; others % = "
        "processes other than this benchmark's client and server (both as a share of all cores)",
        f"server renders while timing: {renders} (0: every timed answer came from its cache)",
        f"legacystamps: {legacy_info.get('version', legacy_info.get('reason'))}",
        "aims:",
        *aims(points, sequential, args.latency),
    ]
    print("\n".join(notes))
    stage = points[-1]
    summary = [summary_row(f"fetch ({stage['method']})", f"{stage['images']:,} images, latency {args.latency:g} s",
                           stage["images_per_s"], "img/s", "bound: min(ideal, CPU limit)",
                           min(stage["ideal_images_per_s"], stage["cpu_limit_images_per_s"]))]  # fmt: skip
    path = write_results(
        "bench_fetch",
        {
            "summary": summary,
            "parameters": {
                "latency_s": args.latency,
                "concurrency": args.concurrency,
                "images": args.images,
                "baseline_images": n_base,
                "stage_concurrency": args.stage_concurrency,
                "workers": args.workers,
                "cpu_images": n_cpu,
                "size": SIZE,
                "image_size": IMAGE_SIZE,
                "layer": LAYER,
                "rate_limit": RATE_OFF,
                "target_seconds_per_point": TARGET_S,
                "server": {"cache_mb": CACHE_MB, "executor": "process", "process": "separate (agnsurvey sky serve)"},
                "sky_seed": SKY_SEED,
                "command": " ".join(sys.argv),
            },
            "definitions": {
                "images_per_s": "images / wall seconds of the method (fetch stage: the whole fetch() call)",
                "ideal_images_per_s": "concurrency / latency",
                "cpu_limit_images_per_s": "min(cores / (client + server CPU s per image), loops / client CPU s "
                "per image), from this point's own CPU measurements",
                "x_sequential": "images_per_s / the sequential urllib loop's",
                "client_cpu_ms_per_image": "CPU (user+system) of the measuring process (and fetch workers) / images",
                "server_cpu_ms_per_image": "CPU of the server process and its render pool / images",
                "machine_busy_fraction": "busy / total CPU time of the whole machine over the point",
                "others_busy_fraction": "CPU of processes other than the client(s) and the server / total CPU time",
            },
            "cores": cores,
            "cpu_count": os.cpu_count(),
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
            "setup": setup,
            "warm_up": warm,
            "legacystamps": legacy_info,
            "points": points,
            "cpu_per_image": cpu,
            "cube": cube,
            "server_stats_end": server_stats,
            "table_text": text,
            "cpu_table_text": cpu_text,
            "notes": notes,
        },
        machine=machine,
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
