"""Fetch: URLs, statuses, the Zarr cube layout, real JPEGs round-trip, early errors."""

import dataclasses
import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from aiohttp import web
from conftest import serve_in_thread, write_table
from PIL import Image

from pipeline.errors import FetchError, WorkspaceError
from pipeline.images.args import FetchArgs
from pipeline.images.fetch import fetch
from storage.tables import read_catalog, read_cube_status

DEMO = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "convnet_demo" / "train"


def write_labels(ws: Path, ra, dec, radius, objid=None) -> pd.DataFrame:
    """Minimal WS/catalog/ and WS/labels/ datasets (the columns fetch reads), two shards each, every
    catalog row labelled."""
    n = len(ra)
    frame = pd.DataFrame(
        {
            "cube_row": np.arange(n, dtype=np.int64),
            "objid": np.asarray(objid if objid is not None else np.arange(100, 100 + n), dtype=np.int64),
            "ra": np.asarray(ra, dtype=np.float64),
            "dec": np.asarray(dec, dtype=np.float64),
            "radius_arcsec": np.asarray(radius, dtype=np.float32),
        }
    )
    for name in ("catalog", "labels"):
        write_table(frame, ws / name, max_rows=max(1, n // 2))
    return frame


def jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def noise_server(size_override=None):
    """Answers every request with a deterministic noise JPEG of the requested size (or another)."""

    async def handler(request):
        size = size_override or int(request.query["size"])
        seed = int(float(request.query["ra"]) * 1000)
        return web.Response(body=jpeg(np.random.default_rng(seed).integers(0, 255, (size, size, 3), np.uint8)),
                            content_type="image/jpeg")  # fmt: skip

    return serve_in_thread(handler)


def test_urls_statuses_and_cube_layout(tmp_path):
    radius = np.array([10.0, 20.0, np.nan, 0.0, 12.5, 8.0, -1.0, 30.0, 15.0, 5.0], dtype=np.float32)
    ra = np.linspace(150, 151, 10)
    write_labels(tmp_path, ra, np.full(10, 2.0), radius)
    with noise_server() as (url, log):
        m = fetch(FetchArgs(workspace=tmp_path, cutout_url=url, size=100, image_size=32, shard_images=4, inner_images=2,
                            layer="ls-dr9", rate=500))  # fmt: skip
    queries = [q for _, q in log if q["size"] == "100"]
    assert len(queries) == 7  # the three rows without a usable radius are never requested
    by_ra = {float(q["ra"]): q for q in queries}
    for i in (0, 1, 4, 5, 7, 8, 9):
        q = by_ra[round(ra[i], 6)]
        assert q["layer"] == "ls-dr9" and q["dec"] == "2.000000"
        assert float(q["pixscale"]) == pytest.approx(radius[i] * 3 / 100, abs=5e-6)
    status = read_cube_status(tmp_path)
    assert list(status) == ["ok", "ok", "bad_radius", "bad_radius", "ok", "ok", "bad_radius", "ok", "ok", "ok"]
    assert m.rows_out == 7 and m.dropped == {"bad_radius": 3}

    group = zarr.open_group(str(tmp_path / "cube.zarr"), mode="r")
    images = group["images"]
    assert images.shape == (10, 32, 32, 3) and images.dtype == np.uint8
    assert images.shards == (4, 32, 32, 3) and images.chunks == (2, 32, 32, 3)
    assert group["status"].chunks == (4,)
    codes = group.attrs["status_codes"]
    assert {"ok", "no_coverage", "bad_radius", "failed", "pending"} <= set(codes)
    assert list(group["status"][:3]) == [codes["ok"], codes["ok"], codes["bad_radius"]]
    np.testing.assert_array_equal(group["objid"][:], np.arange(100, 110))
    assert not images[2].any()  # no pixels for a bad radius
    assert (tmp_path / "cube_failures.parquet").exists()


def test_wrong_size_answers_fail_with_the_reason(tmp_path):
    write_labels(tmp_path, [150.0, 150.1], [2.0, 2.0], [10.0, 10.0])
    with noise_server(size_override=80) as (url, _):
        m = fetch(FetchArgs(workspace=tmp_path, cutout_url=url, size=100, image_size=32, rate=500))
    failures = pd.read_parquet(tmp_path / "cube_failures.parquet")
    assert m.rows_out == 0 and list(read_cube_status(tmp_path)) == ["failed", "failed"]
    assert list(failures["cube_row"]) == [0, 1]
    assert failures["reason"].str.fullmatch(r"200 image/jpeg, [\d,]+ bytes: shape 80x80, asked for 100x100").all()
    assert (failures["attempts"] == 1).all()  # a clipped size does not get better by asking again
    assert m.unfinished.startswith("2 cutouts failed (reasons in ") and "re-run the same command" in m.unfinished


@pytest.mark.skipif(not DEMO.is_dir(), reason="../shared/data/convnet_demo is absent")
@pytest.mark.parametrize("image_size", [128, 64])
def test_real_sdss_jpegs_round_trip(tmp_path, image_size):
    files = sorted(DEMO.glob("*.jpg"))[:24]
    by_ra = {f"{150 + i * 0.01:.6f}": f for i, f in enumerate(files)}

    async def handler(request):
        return web.Response(body=by_ra[request.query["ra"]].read_bytes(), content_type="image/jpeg")

    write_labels(tmp_path, [150 + i * 0.01 for i in range(24)], [1.0] * 24, [10.0] * 24)
    with serve_in_thread(handler) as (url, _):
        fetch(FetchArgs(workspace=tmp_path, cutout_url=url, size=128, image_size=image_size, shard_images=8,
                        inner_images=4, rate=500))  # fmt: skip
    cube = zarr.open_group(str(tmp_path / "cube.zarr"), mode="r")
    assert set(read_cube_status(tmp_path)) == {"ok"}
    for i, f in enumerate(files):
        want = Image.open(f).convert("RGB")
        if image_size != 128:
            want = want.resize((image_size, image_size), Image.Resampling.LANCZOS)
        np.testing.assert_array_equal(cube["images"][i], np.asarray(want))


def test_early_errors(tmp_path):
    with pytest.raises(WorkspaceError, match="has no ingested catalog; run `agnsurvey ingest"):
        fetch(FetchArgs(workspace=tmp_path, cutout_url="http://127.0.0.1:9/viewer/cutout.jpg"))
    write_labels(tmp_path, [150.0], [2.0], [10.0])
    with pytest.raises(FetchError, match="is not an http"):
        fetch(FetchArgs(workspace=tmp_path, cutout_url="127.0.0.1:9/viewer/cutout.jpg"))
    with pytest.raises(FetchError, match=r"cannot reach the cutout service .*agnsurvey sky serve"):
        fetch(FetchArgs(workspace=tmp_path, cutout_url="http://127.0.0.1:9/viewer/cutout.jpg", timeout_s=2))
    assert not (tmp_path / "cube.zarr").exists()


def test_rerun_requests_only_unfinished_rows(tmp_path):
    write_labels(tmp_path, np.linspace(150, 151, 12), np.full(12, 2.0), np.full(12, 10.0))
    with noise_server() as (url, log):
        args = FetchArgs(
            workspace=tmp_path, cutout_url=url, size=64, image_size=32, shard_images=4, inner_images=2, rate=500
        )
        fetch(args)
        first = zarr.open_group(str(tmp_path / "cube.zarr"), mode="r")["images"][:]
        cube = zarr.open_group(str(tmp_path / "cube.zarr"), mode="r+")
        status = cube["status"][:]
        status[[5, 9]] = cube.attrs["status_codes"]["failed"]  # as if those had failed last time
        cube["status"][:] = status
        n_before = len(log)
        m = fetch(args)
        asked = [q["ra"] for _, q in log[n_before:] if q["size"] == "64"]
    assert sorted(asked) == sorted(f"{v:.6f}" for v in np.linspace(150, 151, 12)[[5, 9]])
    assert m.extra["this_run"]["rows_requested"] == 2 and set(read_cube_status(tmp_path)) == {"ok"}
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "cube.zarr"), mode="r")["images"][:], first)


