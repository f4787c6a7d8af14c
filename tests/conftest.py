"""Shared fixtures: a real 2-process LocalCluster, a real single-node Slurm, and small hand-made catalogs in
the NSA layout."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
from aiohttp import web
from astropy.io import fits
from distributed import Client, LocalCluster
from slurm_node import PACKAGES, SlurmNode, missing_programs

NSA_FORMATS = {
    "NSAID": "J",
    "IAUNAME": "19A",
    "RA": "D",
    "DEC": "D",
    "Z": "E",
    "HAFLUX": "E",
    "HAFLUXERR": "E",
    "N2FLUX": "E",
    "N2FLUXERR": "E",
    "HBFLUX": "E",
    "HBFLUXERR": "E",
    "O3FLUX": "E",
    "O3FLUXERR": "E",
    "PETROTH50": "E",
    "PETROTH90": "E",
    "NMGY": "7E",
}


@pytest.fixture(scope="session")
def cluster_client():
    """A real distributed cluster: 2 worker processes, 1 thread each."""
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.fixture
def synchronous():
    """Run dask collections in this process, one task at a time (the 'single-threaded run')."""
    with dask.config.set(scheduler="synchronous"):
        yield


def nsa_rows(n: int, seed: int = 1) -> dict[str, np.ndarray]:
    """n NSA-like rows with valid positions and positive fluxes (tests then spoil some)."""
    rng = np.random.default_rng(seed)
    ha = rng.uniform(50, 500, n)
    hb = ha / rng.uniform(3.0, 5.0, n)
    x = rng.uniform(-1.2, 0.4, n)
    y = rng.uniform(-1.0, 1.0, n)
    return {
        "NSAID": np.arange(1000, 1000 + n, dtype=np.int32),
        "IAUNAME": np.array([f"J{i:06d}+000000.0" for i in range(n)]),
        "RA": rng.uniform(120, 240, n),
        "DEC": rng.uniform(0, 60, n),
        "Z": rng.uniform(0.01, 0.05, n).astype(np.float32),
        "HAFLUX": ha.astype(np.float32),
        "HAFLUXERR": np.full(n, 5.0, np.float32),
        "N2FLUX": (ha * 10**x).astype(np.float32),
        "N2FLUXERR": np.full(n, 5.0, np.float32),
        "HBFLUX": hb.astype(np.float32),
        "HBFLUXERR": np.full(n, 5.0, np.float32),
        "O3FLUX": (hb * 10**y).astype(np.float32),
        "O3FLUXERR": np.full(n, 5.0, np.float32),
        "PETROTH50": rng.uniform(2, 6, n).astype(np.float32),
        "PETROTH90": rng.uniform(6, 15, n).astype(np.float32),
        "NMGY": rng.uniform(0, 100, (n, 7)).astype(np.float32),
    }


def write_nsa_fits(path: Path, rows: dict[str, np.ndarray], formats: dict[str, str] | None = None) -> Path:
    """A FITS file laid out like NSA v0_1_2: empty primary HDU, BINTABLE in HDU 1."""
    formats = {**NSA_FORMATS, **(formats or {})}
    columns = [fits.Column(name=k, format=formats.get(k, "E"), array=v) for k, v in rows.items()]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(columns)]).writeto(path)
    return path


def rows_frame(rows: dict[str, np.ndarray]) -> pd.DataFrame:
    """Scalar columns of ``rows`` as a DataFrame (for Parquet / CSV copies of a test catalog)."""
    return pd.DataFrame({k: v for k, v in rows.items() if np.ndim(v) == 1})


@pytest.fixture
def nsa_fits(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    rows = nsa_rows(600)
    return write_nsa_fits(tmp_path / "nsa.fits", rows), rows


@contextlib.contextmanager
def serve_in_thread(handler, path: str = "/viewer/cutout.jpg"):
    """Run a one-route aiohttp server on 127.0.0.1 in a background thread; yield its URL and log.

    The log holds (monotonic time, query dict) of every request, for assertions about the client.
    """
    started = threading.Event()
    box: dict = {"log": []}

    async def logged(request):
        box["log"].append((time.monotonic(), dict(request.query)))
        return await handler(request)

    async def main():
        app = web.Application()
        app.router.add_get(path, logged)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        box["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}{path}"
        box["stop"] = asyncio.Event()
        started.set()
        await box["stop"].wait()
        await runner.cleanup()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(10), "test server did not start"
    try:
        yield box["url"], box["log"]
    finally:
        loop.call_soon_threadsafe(box["stop"].set)
        thread.join(10)


def sky_positions(n: int, seed: int = 0, ra: tuple = (0.0, 360.0), dec: tuple = (-10.0, 10.0)):
    """n positions (degrees) in sky order (sorted on the order-29 HEALPix index), as ingest numbers
    cube rows: row i of a hand-made catalog comes before row i + 1."""
    from storage.healpix import healpix29

    rng = np.random.default_rng(seed)
    r, d = rng.uniform(*ra, n), rng.uniform(*dec, n)
    order = np.argsort(healpix29(r, d), kind="stable")
    return r[order], d[order]


def write_table(frame: pd.DataFrame, path: Path, max_rows: int = 1000) -> None:
    """Write a hand-made workspace table (``catalog``, ``labels``) as the HATS catalog the stages
    write; positions are added in cube-row order where the frame has none."""
    from storage.hats_catalog import write_frame

    frame = frame.copy()
    if "ra" not in frame:
        frame["ra"], frame["dec"] = sky_positions(len(frame))
    write_frame(frame, path, path.name, max_rows=max_rows)


def training_workspace(ws: Path, n: int = 400, image_size: int = 16, seed: int = 0, learnable: bool = False,
                       status: np.ndarray | None = None, labels: np.ndarray | None = None) -> pd.DataFrame:  # fmt: skip
    """A workspace with WS/labels/ and WS/cube.zarr written directly (no sky, no server): row i has
    objid 1000 + i, label ``labels[i]`` (default i % 2) and a split from its id. Pixel (0, 0) of
    every image encodes the row (channel 0: row % 256, channel 1: row // 256) and the rest of the
    image is one flat value, so any flip or rotation keeps the code readable at every corner;
    ``learnable`` instead draws AGN bright and SF dim, noisy (a model can learn it)."""
    from pipeline.catalog.splits import SPLITS, split_codes
    from storage.cube import CubeLayout, create_cube

    rng = np.random.default_rng(seed)
    objid = np.arange(1000, 1000 + n, dtype=np.int64)
    label = np.asarray(labels if labels is not None else np.arange(n) % 2, dtype=np.int64)
    frame = pd.DataFrame({
        "objid": objid, "cube_row": np.arange(n, dtype=np.int64), "label": label.astype(np.int8),
        "split": pd.Categorical.from_codes(split_codes(objid), categories=list(SPLITS)),
    })  # fmt: skip
    frame["ra"], frame["dec"] = sky_positions(n, seed=seed)
    write_table(frame, ws / "labels", max_rows=max(64, n // 3))
    status = np.ones(n, np.int8) if status is None else np.asarray(status, np.int8)
    layout = CubeLayout(n, image_size, shard_images=64, inner_images=8)
    cube = create_cube(ws / "cube.zarr", layout, objid, np.ones(n, np.float32), np.zeros(n, np.int8), {})
    images = np.empty((n, image_size, image_size, 3), np.uint8)
    if learnable:
        base = np.where(label == 1, 150, 90)[:, None, None, None] + rng.normal(0, 40, images.shape)
        images[:] = np.clip(base, 0, 255)
    else:
        images[:] = (np.arange(n) * 7 % 200 + 20)[:, None, None, None]
        for y, x in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
            images[:, y, x, 0], images[:, y, x, 1], images[:, y, x, 2] = np.arange(n) % 256, np.arange(n) // 256, 0
    for shard in range(layout.n_shards):
        rows = layout.shard_rows(shard)
        cube.write_shard(shard, images[rows.start : rows.stop], status[rows.start : rows.stop])
    return frame


def decode_rows(images: np.ndarray) -> np.ndarray:
    """The row codes :func:`training_workspace` wrote into pixel (0, 0)."""
    return images[:, 0, 0, 0].astype(np.int64) + 256 * images[:, 0, 0, 1].astype(np.int64)


class _Killer(threading.Thread):
    """Kill -9 the process of the first worker seen running a task whose key starts with ``prefix``."""

    def __init__(self, client, prefix: str, timeout: float):
        super().__init__(daemon=True)
        self.client, self.prefix, self.timeout = client, prefix, timeout
        self.pids = client.run(os.getpid)
        self.killed: str = ""

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while not self.killed and time.monotonic() < deadline:
            for worker, keys in self.client.processing().items():
                if any(str(k).startswith(self.prefix) for k in keys) and worker in self.pids:
                    os.kill(self.pids[worker], signal.SIGKILL)
                    self.killed = worker
                    return
            time.sleep(0.02)


def kill_a_worker_running(client, prefix: str, timeout: float = 120.0) -> _Killer:
    """Start a thread that SIGKILLs a worker process (its nanny starts a new one) as soon as the
    worker runs a ``prefix`` task; ``.killed`` names it once done."""
    killer = _Killer(client, prefix, timeout)
    killer.start()
    return killer


# --- a real single-node Slurm (tests/slurm_node.py) -------------------------------------------------
# Started once for the session, stopped after it. Where Slurm is not installed (or not as root) its
# tests skip with the reason, except under CI=true, where that is a failure: .ci/run installs it.


def _slurm_unavailable() -> str:
    missing = missing_programs()
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing): apt-get install {PACKAGES}"
    if os.geteuid() != 0:
        return "a single-node Slurm needs root here (slurmd runs the jobs)"
    return ""


@pytest.fixture(scope="session")
def slurm_node(tmp_path_factory):
    why = _slurm_unavailable()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}; CI must run the Slurm tests (.ci/run installs the packages)")
        pytest.skip(why)
    node = SlurmNode(tmp_path_factory.mktemp("slurm")).start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def slurm(slurm_node, monkeypatch):
    """The running node, ``SLURM_CONF`` set for this test; no job is left when the test ends."""
    monkeypatch.setenv("SLURM_CONF", str(slurm_node.conf))
    slurm_node.cancel_all()
    yield slurm_node
    slurm_node.cancel_all()
