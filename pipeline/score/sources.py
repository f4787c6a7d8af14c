"""Where a scored catalog's pixels come from: local image files, or a cube fetched into its own workspace."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from distributed import Client

from pipeline.catalog.args import IngestArgs
from pipeline.catalog.canonical import canonical_frame
from pipeline.catalog.sources import inspect_all, plan_chunks, read_raw, rows_before
from pipeline.errors import CatalogError, ScoreError, WorkspaceError
from pipeline.learn.pixels import PixelKind, check_kind
from pipeline.score.args import ScoreArgs
from pipeline.score.model import ModelInfo
from pipeline.stage import Report, writing
from storage.cube import OLD_CUBE_ATTRS, open_cube
from storage.hats_catalog import (
    check_table,
    is_hats,
    pixel_relpath,
    table_columns,
)
from storage.healpix import pixel_bounds
from storage.tables import read_positions
from storage.workspace import Workspace

SCORING_DIR = "scoring"  # WS/scoring/: the workspace a scored catalog is ingested and fetched into


def image_catalog(args: ScoreArgs) -> tuple[dict, pd.DataFrame]:
    """The catalog's ids, positions (NaN where absent) and absolute image paths, in file order."""
    sources = inspect_all(args.inputs, args.columns, args.radius_column, args.format, args.hdu, args.id_kind,
                          required=("objid",))  # fmt: skip
    frames = []
    for src in sources:
        column = next((c for c in src.all_columns if c.upper() == str(args.images).upper()), None)
        if column is None:
            raise CatalogError(
                f"{src.path}: has no column {args.images!r} of image paths (--images); its columns: "
                f"{', '.join(src.all_columns[:20])}{' ...' if len(src.all_columns) > 20 else ''}"
            )
        for chunk in plan_chunks(src, 1_000_000):
            raw = read_raw(chunk, extra=[column])
            frame = canonical_frame(raw, src, first_row=lambda c=chunk: rows_before(c))
            paths = pd.Series(np.asarray(raw[column], dtype=object)).fillna("").astype(str).str.strip()
            base = Path(src.path).absolute().parent
            frame["image_path"] = [p if os.path.isabs(p) else str(base / p) for p in paths]
            frames.append(frame[[c for c in ("objid", "source_id", "ra", "dec", "image_path") if c in frame]])
    frame = pd.concat(frames, ignore_index=True)
    repeated = frame["objid"].duplicated()
    if repeated.any():
        first = frame.loc[repeated.idxmax()]
        shown = first["source_id"] if "source_id" in frame else first["objid"]
        raise CatalogError(
            f"{', '.join(args.inputs)}: id {shown} appears more than once ({int(repeated.sum()):,} repeated ids); "
            "give each image row its own id (--column objid=NAME), so that every score names one galaxy"
        )
    files = [{"path": os.path.abspath(s.path), "bytes": s.n_bytes, "mtime_ns": os.stat(s.path).st_mtime_ns}
             for s in sources]  # fmt: skip
    return {"catalog": files, "images": args.images, "part_rows": args.part_rows}, frame


def scoring_workspace(args: ScoreArgs) -> Workspace:
    """Where the scored catalog and its cube live: ``WS/scoring/`` for a catalog given to score,
    the workspace itself when its own catalog is scored."""
    return Workspace(args.workspace.root / SCORING_DIR) if args.inputs else args.workspace


def prepare_source(args: ScoreArgs, client: Client | None, report: Report) -> Workspace:
    """Ingest ``args.inputs`` into ``WS/scoring/`` unless it holds them already (same files and
    column map); the workspace itself when scoring its own catalog."""
    source_ws = scoring_workspace(args)
    if not args.inputs:
        if not source_ws.catalog.exists():
            raise WorkspaceError(
                f"{source_ws.root} has no catalog to score; give catalog files (agnsurvey score CATALOG ...) or run "
                "`agnsurvey ingest` first"
            )
        return source_ws
    sources = inspect_all(args.inputs, args.columns, args.radius_column, args.format, args.hdu, args.id_kind)
    for src in sources:
        if "radius_arcsec" not in src.mapping:
            raise CatalogError(
                f"{src.path}: has no radius column ({args.radius_column}), which fetching a cutout needs; map the "
                "column holding the galaxy's radius in arcsec with --radius-column NAME, or score local files with "
                "--images COLUMN"
            )
    inputs = tuple(os.path.abspath(s.path) for s in sources)
    ingest_args = IngestArgs(workspace=source_ws, inputs=inputs, columns=args.columns,
                             radius_column=args.radius_column, format=args.format, hdu=args.hdu,
                             id_kind=args.id_kind)  # fmt: skip
    from pipeline.catalog.ingest import parameters as ingest_parameters
    from pipeline.catalog.sources import file_stats

    wanted = {"parameters": ingest_parameters(ingest_args), "files": file_stats(inputs)}
    recorded = (source_ws.read_manifest("ingest") or {}).get("extra", {}).get("score_source")
    if recorded == json.loads(json.dumps(wanted)) and is_hats(source_ws.catalog):
        return source_ws
    # the same rows, only partitioned anew (or from an older layout): the cube stays valid
    same_rows = recorded is not None and _rows_key(recorded) == _rows_key(json.loads(json.dumps(wanted)))
    if source_ws.cube.exists() and not same_rows and not args.restart:
        raise ScoreError(
            f"{source_ws.root} holds another catalog's cutouts than {', '.join(args.inputs)}; pass --restart to "
            "score this catalog anew (its cutouts are then fetched again), or score into another --workspace"
        )
    from pipeline.catalog.ingest import ingest

    manifest = ingest(ingest_args, client=client)  # first: a bad catalog leaves the old cutouts alone
    if source_ws.cube.exists() and not same_rows:  # the cutouts of the catalog scored before (--restart given)
        with writing(source_ws, "cube", "score"):
            trash = source_ws.root / f".cube.zarr.discarded-{os.getpid()}"
            os.replace(source_ws.cube, trash)  # one rename: the cube is whole or gone
            (source_ws.root / "cube_failures.parquet").unlink(missing_ok=True)
            shutil.rmtree(trash, ignore_errors=True)
    manifest.extra["score_source"] = wanted
    source_ws.write_manifest("ingest", manifest.to_dict())
    report("ingest", manifest)
    return source_ws