def test_changed_labels_need_restart(tmp_path):
    write_labels(tmp_path / "a", [150.0, 150.1], [2.0, 2.0], [10.0, 10.0])
    with noise_server() as (url, _):
        fetch(FetchArgs(workspace=tmp_path / "a", cutout_url=url, size=64, image_size=32, rate=500))
        with pytest.raises(FetchError, match=r"other cutout settings \(size 64 != 48\).*--restart"):
            fetch(FetchArgs(workspace=tmp_path / "a", cutout_url=url, size=48, image_size=32, rate=500))
        m = fetch(FetchArgs(workspace=tmp_path / "a", cutout_url=url, size=48, image_size=32, rate=500, restart=True))
    assert m.rows_out == 2


def test_small_cube_with_the_default_layout(tmp_path):
    """13 rows: fewer than a shard and not a multiple of the 8-image inner chunk."""
    write_labels(tmp_path, np.linspace(150, 151, 13), np.full(13, 2.0), np.full(13, 10.0))
    with noise_server() as (url, _):
        m = fetch(FetchArgs(workspace=tmp_path, cutout_url=url, size=64, rate=500))
    images = zarr.open_group(str(tmp_path / "cube.zarr"), mode="r")["images"]
    assert m.rows_out == 13 and images.shape == (13, 128, 128, 3) and images.chunks == (8, 128, 128, 3)
    assert images[12].any()


