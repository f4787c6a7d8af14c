"""Fetch against the offline sky server on 127.0.0.1, with faults, kills and a real cluster."""

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import aiohttp
import dask
import numpy as np
import pandas as pd
import pytest
import zarr
from conftest import kill_a_worker_running
from distributed import Client, LocalCluster

from pipeline.catalog.args import IngestArgs, LabelArgs
from pipeline.catalog.ingest import ingest
from pipeline.catalog.label import label
from pipeline.errors import FetchError
from pipeline.images.args import FetchArgs
from pipeline.images.decode import decode_jpeg, resize
from pipeline.images.fetch import fetch
from pipeline.synthetic.args import SkyArgs
from pipeline.synthetic.catalog import SKY_FITS, make_sky
from pipeline.synthetic.server import serve_in_background
from pipeline.synthetic.server_config import ServerConfig, build_server_config
from pipeline.synthetic.skyindex import SkyIndex
from storage.hats_catalog import partition_files
from storage.tables import read_cube_status

ROOT = Path(__file__).resolve().parents[3]
SIZE, IMAGE = 64, 32


@pytest.fixture(scope="module")
def sky(tmp_path_factory):
    """An offline sky of 500 galaxies, ingested and labelled, plus its server index and row count."""
    base = tmp_path_factory.mktemp("sky")
    with dask.config.set(scheduler="synchronous"):
        make_sky(SkyArgs(out=base / "sky", n=500, seed=3))
        ingest(IngestArgs(workspace=base / "ws", inputs=[str(base / "sky" / SKY_FITS)]))
        label(LabelArgs(workspace=base / "ws", plots=False))
    catalog = pd.read_parquet(base / "ws" / "catalog" / "dataset")
    return base, SkyIndex.from_catalog(base / "sky" / SKY_FITS), len(catalog)


def workspace(sky, tmp_path, outside: int = 0) -> Path:
    """A fresh workspace with the sky's catalog and no labels (so fetch takes every row);
    ``outside`` rows moved out of the footprint."""
    base, _, _ = sky
    ws = tmp_path / "ws"
    shutil.copytree(base / "ws" / "catalog", ws / "catalog")
    if outside:
        for _, _, part in partition_files(ws / "catalog"):
            frame = pd.read_parquet(part)
            frame.loc[frame["cube_row"] < outside, "dec"] = -80.0  # far south: outside the survey, a black answer
            frame.to_parquet(part)
    return ws


def expected_pixels(server_url: str, ws: Path) -> np.ndarray:
    """Each row's cutout from a fault-free server, decoded and resized as the pipeline does."""
    group = zarr.open_group(str(ws / "cube.zarr"), mode="r")
    labels = pd.read_parquet(ws / "catalog" / "dataset").sort_values("cube_row")
    pixscale = group["pixscale"][:]

    async def get_all():
        async with aiohttp.ClientSession() as session:
            out = []
            for (ra, dec), p in zip(labels[["ra", "dec"]].to_numpy(), pixscale, strict=True):
                params = {
                    "ra": f"{ra:.6f}",
                    "dec": f"{dec:.6f}",
                    "size": SIZE,
                    "pixscale": f"{p:.5f}",
                    "layer": "ls-dr10",
                }
                async with session.get(server_url, params=params) as r:
                    out.append(resize(decode_jpeg(await r.read(), SIZE), IMAGE))
            return np.stack(out)

    return asyncio.run(get_all())


def args_for(ws: Path, url: str, **kw) -> FetchArgs:
    base = dict(size=SIZE, image_size=IMAGE, shard_images=32, inner_images=8, rate=400.0, concurrency=8)
    return FetchArgs(workspace=ws, cutout_url=url, **{**base, **kw})


