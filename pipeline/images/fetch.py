"""Stage ``fetch``: catalog galaxies → ``WS/cube.zarr``, one validated, resized cutout per row.

The cube has one row per ingested catalog row (``cube_row``); ``rows`` chooses which are requested
(the labelled ones, or all); the others stay ``pending`` until a run asks for them. A relabelled
workspace keeps its cube: images depend only on position and radius.

Work units are the cube's shards: one task owns one shard (``shard_images`` consecutive rows), runs
one asyncio loop with one aiohttp session (:func:`pipeline.images.client.fetch_many`) for the rows of its
shard that have no final status, and writes the shard's pixels and then its status, each in one
atomic write. No two tasks touch the same storage object; ``ok`` always means the pixels are
there. Totals for concurrency and request rate are shared out over the tasks that run at once.

Resuming: a re-run requests only rows whose status is not final (final: ok, no_coverage,
bad_radius; ``failed`` and ``pending`` rows are tried again). A run killed with SIGKILL loses at
most the shards in flight. Failures, with their reasons, go to ``WS/cube_failures.parquet``.

A service that cannot be used ends the run: when a task's client stops (the service asked for a
longer wait than an image's deadline, or most answers failed), no further shard is started, the
rows not done stay ``pending``, and the manifest's ``unfinished`` says why and when to re-run.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd
from distributed import Client, as_completed

from cluster.client import progress_enabled
from pipeline.errors import FetchError, Interrupted, WorkspaceError
from pipeline.images.args import FetchArgs
from pipeline.images.client import ClientSettings, FailureWindow
from pipeline.images.outcome import PENDING
from pipeline.images.requests import check_cutout_url, pixscale_for
from pipeline.images.sources import PixelSource, pixel_source
from pipeline.stage import RunContext, Step, locked, writing
from storage.cube import (
    FINAL_CODES,
    OLD_CUBE_ATTRS,
    STATUS_CODES,
    Cube,
    CubeLayout,
    create_cube,
    open_cube,
    status_counts,
)
from storage.fence import Fence
from storage.manifest import Manifest, atomic_file
from storage.tables import read_labels, read_positions
from storage.workspace import Workspace

FAILURE_COLUMNS = ["cube_row", "objid", "reason", "attempts", "http_status"]
FAILURE_TYPES = {"cube_row": "int64", "objid": "int64", "reason": "str", "attempts": "int64", "http_status": "int64"}


@dataclass(frozen=True)
class ShardJob:
    """One task: fetch the unfinished rows of one cube shard from one pixel source."""

    cube: str
    shard: int
    rows: np.ndarray  # cube rows to request, all inside the shard
    ra: np.ndarray  # degrees, one per row
    dec: np.ndarray
    pixscale: np.ndarray  # arcsec/pixel requested, one per row
    source: PixelSource
    fence: Fence  # the shard is written only while the fetch run still holds the cube's lock


@dataclass
class ShardResult:
    shard: int
    statuses: dict[str, int]
    failures: list[dict] = field(default_factory=list)
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    bytes: int = 0
    seconds: float = 0.0
    stopped: str = ""  # why the task's client stopped early ("" when it did not)
    recent: list[tuple[str, str]] = field(default_factory=list)  # its client's last rows and their latest answer
    last_failure: str = ""  # its client's latest failure, in words


def fetch_shard(job: ShardJob) -> ShardResult:
    """Fetch a shard's unfinished rows and write the whole shard (pixels, then status)."""
    start = time.monotonic()
    cube = open_cube(Path(job.cube))
    rows = cube.layout.shard_rows(job.shard)
    status = cube.status_codes(rows.start, rows.stop)
    has_pixels = (status == STATUS_CODES["ok"]).any()
    images = cube.read_block(rows.start, rows.stop) if has_pixels else cube.layout.blank(len(rows))
    invvar = None
    if cube.layout.invvar:
        invvar = cube.read_invvar(rows.start, rows.stop) if has_pixels else np.zeros(images.shape, np.float32)
    outcomes, stats = job.source.cut(job.ra, job.dec, job.pixscale, seed=job.shard)
    result = ShardResult(job.shard, {}, requests=stats.requests, retries=stats.retries,
                         throttled=stats.throttled, bytes=stats.bytes, stopped=stats.stopped,
                         recent=stats.recent, last_failure=stats.last_failure)  # fmt: skip
    objid = cube.objids(rows.start, rows.stop)
    for row, outcome in zip(job.rows, outcomes, strict=True):
        i = row - rows.start
        status[i] = STATUS_CODES[outcome.status]
        result.statuses[outcome.status] = result.statuses.get(outcome.status, 0) + 1
        if outcome.image is not None:
            images[i] = outcome.image
        if invvar is not None and outcome.invvar is not None:
            invvar[i] = outcome.invvar
        if outcome.status == "failed":
            result.failures.append(
                {"cube_row": int(row), "objid": int(objid[i]), "reason": outcome.reason,
                 "attempts": outcome.attempts, "http_status": outcome.http_status or 0}
            )  # fmt: skip
    if any(o.status != PENDING for o in outcomes):  # a client stopped before asking leaves nothing to write
        with job.fence.hold():
            cube.write_shard(job.shard, images, status, invvar)
    result.seconds = time.monotonic() - start
    return result


