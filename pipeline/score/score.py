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

A task scores one part with the model loaded once per worker process
(:func:`pipeline.score.model.loaded_model`) and writes its file in one atomic rename, so a killed
worker's task is simply run again elsewhere: no row is lost or written twice. A part whose rows
all have a final status is complete and skipped by a re-run; one with ``failed`` or ``pending``
rows is scored again.

Columns: ``objid`` (and ``source_id`` for text ids), ``ra``, ``dec`` (degrees), ``p_agn``,
``label`` (1 AGN where p_agn >= threshold), ``status`` (ok, no_coverage, bad_radius, failed,
pending, bad_image) and, from a cube, ``_healpix_29``; ``p_agn`` and ``label`` are null unless
``status`` is ok. Each file's Parquet metadata (key ``agnsurvey``) names the model, its SHA-256
and the threshold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Iterator
from typing import Any

import pandas as pd
from distributed import Client, as_completed

from cluster.client import progress_enabled
from pipeline.errors import ScoreError, WorkspaceError
from pipeline.score.args import ScoreArgs
from pipeline.score.model import ModelInfo, model_file, resolve_model
from pipeline.score.parts import (
    PART_NAME,
    STATUSES,
    Part,
    PartResult,
    existing_parts,
    make_fingerprint,
    make_part,
    score_part,
)
from pipeline.score.sources import (
    cube_catalog,
    cube_have,
    cube_parts,
    image_catalog,
    prepare_source,
    scoring_cube_settings,
    scoring_workspace,
)
from pipeline.stage import Report, RunContext, Step, locked, writing
from storage.cube import open_cube, status_rank
from storage.hats_catalog import (
    DATASET,
    clear_metadata,
    describe_files,
    finish_catalog,
    partition_files,
)
from storage.manifest import Manifest
from storage.tables import score_files
from storage.workspace import Workspace


def score(args: ScoreArgs, client: Client | None = None, report: Report | None = None) -> Manifest:
    """Score ``args.inputs`` (or the workspace's catalog) into ``WS/scores/``; returns the manifest.

    Rows without a final status (cutouts failed or not fetched) are named in ``manifest.unfinished``:
    a re-run fetches and scores them. ``report(stage, manifest)`` is called for the ingest and fetch
    that scoring ran for itself.
    """
    ws = args.workspace
    with (
        writing(ws, "scores", "score", kept=f"{ws.scores} keeps every part that was written (whole files)"),
        _reading_model(args),
    ):
        return _score(args, client, report or (lambda stage, manifest: None))


def _reading_model(args: ScoreArgs) -> Any:
    """A reader's lock on the model's directory when it is one ``train`` wrote (``WS2/models/NAME``):
    no training replaces the model or its threshold while they are read and used."""
    directory = model_file(args).parent
    if directory.parent.name != "models":  # a model file kept elsewhere: nobody writes it through us
        return contextlib.nullcontext()
    return locked(Workspace(directory.parent.parent), f"models/{directory.name}", shared=True)


def _score(args: ScoreArgs, client: Client | None, report: Report) -> Manifest:
    ws = args.workspace
    model = resolve_model(args)
    manifest = Manifest(stage="score", parameters=_parameters(args, model))
    started = time.monotonic()
    if args.images:
        if model.pixels != "rgb":
            raise ScoreError(
                f"{model.path} was trained on flux pixels in bands {model.bands}; local image files (--images) are "
                "RGB: score a catalog instead (its cutouts fetched with --pixels flux), or use an rgb model"
            )
        source, frame = image_catalog(args)
        fingerprint = make_fingerprint(args, model, source)
        existing = existing_parts(ws.scores, fingerprint, args.restart)
        parts = [make_part(args, model, fingerprint, PART_NAME.format(k), frame.iloc[a : a + args.part_rows])
                 for k, a in enumerate(range(0, len(frame), args.part_rows))]  # fmt: skip
        todo = {p.key: p for p in parts if p.key not in existing}
        if client is not None:
            todo = {k: client.submit(score_part, p, pure=False) for k, p in todo.items()}
        results, fetched = list(_gather(todo, client)), None
    else:
        source_ws = prepare_source(args, client, report)
        with locked(source_ws, "catalog", shared=True):  # no ingest replaces the catalog while it is scored
            frame = cube_catalog(source_ws)
            settings = scoring_cube_settings(args, source_ws, model)
            ingested = source_ws.read_manifest("ingest") or {}
            source = {"catalog": ingested.get("inputs"), "cube": settings,
                      "partitions": ingested.get("outputs", {}).get("partitioning")}  # fmt: skip
            fingerprint = make_fingerprint(args, model, source)
            existing = existing_parts(ws.scores, fingerprint, args.restart)
            results, fetched = _score_cube(args, source_ws, frame, model, fingerprint, existing, client, report)
    seconds = time.monotonic() - started
    return _finish(manifest, args, model, frame, results, existing, fetched, seconds, fingerprint)


