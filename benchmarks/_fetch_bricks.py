"""The brick side of ``bench_fetch.py``: cutouts cut from a local mirror of the survey's coadd bricks
(``fetch --bricks ROOT``), at 1, 10 and 1,000 galaxies per brick, against the floor.

- **Mirror**: ``agnsurvey sky bricks``' own writer makes ``n`` bricks of one Dec row near Dec 20°, band
  r only, noise only (what a tile costs to decompress does not depend on what it shows): real brick
  geometry, 3600² RICE tiles of 100², TAN headers, about 11 MB per brick.
- **Galaxies**: ``per_brick`` positions drawn uniformly inside each brick's unique area, a field's
  half-diagonal from its edges, so every cutout needs exactly one brick; radii (so fields) taken from
  the offline sky's labelled galaxies; catalog order is brick by brick, as HEALPix order gives.
- **Floor** (single process, nothing else): per brick, the faster of two ways astropy has to decompress
  the tiles the cutouts touch: open the file and read each cutout's pixel box through ``hdu.section``
  (only the tiles a box touches are decompressed), or open it and read the box around all of them
  once. A cutout's box is the field's extent in brick pixels from the file's own WCS (astropy), plus
  one pixel.
- **Workers**: :class:`pipeline.images.sources.BrickSource` ``.cut`` (what a fetch task runs) on every
  worker process, the galaxies split into one contiguous run per worker, cut a shard (1,024) at a
  time; each worker answers counts, not pixels. Per core: workers' cutouts/s / (workers × floor cutouts/s).
- **Fetch stage**: the whole ``fetch --bricks`` stage on the same cluster, into a Zarr cube.
- **Memory**: each worker's peak resident set (Linux ``VmHWM``, reset before every point through
  ``/proc/self/clear_refs``) above its resident set before the point, in decompressed brick bands
  (3600² float32, 49.4 MiB each).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _fetch_server import IMAGE_SIZE, SIZE, Meter, fmt_rate
from _machine import summary_row
from astropy.io import fits
from astropy.wcs import WCS
from distributed import Client

from pipeline.images.args import FetchArgs
from pipeline.images.fetch import fetch
from pipeline.images.requests import pixscale_for
from pipeline.images.sources import BrickSource
from pipeline.synthetic.bricks import (
    BRICK_PIXELS,
    BrickSpec,
    brick_path,
    brick_table,
    bricks_to_write,
    write_brick,
    write_survey_bricks,
)
from pipeline.synthetic.sky_noise import NATIVE_PIXSCALE
from storage.hats_catalog import write_frame

BAND = "r"
DEC_ROW = 20.0  # degrees: the bricks measured are consecutive ones of the Dec row holding this
BRICK_BAND_BYTES = BRICK_PIXELS * BRICK_PIXELS * 4
SHARD = FetchArgs.__dataclass_fields__["shard_images"].default  # galaxies a fetch task cuts at once
now = time.perf_counter


# --------------------------------------------------------------------------------------------------
# Inputs


def write_mirror(root: Path, n_bricks: int, client: Client) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``n_bricks`` consecutive bricks of one Dec row (band r, noise only) and the bricks table, written on
    the workers; their table rows and how long it took."""
    t0 = now()
    width = BRICK_PIXELS * NATIVE_PIXSCALE / 3600.0 / math.cos(math.radians(DEC_ROW))
    rows = bricks_to_write(brick_table(), 180.0, 180.0 + (n_bricks + 1) * width, DEC_ROW, DEC_ROW + 1e-3)
    rows = rows.sort_values("RA").head(n_bricks).reset_index(drop=True)
    if len(rows) < n_bricks:
        raise RuntimeError(f"only {len(rows)} bricks in the row at Dec {DEC_ROW}; ask for fewer")
    write_survey_bricks(root)
    specs = [BrickSpec(str(root), str(r.BRICKNAME), int(r.BRICKID), float(r.RA), float(r.DEC), (), BAND, False)
             for r in rows.itertuples(index=False)]  # fmt: skip
    client.gather(client.map(write_brick, specs, pure=False))
    files = [brick_path(root, s.name, "image", BAND) for s in specs]
    return rows, {"bricks": n_bricks, "seconds": now() - t0, "bytes_per_brick": sum(p.stat().st_size for p in files)
                  / n_bricks, "band": BAND}  # fmt: skip