def selected_rows(args: FetchArgs, catalog: pd.DataFrame) -> tuple[str, np.ndarray]:
    """Which rows to request (``labelled`` or ``all``) and a mask of them over the cube's rows."""
    ws = args.workspace
    has_labels = ws.labels.exists()
    which = ("labelled" if has_labels else "all") if args.rows == "auto" else args.rows
    if which == "all":
        return which, np.ones(len(catalog), dtype=bool)
    if not has_labels:
        raise WorkspaceError(
            f"fetch --rows labelled: {ws.root} has no labels; run `agnsurvey label --workspace {ws.root}` first, "
            "or fetch every catalog row with --rows all"
        )
    labels = read_labels(ws, columns=["objid"])
    rows = labels["cube_row"].to_numpy()
    if rows.size and (rows.max() >= len(catalog) or not np.array_equal(catalog["objid"].to_numpy()[rows],
                                                                        labels["objid"].to_numpy())):  # fmt: skip
        raise WorkspaceError(
            f"{ws.labels} was made from another catalog than {ws.catalog}; re-run `agnsurvey label --workspace "
            f"{ws.root}`"
        )
    mask = np.zeros(len(catalog), dtype=bool)
    mask[rows] = True
    return which, mask


def prepare_cube(args: FetchArgs, labels: pd.DataFrame) -> Cube:
    """Open the workspace's cube for resuming, or create it (all pending, bad radii marked)."""
    ws = args.workspace
    pixscale, usable = pixscale_for(labels["radius_arcsec"].to_numpy(), args.size, args.radius_scale,
                                    args.pixscale_bounds)  # fmt: skip
    attrs = {"layer": args.layer, "size": args.size, "radius_scale": args.radius_scale,
             "pixscale_bounds": list(args.pixscale_bounds), "pixscale_unit": "arcsec/pixel",
             **pixel_attrs(args)}  # fmt: skip
    layout = CubeLayout(len(labels), args.image_size, args.shard_images, args.inner_images, args.channels,
                        "float32" if args.pixels == "flux" else "uint8", args.with_invvar)  # fmt: skip
    if ws.cube.exists() and not args.restart:
        try:
            cube = open_cube(ws.cube)
        except (KeyError, FileNotFoundError, ValueError) as exc:
            raise FetchError(f"{ws.cube} is incomplete ({exc!r}); pass --restart to make it anew") from None
        mismatch = _mismatch(cube, layout, attrs, labels["objid"].to_numpy(), pixscale)
        if mismatch:
            raise FetchError(
                f"{ws.cube} holds cutouts of another catalog or other cutout settings ({mismatch}); pass --restart "
                "to discard it and fetch anew (or fetch into another --workspace)"
            )
        return cube
    status = np.where(usable, STATUS_CODES["pending"], STATUS_CODES["bad_radius"])
    return create_cube(ws.cube, layout, labels["objid"].to_numpy(), pixscale, status, attrs)