def test_every_fault_at_once(sky, tmp_path):
    _, index, n = sky
    ws = workspace(sky, tmp_path, outside=5)
    faults = dict(latency_s=0.005, jitter_s=0.01, error_rate=0.15, throttle_rate=150.0, throttle_burst=10,
                  retry_after_s=0.25, truncate_rate=0.15, hang_rate=0.02, hang_s=3.0, max_concurrent=6)  # fmt: skip
    config = build_server_config(None, seed=11, **faults)
    with serve_in_background(config, index=index) as server:
        m = fetch(args_for(ws, server.url, rate=300.0, timeout_s=1.0, retries=8, deadline_s=120))
        log = list(server.requests)
        stats = server.stats
    assert all(stats.faults[f] > 0 for f in ("throttle", "truncate", "overload")), stats.faults
    assert stats.faults["error_500"] + stats.faults["error_503"] > 0
    assert any(r.fault == "hang" for r in log)
    status = read_cube_status(ws)
    assert (status[:5] == "no_coverage").all() and (status[5:] == "ok").all(), status.value_counts()
    assert m.extra["this_run"]["outcomes"] == {"ok": n - 5, "no_coverage": 5}  # each row ended once
    assert len(pd.read_parquet(ws / "cube_failures.parquet")) == 0

    # the client honoured every Retry-After: once the 429 could have arrived (50 ms, for requests
    # already on the wire), nothing started until the pause was over
    throttles = [r for r in log if r.status == 429]
    assert throttles
    for r in throttles:
        early = [q for q in log if r.t_end + 0.05 < q.t_start < r.t_end + float(r.retry_after) - 0.01]
        assert not early, f"{len(early)} requests inside the Retry-After pause after request {r.seq}"
    # and its own rate: at most rate × window (+1) request starts in any 0.5 s window
    starts = np.sort([r.t_start for r in log])
    per_window = np.searchsorted(starts, starts + 0.5) - np.arange(len(starts))
    assert per_window.max() <= 300.0 * 0.5 + 2

    with serve_in_background(ServerConfig(seed=11), index=index) as clean:
        want = expected_pixels(clean.url, ws)
    got = zarr.open_group(str(ws / "cube.zarr"), mode="r")["images"][:]
    np.testing.assert_array_equal(got[5:], want[5:])  # no corrupt body was ever stored as ok
    assert not got[:5].any()


def test_sigkill_then_resume_gives_the_uninterrupted_cube(sky, tmp_path):
    _, index, n = sky
    killed, whole = workspace(sky, tmp_path / "a"), workspace(sky, tmp_path / "b")
    config = build_server_config(None, latency_s=0.02)
    with serve_in_background(config, index=index) as server:
        fetch(args_for(whole, server.url, shard_images=16, inner_images=8))
        script = textwrap.dedent(
            f"""
            from pipeline.images.args import FetchArgs
            from pipeline.images.fetch import fetch
            fetch(FetchArgs(workspace={str(killed)!r}, cutout_url={server.url!r}, size={SIZE}, image_size={IMAGE},
                            shard_images=16, inner_images=8, rate=60.0, concurrency=4))
            """
        )
        server.clear_log()
        child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, start_new_session=True)
        deadline = time.time() + 120
        while True:
            assert child.poll() is None and time.time() < deadline, "the fetch ended before it could be killed"
            cube = killed / "cube.zarr"
            if cube.exists():
                done = (zarr.open_group(str(cube), mode="r")["status"][:] == 1).sum()
                if done >= 48:
                    break
            time.sleep(0.1)
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        status = zarr.open_group(str(killed / "cube.zarr"), mode="r")["status"][:]
        ok_after_kill = set(np.flatnonzero(status == 1).tolist())
        assert 48 <= len(ok_after_kill) < n
        labels = pd.read_parquet(killed / "catalog" / "dataset").sort_values("cube_row")
        ra_of = {f"{ra:.6f}": i for i, ra in enumerate(labels["ra"])}
        server.clear_log()
        m = fetch(args_for(killed, server.url, shard_images=16, inner_images=8))
        asked = {ra_of[r.params["ra"]] for r in server.requests if r.params.get("size") == str(SIZE)}
    assert not asked & ok_after_kill  # a re-run requests only what was unfinished
    assert asked | ok_after_kill == set(range(n))
    assert m.extra["this_run"]["rows_requested"] == n - len(ok_after_kill)
    a = zarr.open_group(str(killed / "cube.zarr"), mode="r")
    b = zarr.open_group(str(whole / "cube.zarr"), mode="r")
    np.testing.assert_array_equal(a["status"][:], b["status"][:])
    np.testing.assert_array_equal(a["images"][:], b["images"][:])