def galaxies_in(rows: pd.DataFrame, per_brick: int, radii: np.ndarray, seed: int) -> pd.DataFrame:
    """``per_brick`` galaxies in each brick of ``rows`` (ra, dec, radius_arcsec, brick), brick by brick."""
    rng = np.random.default_rng(seed)
    radius = rng.choice(radii, size=len(rows) * per_brick)
    pixscale, _ = pixscale_for(radius, SIZE)
    margin = pixscale * SIZE / 3600.0 * math.sqrt(0.5) + 2 * NATIVE_PIXSCALE / 3600.0  # half-diagonal, degrees
    brick = np.repeat(np.arange(len(rows)), per_brick)
    ra1, ra2, dec1, dec2 = (rows[c].to_numpy()[brick] for c in ("RA1", "RA2", "DEC1", "DEC2"))
    dec = rng.uniform(dec1 + margin, dec2 - margin)
    ra_margin = margin / np.cos(np.radians(dec + np.sign(dec) * margin))
    ra = rng.uniform(ra1 + ra_margin, ra2 - ra_margin)
    return pd.DataFrame({"ra": ra, "dec": dec, "radius_arcsec": radius, "brick": rows["BRICKNAME"].to_numpy()[brick]})


def brick_workspace(ws: Path, template: pd.DataFrame, gals: pd.DataFrame) -> Path:
    """A workspace whose catalog is ``gals`` (columns other than position and radius from the offline sky)."""
    shutil.rmtree(ws, ignore_errors=True)
    rows = template.iloc[np.arange(len(gals)) % len(template)].reset_index(drop=True).copy()
    rows["objid"] = np.arange(len(gals), dtype=rows["objid"].dtype) + 10**9
    for column in ("ra", "dec", "radius_arcsec"):
        rows[column] = gals[column].to_numpy().astype(rows[column].dtype)
    rows["cube_row"] = range(len(rows))
    write_frame(rows, ws / "catalog", "catalog")
    return ws


# --------------------------------------------------------------------------------------------------
# The floor, the workers, the stage


def floor_point(root: Path, gals: pd.DataFrame) -> dict[str, Any]:
    """Per brick, the cheaper of two ways to decompress just the tiles its cutouts touch, single process:
    open the file and read each cutout's pixel box through ``hdu.section``, or open it and read the box
    around all of them once; nothing else (no resampling, no outcomes)."""
    field_px = pixscale_for(gals["radius_arcsec"].to_numpy(), SIZE)[0] * SIZE / NATIVE_PIXSCALE
    seconds, pixels, chose_union = 0.0, 0, 0
    for name, members in gals.groupby("brick", sort=False).indices.items():
        path = brick_path(root, name, "image", BAND)
        header = fits.getheader(path, 1)  # not timed: only the geometry of the boxes
        x, y = WCS(header).world_to_pixel_values(gals["ra"].to_numpy()[members], gals["dec"].to_numpy()[members])
        half = field_px[members] / 2.0 + 1.0
        boxes = [(max(0, math.floor(yi + 0.5 - h)), min(BRICK_PIXELS, math.ceil(yi + 0.5 + h)),
                  max(0, math.floor(xi + 0.5 - h)), min(BRICK_PIXELS, math.ceil(xi + 0.5 + h)))
                 for xi, yi, h in zip(x, y, half, strict=True)]  # fmt: skip
        union = [(min(b[0] for b in boxes), max(b[1] for b in boxes), min(b[2] for b in boxes),
                  max(b[3] for b in boxes))]  # fmt: skip
        timed = []
        for way in (boxes, union):
            t0 = now()
            with fits.open(path, lazy_load_hdus=True) as hdul:
                hdu = hdul[1]
                read = sum(hdu.section[y0:y1, x0:x1].size for y0, y1, x0, x1 in way)
            timed.append((now() - t0, read))
        best = min(range(2), key=lambda i: timed[i][0])
        seconds, pixels, chose_union = seconds + timed[best][0], pixels + timed[best][1], chose_union + best
    n = len(gals)
    return {"method": "floor: open + fewest hdu.section reads, 1 process", "images": n, "seconds": seconds,
            "images_per_s": n / seconds, "pixels_decompressed_per_cutout": pixels / n,
            "bricks_read_whole_box": chose_union}  # fmt: skip


def cut_run(root: str, ra: np.ndarray, dec: np.ndarray, pixscale: np.ndarray) -> dict[str, Any]:
    """On a worker: what a fetch task's pixel source does for these galaxies; counts, not pixels."""
    source = BrickSource(root, "flux", BAND, False, SIZE, IMAGE_SIZE)
    t0, statuses = now(), pd.Series(dtype="int64")
    for start in range(0, len(ra), SHARD):  # one shard's outcomes held at a time, as a fetch task holds them
        outcomes, _ = source.cut(ra[start : start + SHARD], dec[start : start + SHARD], pixscale[start : start + SHARD])
        statuses = statuses.add(pd.Series([o.status for o in outcomes]).value_counts(), fill_value=0)
        del outcomes
    return {"seconds": now() - t0, "statuses": {k: int(v) for k, v in statuses.items()}, "pid": os.getpid()}


