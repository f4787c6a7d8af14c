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

from pipeline.catalog.args import IngestArgs, LabelArgs
from pipeline.catalog.label import parameters as label_parameters
from pipeline.catalog.sources import file_stats
from pipeline.config import OFFLINE_URL, RunArgs
from pipeline.errors import WorkspaceError
from pipeline.images.args import FetchArgs
from pipeline.stage import Report, writing
from pipeline.synthetic.args import SkyArgs
from pipeline.synthetic.catalog import SKY_FITS, SKY_MANIFEST
from storage.hats_catalog import is_hats
from storage.manifest import Manifest, file_checksum, read_manifest
from storage.workspace import Workspace

Inputs = dict[str, dict[str, Any]]


def run_inputs(sky: SkyArgs | None, ingest: IngestArgs, label: LabelArgs, fetch: FetchArgs) -> Inputs:
    """What a run's outputs depend on, one table per part: the source (offline sky or catalog
    files), and the ingest, label and cube settings (not politeness or the service's address)."""
    source = {"n": sky.n, "seed": sky.seed} if sky else file_stats(ingest.inputs)
    return {
        "source": source,
        "ingest": {k: getattr(ingest, k) for k in ("columns", "radius_column", "format", "hdu", "id_kind")},
        "label": label_parameters(label),
        "cube": {k: getattr(fetch, k) for k in ("layer", "size", "image_size", "radius_scale", "shard_images",
                                               "inner_images")} | {"pixscale_bounds": list(fetch.pixscale_bounds)},
    }  # fmt: skip


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


# --------------------------------------------------------------------------------------------------
# The pipeline


@dataclass
class StageRun:
    """What one stage of a run did: ran it (``manifest``) or found it current (``why`` says so)."""

    name: str
    ran: bool
    manifest: Manifest | None
    seconds: float
    why: str = ""


POLITENESS = ("cutout_url", "concurrency", "rate", "retries", "timeout_s", "deadline_s", "give_up_window",
              "give_up_fraction", "restart")  # fmt: skip


def run_pipeline(args: RunArgs, client: Any = None, report: Report | None = None) -> list[StageRun]:
    """Run ``args.stages`` in order on ``client`` (None: in this process), skipping current ones;
    ``report(stage, manifest)`` is called as each stage finishes (the CLI prints a summary)."""
    ws = args.workspace
    report = report or (lambda stage, manifest: None)
    kept = "every stage that finished is complete; the one that was running kept its previous output"
    with writing(ws, "run", "run", kept=kept), ExitStack() as stack:
        check_run_inputs(ws, run_inputs(args.sky, args.ingest, args.label, args.fetch), restart=args.restart)
        pipeline = _Pipeline(args, client, report, stack)
        return [pipeline.stage(name) for name in args.stages]