def test_local_cluster_fetches_the_same_cube(sky, tmp_path, cluster_client):
    _, index, _ = sky
    one, two = workspace(sky, tmp_path / "one", outside=3), workspace(sky, tmp_path / "two", outside=3)
    with serve_in_background(build_server_config(None, error_rate=0.1, seed=2), index=index) as server:
        fetch(args_for(one, server.url, retries=8))
        m = fetch(args_for(two, server.url, retries=8), client=cluster_client)
    assert m.outputs["shards"] > 2
    a = zarr.open_group(str(one / "cube.zarr"), mode="r")
    b = zarr.open_group(str(two / "cube.zarr"), mode="r")
    np.testing.assert_array_equal(a["status"][:], b["status"][:])
    np.testing.assert_array_equal(a["images"][:], b["images"][:])
    assert set(read_cube_status(two)) == {"ok", "no_coverage"}


def _start_fetch(ws: Path, url: str, tmp_path: Path) -> subprocess.Popen:
    """`agnsurvey fetch` in a process group of its own (as a terminal would start it), 2 workers."""
    config = tmp_path / "fetch.toml"
    config.write_text("[fetch]\nshard_images = 16\ninner_images = 8\n")
    cmd = [sys.executable, "-m", "pipeline.cli", "--quiet", "--workers", "2", "--config", str(config), "fetch",
           "--workspace", str(ws), "--cutout-url", url, "--size", str(SIZE), "--image-size", str(IMAGE),
           "--rate", "40", "--concurrency", "4"]  # fmt: skip
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip


def _wait_for_ok(ws: Path, child: subprocess.Popen, at_least: int) -> np.ndarray:
    deadline = time.time() + 120
    while True:
        assert child.poll() is None and time.time() < deadline, child.communicate()
        cube = ws / "cube.zarr"
        if cube.exists():
            status = zarr.open_group(str(cube), mode="r")["status"][:]
            if (status == 1).sum() >= at_least:
                return status
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("sig", "group", "code"),
    [(signal.SIGINT, True, 130), (signal.SIGTERM, False, 143)],  # Ctrl-C in a terminal; `kill PID`
)
def test_ctrl_c_stops_with_one_line_keeping_what_was_fetched(sky, tmp_path, sig, group, code):
    import psutil

    from storage.workspace import Workspace, WorkspaceBusy

    _, index, n = sky
    ws = workspace(sky, tmp_path)
    with serve_in_background(build_server_config(None, latency_s=0.02), index=index) as server:
        child = _start_fetch(ws, server.url, tmp_path)
        _wait_for_ok(ws, child, 16)
        family = psutil.Process(child.pid).children(recursive=True)
        workers = [p for p in family if "resource_tracker" not in " ".join(p.cmdline())]
        assert len(workers) >= 2  # the embedded cluster's worker processes
        os.killpg(child.pid, sig) if group else os.kill(child.pid, sig)
        while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers):
            try:  # tasks still running may write shards: nobody else may take the cube meanwhile
                with Workspace(ws).lock("cube"):
                    alive = [p for p in workers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
                    assert not alive, "the cube's lock was free while the run's workers could still write"
            except WorkspaceBusy:
                time.sleep(0.02)
        out, err = child.communicate(timeout=60)
        done = zarr.open_group(str(ws / "cube.zarr"), mode="r")
        ok_rows = np.flatnonzero(done["status"][:] == 1)
        ok_pixels = done["images"][:][ok_rows]
        m = fetch(args_for(ws, server.url, shard_images=16, inner_images=8))  # re-run to continue
    assert child.returncode == code
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"agnsurvey: fetch interrupted; {len(ok_rows):,} of {n:,} cutouts are in ")
    assert lines[0].endswith("(whole shards are kept); re-run the same command to continue")
    assert not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]  # no stray process
    final = zarr.open_group(str(ws / "cube.zarr"), mode="r")
    np.testing.assert_array_equal(final["images"][:][ok_rows], ok_pixels)  # what was fetched was kept
    assert m.extra["this_run"]["rows_requested"] == n - len(ok_rows) and set(read_cube_status(ws)) == {"ok"}