def reset_peak_memory() -> int:
    """Reset this process's peak resident set to its current one (Linux); its RSS in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_bytes("VmRSS")


def peak_memory() -> int:
    """This process's peak resident set since the last reset, bytes (Linux VmHWM)."""
    return _status_bytes("VmHWM")


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def _memory(client: Client, before: dict[str, int]) -> dict[str, Any]:
    peak = client.run(peak_memory)
    worst = max(peak.values())
    return {"worker_rss_before_mb": max(before.values()) / 2**20, "worker_peak_rss_mb": worst / 2**20,
            "worker_peak_growth_mb": max(peak[w] - before[w] for w in peak) / 2**20,
            "worker_peak_growth_in_brick_bands": max(peak[w] - before[w] for w in peak) / BRICK_BAND_BYTES}  # fmt: skip


def worker_point(client: Client, root: Path, gals: pd.DataFrame, meter: Meter) -> dict[str, Any]:
    """``BrickSource.cut`` on every worker at once, one contiguous run of galaxies each."""
    workers = list(client.nthreads())
    pixscale = pixscale_for(gals["radius_arcsec"].to_numpy(), SIZE)[0]
    runs = np.array_split(np.arange(len(gals)), len(workers))
    before = client.run(reset_peak_memory)
    point: dict[str, Any] = {"method": f"BrickSource.cut on {len(workers)} worker processes",
                             "concurrency": len(workers), "loops": len(workers)}  # fmt: skip
    with meter.measure(len(gals), point):
        futures = [client.submit(cut_run, str(root), gals["ra"].to_numpy()[r], gals["dec"].to_numpy()[r],
                                 pixscale[r], workers=[w], pure=False) for w, r in zip(workers, runs, strict=True)
                   if len(r)]  # fmt: skip
        done = client.gather(futures)
    ok = sum(d["statuses"].get("ok", 0) for d in done)
    if ok != len(gals):
        raise RuntimeError(f"bricks on workers: {ok} of {len(gals)} cutouts ok ({[d['statuses'] for d in done]})")
    point["task_seconds"] = [d["seconds"] for d in done]
    return point | _memory(client, before)


def brick_stage_point(client: Client, ws: Path, n: int, root: Path, meter: Meter) -> dict[str, Any]:
    """The whole ``fetch --bricks ROOT --pixels flux --bands r`` stage on the cluster, ``n`` galaxies."""
    args = FetchArgs(workspace=ws, cutout_url="", bricks=str(root), pixels="flux", bands=BAND, size=SIZE,
                     image_size=IMAGE_SIZE, restart=True)  # fmt: skip
    before = client.run(reset_peak_memory)
    point: dict[str, Any] = {"method": f"fetch --bricks stage, {len(client.nthreads())} workers",
                             "concurrency": len(client.nthreads()), "loops": len(client.nthreads())}  # fmt: skip
    with meter.measure(n, point):
        manifest = fetch(args, client)
    if manifest.extra["status"].get("ok") != n:
        raise RuntimeError(f"fetch --bricks: {manifest.extra['status']} instead of {n} ok; timings void")
    point["shards"] = manifest.outputs["shards"]
    return point | _memory(client, before)