def _rows_key(source: dict) -> dict:
    """What decides the scored catalog's rows and their cube rows: the files and the column map,
    not how rows are cut into partitions or read in chunks."""
    parameters = {k: v for k, v in source.get("parameters", {}).items()
                  if k not in ("max_rows", "shard_rows", "chunk_rows")}  # fmt: skip
    return {"parameters": parameters, "files": source.get("files")}


def cube_catalog(ws: Workspace) -> pd.DataFrame:
    """objid, [source_id], ra, dec, cube_row, _healpix_29 of the catalog, in cube order."""
    check_table(ws.catalog, f"`agnsurvey ingest CATALOG --workspace {ws.root}`")
    text_ids = ("source_id",) if "source_id" in table_columns(ws.catalog) else ()
    frame = read_positions(ws, extra=("_healpix_29", *text_ids))
    if not frame["_healpix_29"].is_monotonic_increasing:  # parts are cut from cube rows by HEALPix range
        raise WorkspaceError(f"{ws.catalog}: cube_row is not in sky order; re-run `agnsurvey ingest`")
    return frame[[c for c in ("objid", "source_id", "ra", "dec", "cube_row", "_healpix_29") if c in frame]]


def cube_parts(frame: pd.DataFrame, partitions: list[tuple[int, int, Path]],
               shard_images: int) -> dict[int, list[tuple[str, int, int]]]:  # fmt: skip
    """Parts by cube shard: the rows ``[begin, end)`` (cube rows, ``frame`` in cube order) of each
    catalog partition inside each shard, keyed by the file they are scored into."""
    hpx = frame["_healpix_29"].to_numpy()
    by_shard: dict[int, list[tuple[str, int, int]]] = {}
    for order, pixel, _ in partitions:
        begin, end = (int(x) for x in np.searchsorted(hpx, pixel_bounds(order, pixel)))
        directory = pixel_relpath(order, pixel, directory=True)
        for shard in range(begin // shard_images, (end - 1) // shard_images + 1) if end > begin else ():
            low, high = max(begin, shard * shard_images), min(end, (shard + 1) * shard_images)
            by_shard.setdefault(shard, []).append((f"{directory}/shard-{shard:05d}.parquet", low, high))
    return by_shard


CUBE_SETTINGS = ("layer", "size", "radius_scale", "pixscale_bounds", "pixels", "bands")


def scoring_cube_settings(args: ScoreArgs, source_ws: Workspace, model: ModelInfo) -> dict:
    """The cutout settings of the cube scored: the existing cube's (which must match ``args.fetch``
    where given), else ``args.fetch``'s; its image size must be the model's input size."""
    f = args.fetch
    asked = None if f is None else {"image_size": f.image_size, **{k: getattr(f, k) for k in CUBE_SETTINGS}}
    if asked is not None:
        asked["pixscale_bounds"] = list(asked["pixscale_bounds"])
    have = cube_have(source_ws)
    settings = (asked if args.restart and args.inputs and asked else have or asked) or {}
    if have and asked and have != asked and not (args.restart and args.inputs):
        diff = ", ".join(f"{k} {have[k]!r} -> {asked[k]!r}" for k in have if have[k] != asked[k])
        fix = ("pass --restart to fetch them anew" if args.inputs else "drop the options that differ to score the "
               f"cube as it is, or fetch it anew with them first (`agnsurvey fetch --workspace {source_ws.root} "
               "--restart` with the same options)")  # fmt: skip
        raise ScoreError(f"{source_ws.cube} holds cutouts made with other settings ({diff}); {fix}")
    if settings and settings["image_size"] != model.image_size:
        raise ScoreError(
            f"the cutouts are {settings['image_size']} pixels, the model takes {model.image_size}; fetch with "
            f"--image-size {model.image_size} (a new cube: --restart, or another --workspace), or use a model "
            "trained on these cutouts"
        )
    if settings:
        check_kind(PixelKind(model.pixels, model.bands), model.path,
                   PixelKind(settings["pixels"], settings["bands"]),
                   source_ws.cube if have and settings is have else "--pixels/--bands")  # fmt: skip
    return asked if have and asked and have != asked else settings


def cube_have(source_ws: Workspace) -> dict | None:
    """The existing cube's cutout settings (None without a cube)."""
    if not source_ws.cube.exists():
        return None
    cube = open_cube(source_ws.cube, mode="r")
    return {"image_size": cube.layout.image_size,
            **{k: cube.attrs.get(k, OLD_CUBE_ATTRS.get(k)) for k in CUBE_SETTINGS}}  # fmt: skip