def test_resume_refuses_a_cube_made_for_other_radii(tmp_path):
    write_labels(tmp_path, [150.0, 150.1], [2.0, 2.0], [10.0, 10.0])
    with noise_server() as (url, _):
        fetch(FetchArgs(workspace=tmp_path, cutout_url=url, size=64, image_size=32, rate=500))
        catalog = read_catalog(tmp_path)
        catalog["radius_arcsec"] = np.float32(4.0)  # re-ingested with another radius column
        shutil.rmtree(tmp_path / "catalog")
        write_table(catalog, tmp_path / "catalog")
        with pytest.raises(FetchError, match=r"radii, hence the pixscales, differ.*--restart"):
            fetch(FetchArgs(workspace=tmp_path, cutout_url=url, size=64, image_size=32, rate=500))


def test_fetch_from_inside_an_event_loop(tmp_path):
    """A notebook runs code inside an event loop; the stage must still work there."""
    import asyncio

    write_labels(tmp_path, [150.0, 150.1], [2.0, 2.0], [10.0, 10.0])

    async def notebook_cell(url):
        return fetch(FetchArgs(workspace=tmp_path, cutout_url=url, size=64, image_size=32, rate=500))

    with noise_server() as (url, _):
        assert asyncio.run(notebook_cell(url)).rows_out == 2


def test_empty_catalog_and_missing_labels_are_clear_errors(tmp_path):
    (tmp_path / "catalog").mkdir()
    with pytest.raises(WorkspaceError, match=r"has no ingested catalog"):
        fetch(FetchArgs(workspace=tmp_path, cutout_url="http://127.0.0.1:9/viewer/cutout.jpg"))
    write_labels(tmp_path / "b", [150.0], [2.0], [10.0])
    shutil.rmtree(tmp_path / "b" / "labels")
    with pytest.raises(WorkspaceError, match=r"--rows labelled: .* has no labels; run `agnsurvey label.*--rows all"):
        fetch(FetchArgs(workspace=tmp_path / "b", cutout_url="http://127.0.0.1:9/viewer/cutout.jpg", rows="labelled"))


def test_tasks_at_once_never_exceed_the_request_slots(tmp_path):
    from pipeline.images.fetch import tasks_at_once

    args = FetchArgs(workspace=tmp_path, cutout_url="http://h/c.jpg", concurrency=4)
    assert tasks_at_once(args, n_jobs=50, threads=16) == 4
    assert tasks_at_once(args, n_jobs=2, threads=16) == 2
    assert tasks_at_once(args, n_jobs=50, threads=1) == 1


# --- a service that cannot be used ends the run, clearly ---------------------------------------------


