"""The whole pipeline from one config: ``run_pipeline(RunArgs)`` runs sky → ingest → label → fetch →
train → evaluate → score, skipping every stage whose outputs are complete for the same inputs and
settings, and returns what each stage did (the CLI's ``run`` and ``demo`` only parse and call it).

When a stage is current: ``WS/manifests/run.json`` records, per stage, a fingerprint of its
settings and of what it read (the previous stage's run, by the time its manifest was started, or
for ``train`` the content of its training data), and the start time of the manifest it wrote. A
stage is skipped when both match and its output is complete; a stage that ran gives every stage
after it a new fingerprint, so a changed setting reruns exactly the stages downstream of it.
Politeness settings (rate, concurrency, retries) and the offline server's port change nothing.

The guard: a run rebuilds a workspace's catalog, labels and cube together, so it must not run on a
workspace built from other inputs (the cube's rows are the catalog's galaxies, its pixels depend on
the cutout settings). Labelling may change: it never invalidates a cutout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.catalog import ingest, label
from pipeline.catalog.args import IngestArgs, LabelArgs
from pipeline.catalog.sources import file_stats
from pipeline.config import OFFLINE_URL, RunArgs
from pipeline.errors import WorkspaceError
from pipeline.images import fetch
from pipeline.images.args import FetchArgs
from pipeline.learn import evaluate, train
from pipeline.score import score
from pipeline.stage import Report, Step, writing
from pipeline.synthetic import catalog as sky
from pipeline.synthetic.args import SkyArgs
from storage.manifest import Manifest, read_manifest
from storage.workspace import Workspace

STEPS: dict[str, Step] = {step.name: step for step in (sky.STEP, ingest.STEP, label.STEP, fetch.STEP, train.STEP,
                                                      evaluate.STEP, score.STEP)}  # fmt: skip

Inputs = dict[str, dict[str, Any]]


def run_inputs(sky_args: SkyArgs | None, ingest_args: IngestArgs, label_args: LabelArgs,
               fetch_args: FetchArgs) -> Inputs:  # fmt: skip
    """What a run's outputs depend on, one table per part: the source (offline sky or catalog
    files), and the ingest, label and cube settings (not politeness or the service's address)."""
    source = {"n": sky_args.n, "seed": sky_args.seed} if sky_args else file_stats(ingest_args.inputs)
    return {
        "source": source,
        "ingest": ingest.order_settings(ingest_args),
        "label": label.parameters(label_args),
        "cube": fetch.cube_definition(fetch_args),
    }


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
    ws.write_manifest("run", {**(ws.read_manifest("run") or {}), "inputs": inputs})


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
    ingested, labelled = ws.read_manifest("ingest"), ws.read_manifest("label")
    if ingested is None or labelled is None:
        return None
    paths = [os.path.abspath(i["path"]) for i in ingested["inputs"]]
    made = ws.root / "sky" / sky.SKY_MANIFEST
    sky_manifest = read_manifest(made) if made.exists() else None
    if sky_manifest is not None and paths == [str(ws.root / "sky" / sky.SKY_FITS)]:
        source = {"n": sky_manifest["parameters"]["n"], "seed": sky_manifest["parameters"]["seed"]}
    else:
        source = {"catalog": paths}
    return {"source": source, "label": labelled["parameters"]}


# --------------------------------------------------------------------------------------------------
# The pipeline


@dataclass
class StageRun:
    """What one stage of a run did: ran it (``manifest``) or found it current (``why`` says so);
    ``result``, ``images`` and ``rows``: what its manifest says, for the run's table (a phrase, the
    images it holds, its rows out)."""

    name: str
    ran: bool
    manifest: Manifest | None
    seconds: float
    why: str = ""
    result: str = ""
    images: int | None = None
    rows: int | None = None


def run_pipeline(args: RunArgs, client: Any = None, report: Report | None = None) -> list[StageRun]:
    """Run ``args.stages`` in order on ``client`` (None: in this process), skipping current ones;
    ``report(stage, manifest)`` is called as each stage finishes (the CLI prints a summary)."""
    ws = args.workspace
    kept = "every stage that finished is complete; the one that was running kept its previous output"
    with writing(ws, "run", "run", kept=kept), ExitStack() as stack:
        check_run_inputs(ws, run_inputs(args.sky, args.ingest, args.label, args.fetch), restart=args.restart)
        pipeline = _Pipeline(args, client, report or (lambda stage, manifest: None), stack)
        runs = [pipeline.stage(name) for name in args.stages]
        return [pipeline.described(run) for run in runs]


class _Pipeline:
    """The state of one run (the :class:`~pipeline.stage.RunContext` its stages see): the chain of
    fingerprints, what run.json recorded, the offline server (started when a stage needs it)."""

    def __init__(self, args: RunArgs, client: Any, report: Report, stack: ExitStack):
        self.args, self.client, self.report, self.stack = args, client, report, stack
        self.workspace = args.workspace
        self.recorded: dict[str, dict] = (self.workspace.read_manifest("run") or {}).get("stages", {})
        self.upstream = ""  # the token of the stage before: its fingerprint and when its output was made
        self.server_url = ""

    def stage(self, name: str) -> StageRun:
        """Ask the stage's step whether its output is current for these settings; run it if not."""
        step, stage_args = STEPS[name], getattr(self.args, name)
        settings, tokens = step.settings(stage_args, self)
        fingerprint = _digest({"settings": settings, "upstream": tokens})
        before = self.recorded.get(name, {})
        made = self.workspace.read_manifest(step.manifest_name(stage_args)) or {}
        current = (before.get("fingerprint") == fingerprint and before.get("started_at") == made.get("started_at")
                   and step.complete(stage_args, self, made))  # fmt: skip
        if current:
            self.upstream = _digest([fingerprint, before.get("started_at")])
            return StageRun(name, False, None, 0.0, "current: same inputs and settings, outputs complete")
        started = time.monotonic()
        if before.get("attempt") == fingerprint:  # an earlier attempt of these settings was cut short: continue it
            before = {}
        else:
            self._record(name, {**before, "attempt": fingerprint})
        manifest = step.execute(stage_args, self, before, fingerprint, tokens)
        self.report(step.title or name, manifest)
        seconds = time.monotonic() - started
        if not manifest.unfinished:
            self._record(name, {"fingerprint": fingerprint, "started_at": manifest.started_at,
                                "settings": settings, "upstream": tokens})  # fmt: skip
        self.upstream = _digest([fingerprint, manifest.started_at])
        return StageRun(name, True, manifest, seconds)

    def described(self, run: StageRun) -> StageRun:
        """``run`` with what its manifest says for the run's table (read once every stage is done: a
        later stage may have rewritten an earlier one's manifest)."""
        step, stage_args = STEPS[run.name], getattr(self.args, run.name)
        made = (run.manifest.to_dict() if run.manifest is not None
                else self.workspace.read_manifest(step.manifest_name(stage_args)) or {})  # fmt: skip
        return dataclasses.replace(run, **dict(zip(("result", "images", "rows"), step.describe(made), strict=True)))

    def _record(self, name: str, entry: dict) -> None:
        self.recorded[name] = json.loads(json.dumps(entry, default=str))
        run = self.workspace.read_manifest("run") or {}
        self.workspace.write_manifest("run", {**run, "stages": self.recorded})

    def cutout_url(self) -> str:
        """The run's cutout service: the configured one, or an offline sky server for its catalog."""
        if self.args.fetch.cutout_url != OFFLINE_URL:
            return self.args.fetch.cutout_url
        if not self.server_url:
            from pipeline.synthetic.server import serve_in_background
            from pipeline.synthetic.server_config import build_server_config

            inputs = self.args.ingest.inputs
            config = build_server_config(self.args.serve, catalog=tuple(inputs))
            server = self.stack.enter_context(serve_in_background(config))
            print(f"\noffline cutout server for {', '.join(Path(p).name for p in inputs)}: {server.url}")
            self.server_url = server.url
        return self.server_url


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]