def brick_points(client: Client, data: Path, template: pd.DataFrame, meter: Meter, n_bricks: int,
                 per_brick: list[int], max_cutouts: int) -> dict[str, Any]:  # fmt: skip
    """Write the mirror, then per density: the floor, the workers, the fetch stage."""
    root = data / "bricks"
    shutil.rmtree(root, ignore_errors=True)
    print(f"bricks: writing {n_bricks} bricks (band {BAND}) on the workers ...", flush=True)
    rows, mirror = write_mirror(root, n_bricks, client)
    print(f"  {mirror['seconds']:.1f} s, {mirror['bytes_per_brick'] / 1e6:.1f} MB per brick", flush=True)
    radii = template["radius_arcsec"].to_numpy()
    warm = [now()]
    client.run(_warm, str(root))  # each worker reads the bricks table once, as a fetch worker does
    warm.append(now())
    points = []
    for density in per_brick:
        used = rows.head(min(n_bricks, max(1, max_cutouts // density)))
        gals = galaxies_in(used, density, radii, seed=density)
        print(f"bricks: {density:,} per brick, {len(used)} bricks, {len(gals):,} cutouts ...", flush=True)
        common = {"per_brick": density, "bricks": len(used)}
        floor = floor_point(root, gals)
        workers = worker_point(client, root, gals, meter)
        ws = brick_workspace(data / f"ws-bricks-{density}", template, gals)
        stage = brick_stage_point(client, ws, len(gals), root, meter)
        per_core = workers["images_per_s"] / (workers["loops"] * floor["images_per_s"])
        points += [common | floor, common | workers | {"x_floor_per_core": per_core}, common | stage]
    return {"mirror": mirror, "table_read_seconds_all_workers": warm[1] - warm[0], "points": points}


def _warm(root: str) -> None:
    from pipeline.images.sources import _open

    _open(root)


# --------------------------------------------------------------------------------------------------
# Table, aims and summary rows of bench_fetch


BRICK_COLUMNS = ["per brick", "bricks", "cutouts", "floor img/s", "workers img/s", "x floor/core", "stage img/s",
                 "worker ms/cutout", "x polite viewer", "worker peak MB", "growth / brick band"]  # fmt: skip


GROWTH = "worker_peak_growth_in_brick_bands"


def brick_rows(bricks: dict[str, Any], polite_rate: float) -> list[dict[str, str]]:
    """One row per galaxies-per-brick: floor, workers and stage side by side."""
    rows = []
    for density in dict.fromkeys(p["per_brick"] for p in bricks["points"]):
        floor, workers, stage = (p for p in bricks["points"] if p["per_brick"] == density)
        rows.append({
            "per brick": f"{density:,}", "bricks": str(floor["bricks"]), "cutouts": f"{floor['images']:,}",
            "floor img/s": fmt_rate(floor["images_per_s"]), "workers img/s": fmt_rate(workers["images_per_s"]),
            "x floor/core": f"{workers['x_floor_per_core']:.2f}", "stage img/s": fmt_rate(stage["images_per_s"]),
            "worker ms/cutout": f"{1e3 * workers['loops'] / workers['images_per_s']:.2f}",
            "x polite viewer": f"{workers['images_per_s'] / polite_rate:.0f}",
            "worker peak MB": f"{max(workers['worker_peak_rss_mb'], stage['worker_peak_rss_mb']):.0f}",
            "growth / brick band": f"{max(p[GROWTH] for p in (workers, stage)):.1f}",
        })  # fmt: skip
    return rows


def brick_aims(bricks: dict[str, Any]) -> list[str]:
    workers = [p for p in bricks["points"] if p["method"].startswith("BrickSource")]
    lines = [f"  bricks, {p['per_brick']:,} per brick: {p['x_floor_per_core']:.2f} of the floor per core (aim >= 0.7: "
             f"{'met' if p['x_floor_per_core'] >= 0.7 else 'NOT met'})" for p in workers]  # fmt: skip
    ms = [p["loops"] / p["images_per_s"] for p in workers]
    falling = all(b < a for a, b in zip(ms, ms[1:], strict=False))
    lines.append(f"  bricks: worker time per cutout {' -> '.join(f'{1e3 * m:.2f}' for m in ms)} ms as galaxies per "
                 f"brick grow (aim: falling: {'met' if falling else 'NOT met'})")  # fmt: skip
    peak = max(p[GROWTH] for p in bricks["points"] if GROWTH in p)
    lines.append(f"  bricks: peak worker memory growth {peak:.1f} decompressed brick bands (3600^2 float32 each; "
                 "aim: a few, whatever the catalog)")  # fmt: skip
    return lines


BRICK_DEFINITIONS = {
    "bricks.floor": "per brick, the faster of one hdu.section read per cutout box (field + 1 px, from the file's "
    "WCS) and one read of the box around them all, file open included; one process",
    "bricks.x_floor_per_core": "workers' cutouts/s / (worker processes x the floor's cutouts/s)",
    "bricks.worker_peak_rss_mb": "largest worker VmHWM over the point (reset before it via /proc/self/clear_refs)",
    "bricks.worker_peak_growth_in_brick_bands": "(that peak - the worker's RSS before the point) / one decompressed "
    "brick band (3600^2 float32, 49.4 MiB)",
}


def brick_summary(bricks: dict[str, Any], polite: dict[str, Any], polite_rate: float) -> list[dict[str, Any]]:
    """``agnsurvey bench``'s rows: the densest point against the floor on as many cores, and against the viewer."""
    dense = [p for p in bricks["points"] if p["method"].startswith("BrickSource")][-1]
    floor = next(p for p in bricks["points"] if p["per_brick"] == dense["per_brick"])
    work = f"{dense['images']:,} cutouts, {dense['per_brick']:,}/brick"
    return [
        summary_row(f"fetch --bricks ({dense['method']})", work, dense["images_per_s"], "img/s",
                    f"floor x {dense['loops']} (1 process)", floor["images_per_s"] * dense["loops"]),
        summary_row("fetch --bricks vs the viewer", f"{dense['per_brick']:,}/brick; viewer at {polite_rate:g} req/s",
                    dense["images_per_s"], "img/s", "viewer, polite", polite["images_per_s"]),
    ]  # fmt: skip