def fetch_args(ws: Path, url: str, **kw) -> FetchArgs:
    base = dict(size=64, image_size=32, shard_images=8, inner_images=4, rate=500, concurrency=4)
    return FetchArgs(workspace=ws, cutout_url=url, **{**base, **kw})


@pytest.mark.parametrize(
    ("header", "asked", "after"),
    [
        ("100000", "100,000 s", "re-run after 20"),
        ("99999999999999", "99,999,999,999,999 s", "re-run after a date beyond the calendar"),
        ("inf", "inf s", "re-run after a date beyond the calendar"),
    ],
)
def test_a_retry_after_beyond_the_deadline_stops_the_run_leaving_rows_pending(tmp_path, header, asked, after):
    write_labels(tmp_path, np.linspace(150, 151, 40), np.full(40, 2.0), np.full(40, 10.0))

    async def handler(request):
        return web.Response(status=429, headers={"Retry-After": header})

    with serve_in_thread(handler) as (url, log):
        m = fetch(fetch_args(tmp_path, url, deadline_s=60))
        requests = [q for _, q in log if q["size"] == "64"]
    assert len(requests) <= 4  # the requests in flight when the first answer came; nothing after
    assert set(read_cube_status(tmp_path)) == {"pending"}  # nothing failed: nothing was really tried
    assert f"asked to wait {asked} (HTTP 429, Retry-After: {header})" in m.unfinished
    assert "longer than the 60 s deadline" in m.unfinished and after in m.unfinished
    assert "40 not fetched yet (pending)" in m.unfinished


def test_giving_up_quotes_what_the_service_answered(tmp_path):
    write_labels(tmp_path, np.linspace(150, 151, 60), np.full(60, 2.0), np.full(60, 10.0))

    async def handler(request):
        if request.query["size"] != "64":
            return web.Response(body=jpeg(np.zeros((8, 8, 3), np.uint8)), content_type="image/jpeg")  # the probe
        return web.Response(text="<html>maintenance</html>", content_type="text/html")

    with serve_in_thread(handler) as (url, _):
        m = fetch(fetch_args(tmp_path, url, shard_images=64, retries=0, give_up_window=20))
    assert "(bad image x20; the last: 200 text/html, 24 bytes: not an image)" in m.unfinished


@pytest.mark.parametrize(
    ("answer", "window", "retries", "shard", "most"),
    [
        (503, 20, 5, 200, 20 + 4),  # one task's rows fill the window (+ the requests in flight)
        (503, 40, 1, 8, 5 * 16),  # 8-row tasks (16 requests each) add up: 5 of them fill it
        (429, 20, 5, 200, 20 + 4),  # throttled for ever, each Retry-After short: still hopeless
    ],
)
def test_a_service_that_keeps_failing_ends_the_run_instead_of_every_deadline(
    tmp_path, answer, window, retries, shard, most
):
    write_labels(tmp_path, np.linspace(150, 151, 200), np.full(200, 2.0), np.full(200, 10.0))

    async def handler(request):
        if answer == 429:
            return web.Response(status=429, headers={"Retry-After": "0.05"})
        return web.Response(status=503, text="down for maintenance")

    with serve_in_thread(handler) as (url, log):
        m = fetch(fetch_args(tmp_path, url, retries=retries, give_up_window=window, deadline_s=60, shard_images=shard))
        asked = [q for _, q in log if q["size"] == "64"]
    assert len(asked) <= most  # not 200 rows x (1 + retries), nor 200 x 60 s of deadline
    status = read_cube_status(tmp_path)
    assert set(status) <= {"pending", "failed"} and (status == "pending").sum() > 150
    assert m.unfinished.startswith(
        f"the service is failing: the latest answer for {window} of the last {window} cutouts asked for was a "
        f"failure (HTTP {answer} x{window}; the last: HTTP {answer} "
    )


