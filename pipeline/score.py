"""Stage ``score``: a trained model + any catalog → ``WS/scores/``, P(AGN) and a label for every row.

No emission lines are needed: that is the point. Where the pixels come from:

- a cube (default): the catalog is ingested into its own workspace ``WS/scoring/`` (or, with no
  catalog given, the workspace's own catalog is scored) and every row is fetched into its cube as
  ``fetch --rows all`` does (same politeness, resumable). Scoring streams behind fetching: a
  shard is scored as soon as its cutouts are written.
- ``images``: a column of local image paths (JPEG/PNG, any size; centre-cropped to a square and
  resized like fetched cutouts), read in parts of ``part_rows`` rows in file order: no service.

Work units are parts. From a cube, a part is the rows of one catalog HEALPix partition inside one
cube shard, written to ``WS/scores/dataset/Norder=k/Dir=d/Npix=n/shard-SSSSS.parquet``: the
scores are a HATS catalog (one directory of files per pixel, the catalog's pixels) whose metadata
is written with the ``hats`` library when every part is written, so ``lsdb.open_catalog(WS/scores)``
cross-matches them. With ``images`` a part is ``part_rows`` catalog rows,
``WS/scores/part-NNNNN.parquet`` (positions may be absent, so no HEALPix partitioning).

A task scores one part with the model loaded once per worker process (:func:`loaded_model`) and
writes its file in one atomic rename, so a killed worker's task is simply run again elsewhere: no
row is lost or written twice. A part whose rows all have a final status is complete and skipped by
a re-run; one with ``failed`` or ``pending`` rows is scored again.

Columns: ``objid`` (and ``source_id`` for text ids), ``ra``, ``dec`` (degrees), ``p_agn``,
``label`` (1 AGN where p_agn >= threshold), ``status`` (ok, no_coverage, bad_radius, failed,
pending, bad_image) and, from a cube, ``_healpix_29``; ``p_agn`` and ``label`` are null unless
``status`` is ok. Each file's Parquet metadata (key ``agnsurvey``) names the model, its SHA-256
and the threshold.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from distributed import Client, as_completed

from cluster.client import progress_enabled
from pipeline.catalog import canonical_frame, inspect_all, plan_chunks, read_raw, rows_before
from pipeline.config import IngestArgs, ScoreArgs
from pipeline.errors import CatalogError, ScoreError, WorkspaceError
from pipeline.stage import locked, writing
from storage.cube import FINAL_STATUSES, STATUS_NAMES, open_cube, status_rank
from storage.hats_catalog import (
    DATASET,
    check_table,
    clear_metadata,
    describe_files,
    finish_catalog,
    is_hats,
    partition_files,
    pixel_relpath,
    table_columns,
)
from storage.healpix import pixel_bounds
from storage.manifest import Manifest, atomic_file, file_checksum
from storage.tables import read_positions, score_files
from storage.workspace import Workspace

PART_NAME = "part-{:05d}.parquet"
METADATA_KEY = b"agnsurvey"
STATUSES = ("ok", "no_coverage", "bad_radius", "failed", "pending", "bad_image")
FINAL = {*FINAL_STATUSES, "bad_image"}  # a part of only these is complete (bad_image: no cutout to retry)
SCORING_DIR = "scoring"  # WS/scoring/: the workspace a scored catalog is ingested and fetched into


@dataclass(frozen=True)
class ModelInfo:
    """The model file to score with, its checksum, name, input size (pixels) and threshold."""

    path: str
    sha256: str
    name: str
    image_size: int
    threshold: float
    threshold_source: str


@dataclass(frozen=True)
class Part:
    """One task: score the rows of one partition in one cube shard, or one slice of a catalog's
    image paths. ``key`` is its file's path under ``WS/scores/``."""

    key: str
    rows: pd.DataFrame  # objid, [source_id], ra, dec, and cube_row (cube) or image_path (images)
    out: str
    model: ModelInfo
    batch_size: int
    tta: bool
    fingerprint: dict
    cube: str = ""


@dataclass
class PartResult:
    key: str
    statuses: dict[str, int]
    images: int
    seconds: float
    complete: bool
    problems: list[str] = field(default_factory=list)  # bad images, with why (a few)


# ---------------------------------------------------------------- the model, once per worker process