def _parameters(args: ScoreArgs, model: ModelInfo) -> dict:
    return {"model": model.path, "model_sha256": model.sha256, "threshold": model.threshold,
            "threshold_source": model.threshold_source, "inputs": list(args.inputs), "images": args.images,
            "tta": args.tta, "batch_size": args.batch_size, "part_rows": args.part_rows}  # fmt: skip


def _score_cube(args: ScoreArgs, source_ws: Workspace, frame: pd.DataFrame, model: ModelInfo, fingerprint: dict,
                existing: set[int], client: Client | None, report: Report,
                ) -> tuple[list[PartResult], Manifest | None]:  # fmt: skip
    """Fetch what the cube lacks and score shard by shard, each shard as soon as it is written: as
    the cube's writer when some cutouts are missing, else as one of its readers."""
    peek, _, writer = _cube_to_read(args, source_ws, fingerprint)
    if writer and (args.fetch is None or not (args.fetch.cutout_url or args.fetch.bricks)):
        missing = "has no cube" if peek is None else "lacks some cutouts"
        raise ScoreError(f"{source_ws.root} {missing}: give --cutout-url (the Legacy Surveys viewer's cutout.jpg, or "
                         "an offline sky server's), or score local files with --images COLUMN")  # fmt: skip
    with locked(source_ws, "cube", shared=not writer):
        cube, refetch, need_fetch = _cube_to_read(args, source_ws, fingerprint)
        if need_fetch and not writer:
            raise WorkspaceError(f"{source_ws.cube} changed as score began (another run fetched into it); re-run "
                                 "the same command")  # fmt: skip
        return _score_shards(args, source_ws, frame, model, fingerprint, existing, client, report, cube, refetch,
                             need_fetch)  # fmt: skip


def _cube_to_read(args: ScoreArgs, source_ws: Workspace, fingerprint: dict) -> tuple[Any, bool, bool]:
    """(the cube to score, or None; whether it is fetched anew; whether some cutouts must be fetched)."""
    have = cube_have(source_ws)
    refetch = bool(args.restart and args.inputs and have and fingerprint["source"]["cube"] != have)
    cube = open_cube(source_ws.cube, mode="r") if source_ws.cube.exists() and not refetch else None
    return cube, refetch, cube is None or bool((status_rank(cube.status_codes()) < 2).any())


def _score_shards(args: ScoreArgs, source_ws: Workspace, frame: pd.DataFrame, model: ModelInfo, fingerprint: dict,
                  existing: set[int], client: Client | None, report: Report, cube: Any, refetch: bool,
                  need_fetch: bool) -> tuple[list[PartResult], Manifest | None]:  # fmt: skip
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
            part = make_part(args, model, fingerprint, key, frame.iloc[begin:end], cube=str(source_ws.cube))
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
            from pipeline.images.fetch import fetch_holding_lock

            threads = sum(client.nthreads().values()) if client is not None else 1  # one stays free for scoring
            fetched = fetch_holding_lock(fetch_args, client=client, on_shard=submit if client is not None else None,
                                         max_tasks=max(1, threads - 1))  # fmt: skip
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


def _finish(manifest: Manifest, args: ScoreArgs, model: ModelInfo, frame: pd.DataFrame, results: list[PartResult],
            existing: set[str], fetched: Manifest | None, seconds: float, fingerprint: dict) -> Manifest:  # fmt: skip
    ws = args.workspace
    existing_parts(ws.scores, fingerprint, restart=False)  # no part of another model, threshold or catalog
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
    elif len(frame) and not counts.get("ok") and counts.get("bad_image"):
        example = problems[0] if problems else "?"
        manifest.unfinished = (f"no row was scored: all {counts['bad_image']:,} images could not be read (e.g. "
                               f"{example}); fix the files, then re-run with --restart")  # fmt: skip
    manifest.finish()
    ws.write_manifest("score", manifest.to_dict())
    return manifest


# --- as a stage of `agnsurvey run` ------------------------------------------------------------------

SPEED = ("workspace", "fetch", "restart", "batch_size")  # how fast scores are made: no score depends on these


def _score_for_run(args: ScoreArgs, run: RunContext, before: dict, fingerprint: str, tokens: list) -> Manifest:
    """Score with the run's cutout service; earlier scores of another model, threshold or data are
    replaced (the config changed)."""
    fetch = None if args.fetch is None else dataclasses.replace(args.fetch, cutout_url=run.cutout_url())
    changed = bool(before) and before.get("fingerprint") != fingerprint
    return score(dataclasses.replace(args, fetch=fetch, restart=changed), client=run.client, report=run.report)


def _result(manifest: dict) -> str:
    labels = manifest.get("extra", {}).get("labels") or {}
    return f"{labels.get('agn', 0):,} AGN, {labels.get('sf', 0):,} SF" if labels else ""


STEP = Step(
    "score",
    settings=lambda args, run: (
        {k: v for k, v in dataclasses.asdict(args).items() if k not in SPEED},
        [run.upstream, run.recorded.get("fetch", {}).get("started_at")],
    ),
    complete=lambda args, run, made: args.workspace.scores.exists() and not made.get("unfinished"),
    execute=_score_for_run,
    result=_result,
    images=True,
)
