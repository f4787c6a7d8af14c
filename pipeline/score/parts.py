"""A scoring part: the rows one task scores and writes in one atomic file, and the parts already written."""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import ScoreError
from pipeline.score.args import ScoreArgs
from pipeline.score.model import ModelInfo, default_batch_size, loaded_model
from storage.cube import FINAL_STATUSES, STATUS_NAMES, open_cube
from storage.fence import Fence
from storage.manifest import atomic_file
from storage.tables import score_files

PART_NAME = "part-{:05d}.parquet"
METADATA_KEY = b"agnsurvey"
STATUSES = ("ok", "no_coverage", "bad_radius", "failed", "pending", "bad_image")
FINAL = {*FINAL_STATUSES, "bad_image"}  # a part of only these is complete (bad_image: no cutout to retry)


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
    fence: Fence  # the part is written only while the score run still holds the scores' lock
    cube: str = ""


@dataclass
class PartResult:
    key: str
    statuses: dict[str, int]
    images: int
    seconds: float
    complete: bool
    problems: list[str] = field(default_factory=list)  # bad images, with why (a few)


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
        from pipeline.learn.inference import predict_images

        model, lock = loaded_model(part.model)
        with lock:
            p_agn[usable] = predict_images(model, images, part.batch_size, part.tta)
    _write_part(Path(part.out), rows, p_agn, status, part)
    counts = Counter(status.tolist())
    return PartResult(part.key, dict(counts), int(usable.size), time.monotonic() - start,
                      complete=set(counts) <= FINAL, problems=problems[:5])  # fmt: skip


def _read_images(paths: list[str], size: int) -> tuple[np.ndarray, list[str], list[str]]:
    """uint8 (n, size, size, 3) images from files; status ``bad_image`` (with why) where unreadable."""
    from pipeline.images.decode import open_rgb, resize

    images = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    status, problems = ["ok"] * len(paths), []
    for i, path in enumerate(paths):
        try:
            rgb = open_rgb(path)
        except (OSError, ValueError) as exc:
            status[i] = "bad_image"
            problems.append(f"{path}: {exc}")
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
    with part.fence.hold(), atomic_file(path) as tmp:
        pq.write_table(table, tmp)


def make_fingerprint(args: ScoreArgs, model: ModelInfo, source: dict) -> dict:
    """What a part's values depend on; a part made with another is never silently mixed in."""
    return {"model_sha256": model.sha256, "threshold": model.threshold, "tta": args.tta,
            "source": json.loads(json.dumps(source, default=str))}  # fmt: skip


def existing_parts(scores: Path, fingerprint: dict, restart: bool) -> set[str]:
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


def make_part(args: ScoreArgs, model: ModelInfo, fingerprint: dict, key: str, rows: pd.DataFrame,
              cube: str = "") -> Part:  # fmt: skip
    out = args.workspace.scores / key
    batch = args.batch_size or default_batch_size()
    fence = args.workspace.fence("scores")
    return Part(key, rows.reset_index(drop=True), str(out), model, batch, args.tta, fingerprint, fence, cube)