class _Pipeline:
    """The state of one run: the chain of fingerprints, the offline server (started when needed)."""

    def __init__(self, args: RunArgs, client: Any, report: Report, stack: ExitStack):
        self.args, self.client, self.report, self.stack = args, client, report, stack
        self.ws = args.workspace
        self.recorded: dict[str, dict] = (self.ws.read_manifest("run") or {}).get("stages", {})
        self.upstream = ""  # the token of the stage before: its fingerprint and when its output was made
        self.server_url = ""

    def stage(self, name: str) -> StageRun:
        settings, tokens = getattr(self, f"_{name}_settings")()
        fingerprint = _digest({"settings": settings, "upstream": tokens})
        before = self.recorded.get(name, {})
        made = self.ws.read_manifest(manifest_name(self.args, name)) or {}
        current = (before.get("fingerprint") == fingerprint and before.get("started_at") == made.get("started_at")
                   and getattr(self, f"_{name}_complete")(made))  # fmt: skip
        if current:
            self.upstream = _digest([fingerprint, before.get("started_at")])
            return StageRun(name, False, None, 0.0, "current: same inputs and settings, outputs complete")
        started = time.monotonic()
        if before.get("attempt") == fingerprint:  # an earlier attempt of these settings was cut short: continue it
            before = {}
        else:
            self._record(name, {**before, "attempt": fingerprint})
        manifest = getattr(self, f"_{name}")(before, fingerprint, tokens)
        self.report(name if name != "sky" else "sky make", manifest)
        seconds = time.monotonic() - started
        if not manifest.unfinished:
            self._record(name, {"fingerprint": fingerprint, "started_at": manifest.started_at,
                                "settings": settings, "upstream": tokens})  # fmt: skip
        self.upstream = _digest([fingerprint, manifest.started_at])
        return StageRun(name, True, manifest, seconds)

    def _record(self, name: str, entry: dict) -> None:
        self.recorded[name] = json.loads(json.dumps(entry, default=str))
        run = self.ws.read_manifest("run") or {}
        self.ws.write_manifest("run", {**run, "stages": self.recorded})

    # --- what each stage depends on, whether its output is complete, and running it

    def _sky_settings(self) -> tuple[dict, list]:
        return {"n": self.args.sky.n, "seed": self.args.sky.seed}, []

    def _sky_complete(self, made: dict) -> bool:
        return (self.args.sky.out / SKY_FITS).exists()

    def _sky(self, before: dict, fingerprint: str, tokens: list) -> Manifest:
        from pipeline.synthetic.catalog import make_sky

        manifest = make_sky(self.args.sky, client=self.client)
        self.ws.write_manifest("sky", manifest.to_dict())
        return manifest

    def _ingest_settings(self) -> tuple[dict, list]:
        a = self.args.ingest
        return {k: getattr(a, k) for k in ("columns", "radius_column", "format", "hdu", "id_kind")}, [
            file_stats(a.inputs),
            self.upstream,
        ]

    def _ingest_complete(self, made: dict) -> bool:
        return is_hats(self.ws.catalog)  # a catalog from before tables were HATS is ingested again

    def _ingest(self, before: dict, fingerprint: str, tokens: list) -> Manifest:
        from pipeline.catalog.ingest import ingest

        return ingest(self.args.ingest, client=self.client)

    def _label_settings(self) -> tuple[dict, list]:
        return label_parameters(self.args.label), [self.upstream]

    def _label_complete(self, made: dict) -> bool:
        return is_hats(self.ws.labels)

    def _label(self, before: dict, fingerprint: str, tokens: list) -> Manifest:
        from pipeline.catalog.label import label

        return label(self.args.label, client=self.client)

    def _fetch_settings(self) -> tuple[dict, list]:
        f = self.args.fetch
        return {k: v for k, v in dataclasses.asdict(f).items() if k not in POLITENESS + ("workspace",)}, [self.upstream]

    def _fetch_complete(self, made: dict) -> bool:
        return self.ws.cube.exists() and not made.get("unfinished")

    def _fetch(self, before: dict, fingerprint: str, tokens: list) -> Manifest:
        from pipeline.images.fetch import fetch

        return fetch(dataclasses.replace(self.args.fetch, cutout_url=self._cutout_url()), client=self.client)

    def _cutout_url(self) -> str:
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

    def _train_settings(self) -> tuple[dict, list]:
        from pipeline.learn.train import RESUMABLE, data_fingerprint

        a = self.args.train
        ignored = {"workspace", *RESUMABLE} - {"epochs"}  # devices, readers, ...: the same model, sooner or later
        settings = {k: v for k, v in dataclasses.asdict(a).items() if k not in ignored}
        return settings, [data_fingerprint(a)]  # the data's content: an identical relabel retrains nothing

    def _train_complete(self, made: dict) -> bool:
        return (self.ws.models / self.args.train.name / "model.keras").exists()

    def _train(self, before: dict, fingerprint: str, tokens: list) -> Manifest:
        from pipeline.learn.train import train

        def but_epochs(settings: dict) -> dict:
            return {k: v for k, v in settings.items() if k != "epochs"}

        now = self._train_settings()[0]
        other = bool(before) and (but_epochs(before.get("settings") or {}) != but_epochs(now)
                                  or before.get("upstream") != json.loads(json.dumps(tokens)))  # fmt: skip
        if other:  # this run trained it with other settings or data: the config changed, so train anew
            print(f"\ntrain: settings or data changed since {self.ws.models / self.args.train.name} was trained; "
                  "training anew")  # fmt: skip
        return train(dataclasses.replace(self.args.train, restart=bool(other)))

    def _evaluate_settings(self) -> tuple[dict, list]:
        e = self.args.evaluate
        return {"policy": e.threshold_policy, "tta": e.tta}, [self.upstream, _model_checksum(self.ws, e.model)]

    def _evaluate_complete(self, made: dict) -> bool:
        return (self.ws.models / self.args.evaluate.model / "threshold.json").exists()

    def _evaluate(self, before: dict, fingerprint: str, tokens: list) -> Manifest:
        from pipeline.learn.evaluate import evaluate

        return evaluate(self.args.evaluate)

    def _score_settings(self) -> tuple[dict, list]:
        s = self.args.score
        speed = ("workspace", "fetch", "restart", "batch_size")  # these change no score
        settings = {k: v for k, v in dataclasses.asdict(s).items() if k not in speed}
        return settings, [self.upstream, self.recorded.get("fetch", {}).get("started_at")]

    def _score_complete(self, made: dict) -> bool:
        return self.ws.scores.exists() and not made.get("unfinished")

    def _score(self, before: dict, fingerprint: str, tokens: list) -> Manifest:
        from pipeline.score.score import score

        fetch = dataclasses.replace(self.args.fetch, cutout_url=self._cutout_url())
        changed = bool(before) and before.get("fingerprint") != fingerprint  # another model, threshold or data
        args = dataclasses.replace(self.args.score, fetch=fetch, restart=changed)
        return score(args, client=self.client, report=self.report)


def manifest_name(args: RunArgs, stage: str) -> str:
    """The name of the manifest ``stage`` writes in ``WS/manifests/`` (train's names its model)."""
    return f"train-{args.train.name}" if stage == "train" else stage


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _model_checksum(ws: Workspace, name: str) -> str:
    path = ws.models / name / "model.keras"
    return file_checksum(path) if path.exists() else ""