def test_a_few_rows_that_always_fail_do_not_end_the_run(tmp_path):
    """Near the end only the bad rows are still retried: the rule judges rows, not attempts."""
    ra = np.linspace(150, 151, 200)
    write_labels(tmp_path, ra, np.full(200, 2.0), np.full(200, 10.0))
    bad = {f"{v:.6f}" for v in ra[::40]}  # 5 rows
    good = jpeg(np.random.default_rng(5).integers(0, 255, (64, 64, 3), np.uint8))

    async def handler(request):
        if request.query["ra"] in bad:
            return web.Response(status=503)
        return web.Response(body=good, content_type="image/jpeg")

    with serve_in_thread(handler) as (url, _):
        m = fetch(fetch_args(tmp_path, url, shard_images=200, retries=3, give_up_window=20, give_up_fraction=0.7))
    status = read_cube_status(tmp_path)
    assert (status == "failed").sum() == 5 and (status == "ok").sum() == 195
    assert "stopped" not in m.extra and m.unfinished.startswith("5 cutouts failed")


def test_failure_reasons_say_what_came_back(tmp_path):
    write_labels(tmp_path, [150.0, 150.1, 150.2], [2.0, 2.0, 2.0], [10.0, 10.0, 10.0])
    whole = jpeg(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))

    async def handler(request):
        ra = request.query["ra"]
        if ra.startswith("150.0"):
            return web.Response(body=b"<html>" + b" " * 500 + b"</html>", content_type="text/html")
        if ra.startswith("150.1"):
            return web.Response(body=whole[:300], content_type="image/jpeg")
        if ra.startswith("150.2"):
            return web.Response(status=404, text="no such layer")
        return web.Response(body=whole, content_type="image/jpeg")  # the probe

    with serve_in_thread(handler) as (url, _):
        fetch(fetch_args(tmp_path, url, retries=1))
    reasons = pd.read_parquet(tmp_path / "cube_failures.parquet").set_index("cube_row")["reason"]
    assert reasons[0] == "gave up after 2 attempts; last: 200 text/html, 513 bytes: not an image"
    assert reasons[1] == "gave up after 2 attempts; last: 200 image/jpeg, 300 bytes: corrupt or truncated JPEG"
    assert reasons[2] == "HTTP 404 text/plain, 13 bytes: no such layer"


def test_failed_rows_give_exit_code_3_after_writing_what_succeeded(tmp_path, capsys):
    from pipeline.cli import EXIT_INCOMPLETE, main

    write_labels(tmp_path, [150.0, 150.1], [2.0, 2.0], [10.0, 10.0])
    good = jpeg(np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8))

    async def handler(request):
        if request.query["ra"].startswith("150.1"):
            return web.Response(status=500)
        return web.Response(body=good, content_type="image/jpeg")

    with serve_in_thread(handler) as (url, _):
        code = main(["--quiet", "--workers", "1", "fetch", "--workspace", str(tmp_path), "--cutout-url", url,
                     "--size", "64", "--image-size", "64", "--retries", "0"])  # fmt: skip
    assert code == EXIT_INCOMPLETE == 3
    assert list(read_cube_status(tmp_path)) == ["ok", "failed"]
    np.testing.assert_array_equal(
        zarr.open_group(str(tmp_path / "cube.zarr"), mode="r")["images"][0], np.asarray(Image.open(io.BytesIO(good)))
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"agnsurvey: incomplete: 1 cutouts failed (reasons in {tmp_path / 'cube_failures.parquet'}); "
                   "re-run the same command to retry them"]  # fmt: skip


def test_a_failure_never_overwrites_an_ok_row(tmp_path):
    """A shard task planned from a stale status (another run fetched those rows meanwhile)."""
    from pipeline.images.fetch import fetch_shard, plan_jobs
    from storage.cube import open_cube

    labels = write_labels(tmp_path, np.linspace(150, 151, 8), np.full(8, 2.0), np.full(8, 10.0))
    with noise_server() as (url, _):
        fetch(fetch_args(tmp_path, url))
    cube = open_cube(tmp_path / "cube.zarr")
    before = cube.images[:]
    cube.status[:] = np.zeros(8, np.int8)  # plan as if nothing were done ...
    args = fetch_args(tmp_path, "http://x/c.jpg", retries=0)
    with args.workspace.lock("cube"):
        (job,) = plan_jobs(args, cube, labels, parallel=1, wanted=np.ones(8, bool))
        cube.status[:] = np.ones(8, np.int8)  # ... while another run had finished them all

        async def failing(request):
            return web.Response(status=500)

        with serve_in_thread(failing) as (url, _):
            source = dataclasses.replace(job.source, settings=dataclasses.replace(job.source.settings, cutout_url=url))
            stale = dataclasses.replace(job, source=source)
            fetch_shard(stale)
    assert list(read_cube_status(tmp_path)) == ["ok"] * 8
    np.testing.assert_array_equal(open_cube(tmp_path / "cube.zarr").images[:], before)