_models: dict[str, Any] = {}
_model_lock = threading.Lock()
model_loads: Counter = Counter()  # per process: how often each model file was loaded (tests read it)


def loaded_model(info: ModelInfo) -> Any:
    """The Keras model of ``info``, loaded on first use in this process and kept (one model per
    worker: a new one replaces it)."""
    with _model_lock:
        if info.sha256 not in _models:
            from pipeline.quiet_import import import_keras

            keras = import_keras()
            _models.clear()
            _models[info.sha256] = (keras.saving.load_model(info.path, compile=False), threading.Lock())
            model_loads[info.sha256] += 1
        return _models[info.sha256]


def load_counts() -> dict[str, int]:
    """This process's model loads by checksum (run on workers with ``client.run``)."""
    return dict(model_loads)


def default_batch_size() -> int:
    """Images per prediction: 1024 where a GPU is visible (more work per launch), 256 on a CPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    has_gpu = (visible is None or visible.strip() not in ("", "-1")) and Path("/dev/nvidia0").exists()
    return 1024 if has_gpu else 256


# ---------------------------------------------------------------- one part


def score_part(part: Part) -> PartResult:
    """Score one part and write it (atomic): p_agn where the image is usable, a status for every row."""
    start = time.monotonic()
    rows = part.rows
    n = len(rows)
    status = np.empty(n, dtype=object)
    problems: list[str] = []
    if part.cube:
        cube = open_cube(Path(part.cube), mode="r")
        cube_rows = rows["cube_row"].to_numpy()
        codes = cube.status_codes(int(cube_rows[0]), int(cube_rows[-1]) + 1)[cube_rows - cube_rows[0]]
        status[:] = [STATUS_NAMES[int(c)] for c in codes]
        usable = np.flatnonzero(status == "ok")
        images = cube.read_rows(cube_rows[usable]) if usable.size else None
    else:
        images, status[:], problems = _read_images(rows["image_path"].tolist(), part.model.image_size)
        usable = np.flatnonzero(status == "ok")
        images = images[usable] if usable.size else None
    p_agn = np.full(n, np.nan, dtype=np.float32)
    if images is not None:
        from pipeline.inference import predict_images

        model, lock = loaded_model(part.model)
        with lock:
            p_agn[usable] = predict_images(model, images, part.batch_size, part.tta)
    _write_part(Path(part.out), rows, p_agn, status, part)
    counts = Counter(status.tolist())
    return PartResult(part.key, dict(counts), int(usable.size), time.monotonic() - start,
                      complete=set(counts) <= FINAL, problems=problems[:5])  # fmt: skip


def _read_images(paths: list[str], size: int) -> tuple[np.ndarray, list[str], list[str]]:
    """uint8 (n, size, size, 3) images from files; status ``bad_image`` (with why) where unreadable."""
    from PIL import Image, UnidentifiedImageError

    from pipeline.cutouts import resize

    images = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    status, problems = ["ok"] * len(paths), []
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as img:
                img.load()
                rgb = np.asarray(img.convert("RGB"))
        except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as exc:
            status[i] = "bad_image"
            why = "not an image or corrupt" if isinstance(exc, UnidentifiedImageError | SyntaxError) else str(exc)
            problems.append(f"{path}: {why}")
            continue
        height, width = rgb.shape[:2]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        images[i] = resize(np.ascontiguousarray(rgb[top : top + side, left : left + side]), size)
    return images, status, problems


def _write_part(path: Path, rows: pd.DataFrame, p_agn: np.ndarray, status: np.ndarray, part: Part) -> None:
    ok = status == "ok"
    label = np.where(ok, (p_agn >= part.model.threshold).astype(np.int8), 0)
    columns = {"objid": pa.array(rows["objid"].to_numpy(), pa.int64())}
    if "source_id" in rows:
        columns["source_id"] = pa.array(rows["source_id"].astype(object).to_numpy(), pa.string())
    columns |= {
        "ra": pa.array(rows["ra"].to_numpy(), pa.float64()),
        "dec": pa.array(rows["dec"].to_numpy(), pa.float64()),
        "p_agn": pa.array(p_agn, pa.float32(), mask=~ok),
        "label": pa.array(label, pa.int8(), mask=~ok),
        "status": pa.array(status.astype(str), pa.string()),
    }
    if "_healpix_29" in rows:
        columns["_healpix_29"] = pa.array(rows["_healpix_29"].to_numpy(), pa.int64())
    meta = dict(part.fingerprint, model_name=part.model.name, model_file=part.model.path,
                threshold_source=part.model.threshold_source, complete=bool(set(status.tolist()) <= FINAL))  # fmt: skip
    table = pa.table(columns).replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)


# ---------------------------------------------------------------- the stage

Report = Callable[[str, Manifest], Any]  # told of each stage's manifest as it finishes (the CLI prints it)


def score(args: ScoreArgs, client: Client | None = None, report: Report | None = None) -> Manifest:
    """Score ``args.inputs`` (or the workspace's catalog) into ``WS/scores/``; returns the manifest.

    Rows without a final status (cutouts failed or not fetched) are named in ``manifest.unfinished``:
    a re-run fetches and scores them. ``report(stage, manifest)`` is called for the ingest and fetch
    that scoring ran for itself.
    """
    ws = args.workspace
    with writing(ws, "scores", "score", kept=f"{ws.scores} keeps every part that was written (whole files)"):
        return _score(args, client, report or (lambda stage, manifest: None))


def _score(args: ScoreArgs, client: Client | None, report: Report) -> Manifest:
    ws = args.workspace
    model = resolve_model(args)
    manifest = Manifest(stage="score", parameters=_parameters(args, model))
    started = time.monotonic()
    if args.images:
        source, frame = _image_catalog(args)
        fingerprint = _fingerprint(args, model, source)
        existing = _existing_parts(ws.scores, fingerprint, args.restart)
        parts = [_part(args, model, fingerprint, PART_NAME.format(k), frame.iloc[a : a + args.part_rows])
                 for k, a in enumerate(range(0, len(frame), args.part_rows))]  # fmt: skip
        todo = {p.key: p for p in parts if p.key not in existing}
        if client is not None:
            todo = {k: client.submit(score_part, p, pure=False) for k, p in todo.items()}
        results, fetched = list(_gather(todo, client)), None
    else:
        source_ws = _prepare_source(args, client, report)
        with locked(source_ws, "catalog", shared=True):
            frame = _cube_catalog(source_ws)
        settings = _cube_settings(args, source_ws, model)
        ingested = source_ws.read_manifest("ingest") or {}
        source = {"catalog": ingested.get("inputs"), "cube": settings,
                  "partitions": ingested.get("outputs", {}).get("partitioning")}  # fmt: skip
        fingerprint = _fingerprint(args, model, source)
        existing = _existing_parts(ws.scores, fingerprint, args.restart)
        results, fetched = _score_cube(args, source_ws, frame, model, fingerprint, existing, client, report)
    seconds = time.monotonic() - started
    return _finish(manifest, args, model, frame, results, existing, fetched, seconds, fingerprint)


def resolve_model(args: ScoreArgs) -> ModelInfo:
    """The model file (a directory train wrote, its model.keras, or a name under WS/models/) and the
    threshold: ``args.threshold``, else the ``threshold.json`` evaluate stored beside the model."""
    given = Path(args.model).expanduser()
    candidates = [given, given / "model.keras", args.workspace.models / args.model / "model.keras"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise ScoreError(
            f"no model at {args.model}: give the directory `agnsurvey train` wrote (e.g. "
            f"{args.workspace.models}/paper) or its model.keras; train one with `agnsurvey train`"
        )
    path = path.absolute()
    sha = file_checksum(path)
    image_size = model_input_size(path)
    if args.threshold is not None:
        return ModelInfo(str(path), sha, path.parent.name, image_size, float(args.threshold), "--threshold")
    stored = path.parent / "threshold.json"
    if not stored.is_file():
        raise ScoreError(
            f"{path.parent} has no threshold.json: run `agnsurvey evaluate --model {path.parent.name}` to choose it "
            "on the validation split, or give one with --threshold"
        )
    try:
        chosen = json.loads(stored.read_text())
        threshold = float(chosen["threshold"])
    except (ValueError, KeyError, TypeError):
        raise ScoreError(f"{stored} is damaged; re-run `agnsurvey evaluate`, or give --threshold") from None
    if chosen.get("model_checksum") not in (None, sha):
        raise ScoreError(
            f"{stored} was chosen for another version of {path.name} (the model was retrained since); re-run "
            "`agnsurvey evaluate`, or give --threshold"
        )
    return ModelInfo(str(path), sha, path.parent.name, image_size, threshold,
                     f"{stored} ({chosen.get('policy', '?')}, chosen on {chosen.get('chosen_on', 'val')})")  # fmt: skip


def model_input_size(path: Path) -> int:
    """Image size (pixels) a saved ``.keras`` model takes, from its config (no Keras import)."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError):
        raise ScoreError(f"{path} is not a Keras model file (damaged?); re-run `agnsurvey train`") from None
    shapes = list(_find(config, "batch_shape"))
    if not shapes or len(shapes[0]) != 4:
        raise ScoreError(f"{path}: its input is not an image batch (batch, size, size, 3); not a model of train's")
    return int(shapes[0][1])


def _find(node: Any, key: str) -> Iterator[Any]:
    if isinstance(node, dict):
        if key in node:
            yield node[key]
        for value in node.values():
            yield from _find(value, key)
    elif isinstance(node, list):
        for value in node:
            yield from _find(value, key)


def _parameters(args: ScoreArgs, model: ModelInfo) -> dict:
    return {"model": model.path, "model_sha256": model.sha256, "threshold": model.threshold,
            "threshold_source": model.threshold_source, "inputs": list(args.inputs), "images": args.images,
            "tta": args.tta, "batch_size": args.batch_size, "part_rows": args.part_rows}  # fmt: skip


def _fingerprint(args: ScoreArgs, model: ModelInfo, source: dict) -> dict:
    """What a part's values depend on; a part made with another is never silently mixed in."""
    return {"model_sha256": model.sha256, "threshold": model.threshold, "tta": args.tta,
            "source": json.loads(json.dumps(source, default=str))}  # fmt: skip


def _existing_parts(scores: Path, fingerprint: dict, restart: bool) -> set[str]:
    """Keys (paths under ``scores``) of the complete parts already written with ``fingerprint``;
    other scores are refused (or removed with ``restart``)."""
    if restart and scores.exists():
        shutil.rmtree(scores)
    done = set()
    for path in score_files(scores):
        try:
            meta = json.loads((pq.read_schema(path).metadata or {})[METADATA_KEY])
        except (KeyError, ValueError, OSError, pa.ArrowException):
            raise ScoreError(f"{path} is not agnsurvey's score file (damaged?); pass --restart to score anew") from None
        changed = [k for k in fingerprint if meta.get(k) != fingerprint[k]]
        if changed:
            what = {"model_sha256": "another model", "threshold": f"threshold {meta.get('threshold')}",
                    "tta": f"tta={meta.get('tta')}", "source": "another catalog or cutout settings"}  # fmt: skip
            raise ScoreError(
                f"{scores} holds scores made with {', '.join(what[k] for k in changed)}; pass --restart to discard "
                "them and score anew, or score into another --workspace"
            )
        if meta.get("complete"):
            done.add(str(path.relative_to(scores)))
    return done


def _part(args: ScoreArgs, model: ModelInfo, fingerprint: dict, key: str, rows: pd.DataFrame,
          cube: str = "") -> Part:  # fmt: skip
    out = args.workspace.scores / key
    batch = args.batch_size or default_batch_size()
    return Part(key, rows.reset_index(drop=True), str(out), model, batch, args.tta, fingerprint, cube)


# ---------------------------------------------------------------- images from local files


def _image_catalog(args: ScoreArgs) -> tuple[dict, pd.DataFrame]:
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


# ---------------------------------------------------------------- images from a cube


def scoring_workspace(args: ScoreArgs) -> Workspace:
    """Where the scored catalog and its cube live: ``WS/scoring/`` for a catalog given to score,
    the workspace itself when its own catalog is scored."""
    return Workspace(args.workspace.root / SCORING_DIR) if args.inputs else args.workspace


def _prepare_source(args: ScoreArgs, client: Client | None, report: Report) -> Workspace:
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
    from pipeline.catalog import file_stats
    from pipeline.ingest import parameters as ingest_parameters

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
    from pipeline.ingest import ingest

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


def _cube_catalog(ws: Workspace) -> pd.DataFrame:
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


CUBE_SETTINGS = ("layer", "size", "radius_scale", "pixscale_bounds")


def _cube_settings(args: ScoreArgs, source_ws: Workspace, model: ModelInfo) -> dict:
    """The cutout settings of the cube scored: the existing cube's (which must match ``args.fetch``
    where given), else ``args.fetch``'s; its image size must be the model's input size."""
    f = args.fetch
    asked = None if f is None else {"image_size": f.image_size, **{k: getattr(f, k) for k in CUBE_SETTINGS}}
    if asked is not None:
        asked["pixscale_bounds"] = list(asked["pixscale_bounds"])
    have = _cube_have(source_ws)
    settings = (asked if args.restart and args.inputs and asked else have or asked) or {}
    if have and asked and have != asked and not (args.restart and args.inputs):
        diff = ", ".join(f"{k} {have[k]!r} -> {asked[k]!r}" for k in have if have[k] != asked[k])
        fix = "pass --restart to fetch them anew" if args.inputs else "score with the cube's settings"
        raise ScoreError(f"{source_ws.cube} holds cutouts made with other settings ({diff}); {fix}")
    if settings and settings["image_size"] != model.image_size:
        raise ScoreError(
            f"the cutouts are {settings['image_size']} pixels, the model takes {model.image_size}; fetch with "
            f"--image-size {model.image_size} (a new cube: --restart, or another --workspace), or use a model "
            "trained on these cutouts"
        )
    return asked if have and asked and have != asked else settings


def _cube_have(source_ws: Workspace) -> dict | None:
    """The existing cube's cutout settings (None without a cube)."""
    if not source_ws.cube.exists():
        return None
    cube = open_cube(source_ws.cube, mode="r")
    return {"image_size": cube.layout.image_size, **{k: cube.attrs.get(k) for k in CUBE_SETTINGS}}


def _score_cube(args: ScoreArgs, source_ws: Workspace, frame: pd.DataFrame, model: ModelInfo, fingerprint: dict,
                existing: set[int], client: Client | None, report: Report,
                ) -> tuple[list[PartResult], Manifest | None]:  # fmt: skip
    """Fetch what the cube lacks and score shard by shard, each shard as soon as it is written."""
    have = _cube_have(source_ws)
    refetch = bool(args.restart and args.inputs and have and fingerprint["source"]["cube"] != have)
    cube = open_cube(source_ws.cube, mode="r") if source_ws.cube.exists() and not refetch else None
    need_fetch = cube is None or bool((status_rank(cube.status_codes()) < 2).any())
    if need_fetch and (args.fetch is None or not args.fetch.cutout_url):
        missing = "has no cube" if cube is None else "lacks some cutouts"
        raise ScoreError(f"{source_ws.root} {missing}: give --cutout-url (the Legacy Surveys viewer's cutout.jpg, or "
                         "an offline sky server's), or score local files with --images COLUMN")  # fmt: skip
    submitted: dict[str, Any] = {}
    results: list[PartResult] = []
    shard_images = args.fetch.shard_images if cube is None else cube.layout.shard_images
    parts = cube_parts(frame, partition_files(source_ws.catalog), shard_images)
    if any(key not in existing for shard_parts in parts.values() for key, _, _ in shard_parts):
        clear_metadata(args.workspace.scores)  # rewritten when every part is written

    def submit(shard: int) -> None:
        for key, begin, end in parts.get(shard, []):
            if key in existing or key in submitted:
                continue
            part = _part(args, model, fingerprint, key, frame.iloc[begin:end], cube=str(source_ws.cube))
            submitted[key] = client.submit(score_part, part, pure=False) if client is not None else part

    n_shards = -(-len(frame) // shard_images)
    if cube is not None:  # shards already final are scored while the rest is fetched
        rank = status_rank(cube.status_codes())
        for shard in range(n_shards):
            if (rank[shard * shard_images : (shard + 1) * shard_images] == 2).all():
                submit(shard)
    fetched = None
    try:
        if need_fetch:
            fetch_args = dataclasses.replace(args.fetch, workspace=source_ws, rows="all", restart=refetch)
            from pipeline.fetch import fetch

            threads = sum(client.nthreads().values()) if client is not None else 1
            fetched = fetch(fetch_args, client=client, on_shard=submit if client is not None else None,
                            max_tasks=max(1, threads - 1))  # a worker thread stays free for scoring  # fmt: skip
            report("fetch", fetched)
        for shard in range(n_shards):
            submit(shard)
        results = list(_gather(submitted, client))
    except BaseException:
        if client is not None:
            client.cancel([f for f in submitted.values() if not isinstance(f, Part)])
        raise
    return results, fetched


def _gather(submitted: dict[str, Any], client: Client | None) -> Iterator[PartResult]:
    """Results as parts finish (futures on the cluster, or parts scored here), with a progress line."""
    show = progress_enabled()
    total, done, images, started = len(submitted), 0, 0, time.monotonic()
    if client is None:
        work: Iterator[PartResult] = map(score_part, submitted.values())
    else:
        work = (future.result() for future in as_completed(list(submitted.values())))
    try:
        for result in work:
            done, images = done + 1, images + result.images
            if show:
                rate = images / max(time.monotonic() - started, 1e-9)
                print(f"\rscore {done:,}/{total:,} parts  {images:,} images  {rate:,.0f} img/s", end="",
                      file=sys.stderr, flush=True)  # fmt: skip
            yield result
    except BaseException:  # Ctrl-C or a failed part: no task is left writing parts
        if client is not None:
            client.cancel(list(submitted.values()))
        raise
    finally:
        if show and total:
            print(file=sys.stderr)


# ---------------------------------------------------------------- the manifest


def _finish(manifest: Manifest, args: ScoreArgs, model: ModelInfo, frame: pd.DataFrame, results: list[PartResult],
            existing: set[str], fetched: Manifest | None, seconds: float, fingerprint: dict) -> Manifest:  # fmt: skip
    ws = args.workspace
    _existing_parts(ws.scores, fingerprint, restart=False)  # no part of another model, threshold or catalog
    files = score_files(ws.scores)
    written = pd.concat([pd.read_parquet(p, columns=["status", "label"]) for p in files]) if files else None
    status = written["status"] if written is not None else pd.Series([], dtype=str)
    if len(status) != len(frame):
        raise ScoreError(f"{ws.scores} holds {len(status):,} rows for a catalog of {len(frame):,}; pass --restart")
    if not args.images:
        for stale in (ws.scores / DATASET).rglob(".*.tmp*"):  # a killed worker's half-written part
            stale.unlink(missing_ok=True)
        finish_catalog(ws.scores, "scores", describe_files(ws.scores), directories=True)
    counts = {s: int((status == s).sum()) for s in STATUSES if (status == s).any()}
    images = sum(r.images for r in results)
    manifest.inputs = [{"rows": len(frame), "source": "images" if args.images else str(scoring_workspace(args).root)}]
    manifest.rows_in = len(frame)
    manifest.rows_out = counts.get("ok", 0)
    manifest.extra = {
        "status": counts,
        "model": {"name": model.name, "path": model.path, "sha256": model.sha256, "image_size": model.image_size},
        "threshold": model.threshold,
        "threshold_source": model.threshold_source,
        "scoring": {
            "parts_scored": len(results),
            "parts_skipped": len(existing),
            "images": images,
            "images_per_second": round(images / seconds, 1) if seconds > 0 else None,
        },  # fmt: skip
        "labels": {"agn": int((written["label"] == 1).sum()), "sf": int((written["label"] == 0).sum())}
        if written is not None
        else {},  # fmt: skip
    }
    problems = [p for r in results for p in r.problems]
    if problems:
        manifest.extra["bad_images"] = problems[:20]
        manifest.warnings.append(f"{counts.get('bad_image', 0):,} images could not be read, e.g. {problems[0]}")
    manifest.outputs = {"scores": str(ws.scores), "parts": len(files),
                        "format": "Parquet parts" if args.images else "HATS (lsdb.open_catalog)"}  # fmt: skip
    left = counts.get("failed", 0) + counts.get("pending", 0)
    if left:
        why = fetched.unfinished if fetched is not None and fetched.unfinished else "their cutouts are missing"
        manifest.unfinished = f"{left:,} rows have no score yet ({why}); re-run the same command to score them"
    manifest.finish()
    ws.write_manifest("score", manifest.to_dict())
    return manifest