def test_a_second_fetch_on_the_same_workspace_is_refused_naming_the_first(sky, tmp_path):
    from pipeline.errors import WorkspaceError

    _, index, n = sky
    ws = workspace(sky, tmp_path)
    with serve_in_background(build_server_config(None, latency_s=0.02), index=index) as server:
        first = _start_fetch(ws, server.url, tmp_path)
        before = _wait_for_ok(ws, first, 16)
        busy = rf"cube.zarr is being written by another run \(pid {first.pid} on .*fetch"
        with pytest.raises(WorkspaceError, match=busy):
            fetch(args_for(ws, server.url, shard_images=16, inner_images=8, retries=0))
        after = zarr.open_group(str(ws / "cube.zarr"), mode="r")["status"][:]
        assert ((after == 1) >= (before == 1)).all()  # the refused run touched nothing the first had done
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        m = fetch(args_for(ws, server.url, shard_images=16, inner_images=8))  # the OS released the lock
    assert m.rows_out == n and set(read_cube_status(ws)) == {"ok"}


def test_the_cube_belongs_to_the_catalog_relabelling_never_refetches(sky, tmp_path):
    """label, fetch, relabel with --min-snr 3, fetch: zero requests; a re-ingest of the same inputs
    keeps the cube; another catalog is refused with the fix."""
    base, index, n = sky
    ws = tmp_path / "ws"
    shutil.copytree(base / "ws" / "catalog", ws / "catalog")
    shutil.copytree(base / "ws" / "manifests", ws / "manifests")
    with (
        dask.config.set(scheduler="synchronous"),
        serve_in_background(build_server_config(None), index=index) as server,
    ):
        label(LabelArgs(workspace=ws, plots=False))
        first = fetch(args_for(ws, server.url))
        labelled = pd.read_parquet(ws / "labels" / "dataset")
        assert first.extra["rows"] == "labelled" and first.rows_in == len(labelled) < n
        status = read_cube_status(ws)
        assert len(status) == n  # one row per catalog row ...
        assert set(status[labelled["cube_row"]]) == {"ok"}  # ... the labelled ones fetched,
        assert set(status.drop(labelled["cube_row"])) == {"pending"} and not first.unfinished  # the rest waits
        asked = len(server.requests)

        relabelled = label(LabelArgs(workspace=ws, plots=False, min_snr=3.0))
        assert 0 < relabelled.rows_out < len(labelled)
        again = fetch(args_for(ws, server.url))
        assert again.extra["this_run"]["requests"] == 0 and len(server.requests) == asked

        ingest(IngestArgs(workspace=ws, inputs=[str(base / "sky" / SKY_FITS)]))  # the same inputs again
        assert fetch(args_for(ws, server.url)).extra["this_run"]["requests"] == 0

        every = fetch(args_for(ws, server.url, rows="all"))  # scoring needs every catalog row
        assert every.rows_in == n and every.extra["this_run"]["rows_requested"] == n - len(labelled)
        assert set(read_cube_status(ws)) == {"ok"}

        make_sky(SkyArgs(out=tmp_path / "other", n=300, seed=9))
        ingest(IngestArgs(workspace=ws, inputs=[str(tmp_path / "other" / SKY_FITS)]))
        with pytest.raises(FetchError, match=r"holds cutouts of another catalog.*--restart"):
            fetch(args_for(ws, server.url, rows="all"))


def test_a_worker_killed_mid_fetch_gives_the_uninterrupted_cube(sky, tmp_path):
    _, index, n = sky
    killed, whole = workspace(sky, tmp_path / "a", outside=2), workspace(sky, tmp_path / "b", outside=2)
    with serve_in_background(build_server_config(None, latency_s=0.05), index=index) as server:
        fetch(args_for(whole, server.url, shard_images=16, inner_images=8))
        with (
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
            Client(cluster) as client,
        ):
            killer = kill_a_worker_running(client, "fetch_shard")
            m = fetch(args_for(killed, server.url, shard_images=16, inner_images=8), client=client)
            killer.join()
    assert killer.killed, "no worker was killed: the test did not test anything"
    assert m.unfinished == "" and m.extra["status"]["ok"] == n - 2
    a = zarr.open_group(str(killed / "cube.zarr"), mode="r")
    b = zarr.open_group(str(whole / "cube.zarr"), mode="r")
    np.testing.assert_array_equal(a["status"][:], b["status"][:])
    np.testing.assert_array_equal(a["images"][:], b["images"][:])