def test_an_impossible_image_size_is_refused_before_anything_is_written(tmp_path, capsys):
    from pipeline.cli import main

    write_labels(tmp_path, [150.0], [2.0], [10.0])
    code = main(["--quiet", "--workers", "1", "fetch", "--workspace", str(tmp_path), "--cutout-url",
                 "http://127.0.0.1:9/viewer/cutout.jpg", "--image-size", "20000"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "would take 1144.4 GiB of memory per fetch task" in err and "lower --image-size" in err
    assert not (tmp_path / "cube.zarr").exists()


def test_a_cube_that_fails_while_being_made_leaves_nothing_behind(tmp_path):
    from storage.cube import CubeLayout, create_cube

    with pytest.raises(ValueError):
        create_cube(tmp_path / "cube.zarr", CubeLayout(4, 8, 4, 2), np.arange(3), np.ones(4), np.zeros(4), {})
    assert list(tmp_path.iterdir()) == []


def test_a_cancelled_task_that_writes_late_lands_nothing(tmp_path, cluster_client):
    """A shard task still running on a worker after its fetch failed (cancelled, but a running task
    runs on) writes nothing when it finishes: its run no longer holds the cube's lock, another does."""
    import asyncio
    import threading
    import time

    from storage.workspace import Workspace

    n = 16
    ra = np.linspace(150, 151, n)
    write_labels(tmp_path, ra, np.full(n, 2.0), np.full(n, 10.0))
    late_asked, release, answered = threading.Event(), threading.Event(), []

    async def handler(request):
        size, asked = int(request.query["size"]), float(request.query["ra"])
        if not ra[0] - 1e-6 <= asked <= ra[-1] + 1e-6:  # the service probe
            return web.Response(body=jpeg(np.zeros((size, size, 3), np.uint8)), content_type="image/jpeg")
        late = asked > (ra[7] + ra[8]) / 2  # a row of shard 1
        wait = release if late else late_asked  # shard 0 finishes only once shard 1's task is running
        if late:
            late_asked.set()
        await asyncio.get_running_loop().run_in_executor(None, wait.wait, 30)
        answered.append(late)
        noise = np.random.default_rng(int(asked * 1000)).integers(0, 255, (size, size, 3), np.uint8)
        return web.Response(body=jpeg(noise), content_type="image/jpeg")

    def stop_after_shard(shard: int) -> None:
        raise RuntimeError(f"the run stops after shard {shard}")

    def running(dask_worker) -> list[str]:
        return [str(k) for k, ts in dask_worker.state.tasks.items() if ts.state in ("executing", "cancelled")]

    with serve_in_thread(handler) as (url, _):
        with pytest.raises(RuntimeError, match="the run stops after shard 0"):
            fetch(fetch_args(tmp_path, url, retries=0, timeout_s=60), client=cluster_client, on_shard=stop_after_shard)
        with Workspace(tmp_path).lock("cube"):  # a later run took the cube
            release.set()
            deadline = time.monotonic() + 60
            while any(cluster_client.run(running).values()) and time.monotonic() < deadline:
                time.sleep(0.1)
    assert sum(answered) == 8  # shard 1's task ran past the cancel and got all its cutouts ...
    status = read_cube_status(tmp_path)
    assert list(status[:8]) == ["ok"] * 8 and list(status[8:]) == ["pending"] * 8  # ... and wrote none
    assert not zarr.open_group(str(tmp_path / "cube.zarr"), mode="r")["images"][8:].any()
