"""The main job's guard: `agnsurvey run` rebuilds a workspace's catalog, labels and cube together, so
it must not run on a workspace built from other inputs (the cube's rows are the catalog's galaxies,
its pixels depend on the cutout settings). Labelling may change: it never invalidates a cutout."""

from __future__ import annotations

import os
import shutil
import uuid
from typing import Any

from pipeline.catalog import expand_inputs
from pipeline.config import FetchArgs, IngestArgs, LabelArgs, SkyArgs
from pipeline.errors import WorkspaceError
from pipeline.label import parameters as label_parameters
from pipeline.stage import writing
from pipeline.synthetic.catalog import SKY_FITS, SKY_MANIFEST
from storage.manifest import read_manifest
from storage.workspace import Workspace

Inputs = dict[str, dict[str, Any]]


def run_inputs(sky: SkyArgs | None, ingest: IngestArgs, label: LabelArgs, fetch: FetchArgs) -> Inputs:
    """What a run's outputs depend on, one table per part: the source (offline sky or catalog
    files), and the ingest, label and cube settings (not politeness or the service's address)."""
    source = {"n": sky.n, "seed": sky.seed} if sky else _files(ingest.inputs)
    return {
        "source": source,
        "ingest": {k: getattr(ingest, k) for k in ("columns", "radius_column", "format", "hdu", "id_kind")},
        "label": label_parameters(label),
        "cube": {k: getattr(fetch, k) for k in ("layer", "size", "image_size", "radius_scale", "shard_images",
                                               "inner_images")} | {"pixscale_bounds": list(fetch.pixscale_bounds)},
    }  # fmt: skip


def _files(paths: tuple[str, ...]) -> dict[str, list]:
    """Catalog files by absolute path, size and modification time: a file replaced in place differs."""
    found = [os.path.abspath(p) for p in expand_inputs(paths)]
    stats = [os.stat(p) for p in found]
    return {"catalog": found, "bytes": [st.st_size for st in stats], "mtime_ns": [st.st_mtime_ns for st in stats]}


def check_run_inputs(ws: Workspace, inputs: Inputs, restart: bool) -> None:
    """Refuse to run on a workspace built from other inputs (that would leave its catalog, labels and
    cube mismatched), unless ``restart``: then its cube is discarded first. Records ``inputs``.

    ``inputs`` holds what the run's outputs depend on, one table per part: ``source`` (the offline
    sky's n and seed, or the catalog files), ``ingest``, ``label`` and ``cube`` settings. A workspace
    made before runs recorded theirs is compared on what its manifests tell (source and labelling).
    """
    before = (ws.read_manifest("run") or {}).get("inputs") or _inputs_from_manifests(ws)
    built = any(p.exists() for p in (ws.catalog, ws.labels, ws.cube))
    if built and not restart:
        changed = _differences(before, inputs) if before is not None else ["made by the stage commands"]
        if changed:
            raise WorkspaceError(
                f"{ws.root} was built from other inputs ({'; '.join(changed)}): this run would leave its catalog, "
                "labels and cube mismatched. Run with the workspace's settings, use another --workspace, or pass "
                "--restart to rebuild it (its cutouts are then fetched again)"
            )
    if restart:
        with writing(ws, "cube", "run"):
            for stale in ws.root.glob(".cube.zarr.discarded-*"):
                shutil.rmtree(stale, ignore_errors=True)
            if ws.cube.exists():
                trash = ws.root / f".cube.zarr.discarded-{uuid.uuid4().hex[:8]}"
                os.replace(ws.cube, trash)  # one rename: the cube is whole or gone, never half deleted
                (ws.root / "cube_failures.parquet").unlink(missing_ok=True)
                shutil.rmtree(trash, ignore_errors=True)
    ws.write_manifest("run", {"inputs": inputs})


def _differences(before: Inputs, now: Inputs) -> list[str]:
    """'part.key was -> now' for every setting recorded in ``before`` that ``now`` changes."""
    out = []
    for part, settings in before.items():
        if part == "label":  # relabelling keeps the catalog and the cube valid
            continue
        for key in sorted(settings):
            old, new = settings.get(key), now.get(part, {}).get(key)
            if old != new:
                out.append(f"{part}.{key} {old!r} -> {new!r}")
    return out


def _inputs_from_manifests(ws: Workspace) -> Inputs | None:
    """Source and labelling of a workspace built before `run` recorded its inputs, from its manifests."""
    ingest, label = ws.read_manifest("ingest"), ws.read_manifest("label")
    if ingest is None or label is None:
        return None
    paths = [os.path.abspath(i["path"]) for i in ingest["inputs"]]
    sky = read_manifest(ws.root / "sky" / SKY_MANIFEST) if (ws.root / "sky" / SKY_MANIFEST).exists() else None
    if sky is not None and paths == [str(ws.root / "sky" / SKY_FITS)]:
        source = {"n": sky["parameters"]["n"], "seed": sky["parameters"]["seed"]}
    else:
        source = {"catalog": paths}
    return {"source": source, "label": label["parameters"]}