def _mismatch(cube: Cube, layout: CubeLayout, attrs: dict, objid: np.ndarray, pixscale: np.ndarray) -> str:
    if cube.layout.n != layout.n:
        return f"it has {cube.layout.n:,} rows, the catalog {layout.n:,}"
    for key in ("image_size", "shard_images", "inner_images"):
        if getattr(cube.layout, key) != getattr(layout, key):
            return f"{key} {getattr(cube.layout, key)} != {getattr(layout, key)}"
    for key, value in attrs.items():
        if cube.attrs.get(key, OLD_CUBE_ATTRS.get(key)) != value:
            return f"{key} {cube.attrs.get(key)!r} != {value!r}"
    if not np.array_equal(cube.objids(), objid):
        return "the catalog's galaxies differ"
    if not np.array_equal(cube.pixscales(), pixscale.astype(np.float32), equal_nan=True):
        return "the radii, hence the pixscales, differ"
    return ""


def tasks_at_once(args: FetchArgs, n_jobs: int, threads: int) -> int:
    """Fetch tasks running together: one per worker thread, at most one per job and per request slot."""
    return max(1, min(threads, n_jobs, args.concurrency))


def client_settings(args: FetchArgs, share: int = 1) -> ClientSettings:
    """How each task's client asks the viewer: the totals for rate and concurrency shared out over
    ``share`` tasks running at once."""
    return ClientSettings(
        pixels=args.pixels,
        bands=args.bands,
        cutout_url=args.cutout_url,
        layer=args.layer,
        size=args.size,
        image_size=args.image_size,
        concurrency=max(1, args.concurrency // share),
        rate=args.rate / share,
        retries=args.retries,
        timeout_s=args.timeout_s,
        deadline_s=args.deadline_s,
        give_up_window=args.give_up_window,
        give_up_fraction=args.give_up_fraction,
    )


def plan_jobs(args: FetchArgs, cube: Cube, labels: pd.DataFrame, parallel: int, wanted: np.ndarray) -> list[ShardJob]:
    """One job per shard that has ``wanted`` rows without a final status; rate and concurrency
    shared out over the ``parallel`` tasks that run at once."""
    todo = ~np.isin(cube.status_codes(), FINAL_CODES) & wanted
    pixscale = cube.pixscales()
    shards = sorted({int(r) // cube.layout.shard_images for r in np.flatnonzero(todo)})
    share = tasks_at_once(args, len(shards), parallel)
    settings = client_settings(args, share)
    source = pixel_source(args, settings)
    ra, dec = labels["ra"].to_numpy(), labels["dec"].to_numpy()
    fence = args.workspace.fence("cube")
    jobs = []
    for shard in shards:
        span = cube.layout.shard_rows(shard)
        rows = np.flatnonzero(todo[span.start : span.stop]) + span.start
        jobs.append(ShardJob(str(args.workspace.cube), shard, rows, ra[rows], dec[rows], pixscale[rows], source, fence))
    return jobs


def _run_jobs(
    jobs: list[ShardJob], client: Client | None, at_once: int, answers: FailureWindow
) -> Iterator[ShardResult]:
    """Results as shards finish: on the cluster with at most ``at_once`` tasks running (the totals
    for rate and concurrency were shared out over that many), or one after another in this process.
    No further shard is started once a task's client stopped, or once ``answers``, fed every task's
    last answers, says the service is hopeless (many small tasks add up)."""
    if client is None:
        for job in jobs:
            result = fetch_shard(job)
            result.stopped = result.stopped or answers.add(result.recent, result.last_failure)
            yield result
            if result.stopped:
                return
        return
    pending = iter(jobs)
    running = as_completed([client.submit(fetch_shard, job, pure=False) for job in islice(pending, at_once)])
    try:
        for future in running:
            result = future.result()
            result.stopped = result.stopped or answers.add(result.recent, result.last_failure)
            if result.stopped:
                pending = iter(())
            for job in islice(pending, 1):
                running.add(client.submit(fetch_shard, job, pure=False))
            yield result
    except BaseException:
        client.cancel(list(running.futures))
        raise


def fetch(
    args: FetchArgs,
    client: Client | None = None,
    on_shard: Callable[[int], None] | None = None,
    max_tasks: int | None = None,
) -> Manifest:
    """Fill ``WS/cube.zarr`` with a cutout per labelled galaxy; returns the manifest.

    Rows that failed or were left pending are named in ``manifest.unfinished`` (a re-run retries them).
    ``on_shard(k)`` is called as soon as shard k is written, and ``max_tasks`` caps the fetch tasks
    running at once (scoring streams behind fetching on the worker threads left free).
    """
    with writing(args.workspace, "cube", "fetch"):
        return fetch_holding_lock(args, client, on_shard, max_tasks)


def fetch_holding_lock(args: FetchArgs, client: Client | None = None, on_shard: Callable[[int], None] | None = None,
                       max_tasks: int | None = None) -> Manifest:  # fmt: skip
    """:func:`fetch`, for a caller that holds the cube's writer's lock already (``score``, which
    fetches what it scores and reads the cube under the same lock)."""
    if args.bricks is None:
        check_cutout_url(args.cutout_url)
    ws = args.workspace
    with locked(ws, "catalog", shared=True), locked(ws, "labels", shared=True):  # not while being replaced
        labels = read_positions(ws)
        which, wanted = selected_rows(args, labels)
    manifest = Manifest(stage="fetch", parameters=_parameters(args))
    manifest.inputs = [{"path": str(ws.catalog), "rows": len(labels), "rows_wanted": which,
                        "n_wanted": int(wanted.sum())}]  # fmt: skip
    fresh = args.restart or not ws.cube.exists()
    if fresh:  # before a cube is made: an unusable source leaves the workspace as it was
        pixel_source(args, client_settings(args)).check()
    cube = prepare_cube(args, labels)
    threads = sum(client.nthreads().values()) if client is not None else 1
    threads = min(threads, max_tasks or threads)
    jobs = plan_jobs(args, cube, labels, threads, wanted)
    if jobs and not fresh:  # a finished cube needs no network to confirm it
        jobs[0].source.check()
    requested = sum(len(j.rows) for j in jobs)
    totals = ShardResult(-1, {})
    started = time.monotonic()
    show = progress_enabled()
    try:
        answers = FailureWindow(args.give_up_window, args.give_up_fraction)
        for result in _run_jobs(jobs, client, tasks_at_once(args, len(jobs), threads), answers):
            for key, n in result.statuses.items():
                totals.statuses[key] = totals.statuses.get(key, 0) + n
            totals.failures.extend(result.failures)
            for key in ("requests", "retries", "throttled", "bytes"):
                setattr(totals, key, getattr(totals, key) + getattr(result, key))
            totals.stopped = totals.stopped or result.stopped
            if on_shard is not None:
                on_shard(result.shard)
            if show:
                _progress_line(totals, requested, time.monotonic() - started)
    except KeyboardInterrupt:
        _write_failures(ws, totals.failures, cube.status_codes(), keep_old=not fresh)

        def kept() -> str:  # read when shown: tasks already running may still finish their shards
            ok = status_counts(cube.status_codes()[wanted])["ok"]
            return (
                f"fetch interrupted; {ok:,} of {int(wanted.sum()):,} cutouts are in {ws.cube} (whole shards are kept); "
                "re-run the same command to continue"
            )

        raise Interrupted(kept) from None
    finally:
        if show and jobs:
            print(file=sys.stderr)
    _write_failures(ws, totals.failures, cube.status_codes(), keep_old=not fresh)
    status = cube.status_codes()
    counts = status_counts(status[wanted])
    seconds = time.monotonic() - started
    manifest.rows_in = int(wanted.sum())
    manifest.rows_out = counts["ok"]
    manifest.dropped = {name: n for name, n in counts.items() if name not in ("ok",) and n}
    manifest.extra = {
        "status": counts,
        "rows": which,
        "status_all_rows": status_counts(status),
        "this_run": {
            "rows_requested": requested,
            "outcomes": totals.statuses,
            "requests": totals.requests,
            "retries": totals.retries,
            "throttled": totals.throttled,
            "bytes": totals.bytes,
            "images_per_second": round(requested / seconds, 2) if seconds > 0 else None,
        },
    }
    manifest.outputs = {"cube": str(ws.cube), "failures": str(ws.root / "cube_failures.parquet"), "shards": len(jobs)}
    manifest.unfinished = _unfinished(counts, totals.stopped, ws)
    if totals.stopped:
        manifest.extra["stopped"] = totals.stopped
    manifest.finish()
    ws.write_manifest("fetch", manifest.to_dict())
    return manifest


def _progress_line(totals: ShardResult, requested: int, seconds: float) -> None:
    done = sum(totals.statuses.values())
    s = totals.statuses
    rate = done / seconds if seconds > 0 else 0.0
    print(
        f"\rfetch {done:,}/{requested:,}  ok {s.get('ok', 0):,}  failed {s.get('failed', 0):,}  "
        f"no coverage {s.get('no_coverage', 0):,}  {rate:,.1f} img/s",
        end="",
        file=sys.stderr,
        flush=True,
    )


def _unfinished(counts: dict[str, int], stopped: str, ws: Workspace) -> str:
    """What the cube still lacks and how to get it ('' when every row is final)."""
    failed, pending = counts.get("failed", 0), counts.get("pending", 0)
    if not failed and not pending:
        return ""
    left = f"{failed:,} cutouts failed (reasons in {ws.root / 'cube_failures.parquet'})" if failed else ""
    if pending:
        left += ("; " if left else "") + f"{pending:,} not fetched yet (pending)"
    if stopped:
        return f"{stopped}. {left}"
    return f"{left}; re-run the same command to retry them"


def _write_failures(ws: Workspace, failures: list[dict], status: np.ndarray, keep_old: bool) -> None:
    """``WS/cube_failures.parquet``: every row now ``failed``, with its last reason (this run's, or
    an earlier run's for failed rows this run did not get to)."""
    path = ws.root / "cube_failures.parquet"
    frame = pd.DataFrame(failures, columns=FAILURE_COLUMNS).astype(FAILURE_TYPES)
    if keep_old and path.exists():
        old = pd.read_parquet(path).astype(FAILURE_TYPES)
        still = (status[old["cube_row"].to_numpy()] == STATUS_CODES["failed"]) & ~old["cube_row"].isin(
            frame["cube_row"]
        )
        frame = pd.concat([old[still], frame], ignore_index=True) if still.any() else frame
    with atomic_file(path) as tmp:
        frame.sort_values("cube_row").to_parquet(tmp, index=False)


def _parameters(args: FetchArgs) -> dict:
    return {
        "cutout_url": args.cutout_url,
        "layer": args.layer,
        "size": args.size,
        "image_size": args.image_size,
        "radius_scale": args.radius_scale,
        "pixscale_bounds": list(args.pixscale_bounds),
        "concurrency": args.concurrency,
        "rate": args.rate,
        "retries": args.retries,
        "timeout_s": args.timeout_s,
        "deadline_s": args.deadline_s,
        "give_up_window": args.give_up_window,
        "give_up_fraction": args.give_up_fraction,
        "pixels": args.pixels,
        "bands": args.bands,
        "with_invvar": args.with_invvar,
        "bricks": args.bricks,
    }


def pixel_attrs(args: FetchArgs) -> dict:
    """The cube attributes that say what a pixel is: kind, bands, units, orientation, source."""
    units = "nanomaggies per output pixel" if args.pixels == "flux" else "display counts 0-255 (R, G, B)"
    return {"pixels": args.pixels, "bands": args.bands, "units": units, "with_invvar": args.with_invvar,
            "source": args.source, "orientation": "row 0 north, column 0 east",
            "output_pixscale": "pixscale x size / image_size arcsec/pixel"}  # fmt: skip


# --- as a stage of `agnsurvey run` ------------------------------------------------------------------

POLITENESS = ("cutout_url", "concurrency", "rate", "retries", "timeout_s", "deadline_s", "give_up_window",
              "give_up_fraction", "restart")  # how the cutouts are asked for: no pixel depends on these  # fmt: skip


def cube_definition(args: FetchArgs) -> dict:
    """The settings a cube's pixels and layout depend on (a cube made with others is another cube)."""
    keys = ("layer", "size", "image_size", "radius_scale", "shard_images", "inner_images", "pixels", "bands",
            "with_invvar")  # fmt: skip
    return {k: getattr(args, k) for k in keys} | {"pixscale_bounds": list(args.pixscale_bounds)}


def _fetch_for_run(args: FetchArgs, run: RunContext, before: dict, fingerprint: str, tokens: list) -> Manifest:
    if args.bricks is not None:  # cut locally: no viewer to start
        return fetch(args, client=run.client)
    return fetch(dataclasses.replace(args, cutout_url=run.cutout_url()), client=run.client)


STEP = Step(
    "fetch",
    settings=lambda args, run: (
        {k: v for k, v in dataclasses.asdict(args).items() if k not in (*POLITENESS, "workspace")},
        [run.upstream],
    ),
    complete=lambda args, run, made: args.workspace.cube.exists() and not made.get("unfinished"),
    execute=_fetch_for_run,
    images=True,
)
