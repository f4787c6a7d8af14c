"""Stage ``train``: image cube + labels → ``WS/models/NAME/``, resumable after any epoch.

```
WS/models/NAME/  args.json            the arguments and the data it trains on (refused if they change)
                 checkpoints/epoch-NNNN.keras   after every epoch (written, then renamed into place)
                 state.json           epochs done and the checkpoint to resume from (the commit point)
                 history.json  history.csv      loss, accuracy, AUC per epoch, train and validation
                 model.keras          the final model (plain ``keras.saving.load_model``)
```

A run first checks the data (rows of each class in train and val, the batch size against the
devices). Re-running the same command resumes after the last complete epoch (``state.json``); a
larger ``epochs`` continues; other changed arguments are refused unless ``restart``.

Where it runs: in this process (one device, or several of this node: :mod:`cluster.devices`), or,
given a Dask client, one training process per Dask worker (:mod:`cluster.multiworker`), JAX's
multi-process runtime between them, each reading its own part of the data; process 0 alone writes
checkpoints and history.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from cluster.devices import DeviceError, Processes
from pipeline.errors import ConfigError, DataError, TrainingError, WorkspaceError
from pipeline.learn.args import TrainArgs
from pipeline.learn.modeldir import TRAINED_ON, epoch_line, load_model, model_dir, read_json, read_state, whole_model
from pipeline.learn.stretch import Stretch
from pipeline.stage import RunContext, Step, writing
from storage.cube import Cube
from storage.fence import Fence
from storage.manifest import Manifest, atomic_file, write_json_atomic

MIN_ROWS_PER_CLASS = 5  # in each of train and val: fewer cannot train or measure anything
RESUMABLE = {"epochs", "devices", "accelerator", "readers", "prefetch", "keep_checkpoints", "on", "restart"}
"""Arguments that may change between runs of one model directory."""


def train(args: TrainArgs, client: Any = None) -> Manifest:
    """Train ``args.model`` on the workspace's train split; returns the manifest.

    ``client``: a Dask client to train with one process per worker (data-parallel, JAX), or None
    to train in this process.
    """
    ws = args.workspace
    with writing(ws, f"models/{args.name}", "train", reads=("labels", "cube"),
                 kept=f"{model_dir(args)} keeps every finished epoch"):  # fmt: skip
        splits, fingerprint = _check_data(args, processes=_worker_count(client))
        state = _prepare_directory(args, fingerprint)
        np.save(model_dir(args) / TRAINED_ON, splits["train"].objid)  # evaluate refuses to test on these
        manifest = Manifest(stage="train", parameters=_recorded(args))
        manifest.inputs = [{"path": str(ws.labels)}, {"path": str(ws.cube)}]
        started = time.monotonic()
        if state["epochs_done"] >= args.epochs:
            _final_from_checkpoint(model_dir(args), state)
            print(f"{model_dir(args)} has already trained {state['epochs_done']} epochs; nothing to do")
        elif client is None:  # model.keras of the epochs before stays until the new one replaces it
            fit(args)
        else:
            _fit_on_workers(args, client)
        seconds = time.monotonic() - started
        return _finish(args, manifest, splits, seconds, processes=_worker_count(client))


WORKER_LOSSES = 3  # workers lost in one training before it gives up (each resumes from the last checkpoint)
WORKERS_BACK_S = 20.0  # how long a lost worker may take to come back (a nanny restarts it) before going on without


def _fit_on_workers(args: TrainArgs, client: Any) -> None:
    """One training process per Dask worker; when a worker is lost mid-epoch, resume from the last
    checkpoint on the workers there are (up to :data:`WORKER_LOSSES` times)."""
    from cluster.multiworker import WorkerLost, run_in_every_worker

    spec = dataclasses.asdict(args) | {"workspace": str(args.workspace.root)}
    output = f"models/{args.name}"
    for losses in range(WORKER_LOSSES + 1):
        count = _worker_count(client)
        fence = args.workspace.renew_fence(output) if losses else args.workspace.fence(output)
        try:
            run_in_every_worker(client, "pipeline.learn.train", spec | {"_fence": dataclasses.asdict(fence)},
                                model_dir(args),
                                watch=lambda: _print_new_epochs(args))  # fmt: skip
            return
        except WorkerLost as exc:
            if losses == WORKER_LOSSES:
                raise TrainingError(f"{exc} ({losses + 1} workers lost in this training)") from None
            _await_workers(client, count)
            _check_data(args, processes=_worker_count(client))  # the batch must split over the workers left
            epoch = read_state(model_dir(args))["epochs_done"] + 1
            print(f"train: Dask worker {exc.worker} left while training; resuming from epoch {epoch} on "
                  f"{_worker_count(client)} workers", flush=True)  # fmt: skip


def _await_workers(client: Any, count: int) -> None:
    """Wait up to :data:`WORKERS_BACK_S` for ``count`` workers again, and at least for one."""
    deadline = time.monotonic() + WORKERS_BACK_S
    while _worker_count(client, at_least=0) < count and time.monotonic() < deadline:
        time.sleep(0.5)
    try:
        client.wait_for_workers(1, timeout=max(1.0, deadline - time.monotonic()))
    except TimeoutError:
        gone = "every Dask worker left while training; re-run to resume from the last checkpoint"
        raise TrainingError(gone) from None


def _final_from_checkpoint(directory: Path, state: dict[str, Any]) -> None:
    """The final model of a run killed between its last checkpoint and ``model.keras``, or whose
    ``model.keras`` was cut short: that checkpoint (the same weights), copied then renamed into place."""
    final = directory / "model.keras"
    if whole_model(final) or not state["checkpoint"]:
        return
    if final.exists():
        print(f"{final} is damaged (not a whole .keras file); restored from {state['checkpoint']}")
    with atomic_file(final) as tmp:
        shutil.copyfile(directory / state["checkpoint"], tmp)


def _worker_count(client: Any, at_least: int = 1) -> int:
    return 1 if client is None else max(at_least, len(client.scheduler_info()["workers"]))


def _check_data(args: TrainArgs, processes: int) -> tuple[dict, str]:
    """The splits, after checking there is enough of each class; and their fingerprint."""
    from pipeline.learn.rows import select_rows

    splits = select_rows(args.workspace, args.composites)
    for name in ("train", "val"):
        n_sf, n_agn = splits[name].counts()
        if min(n_sf, n_agn) < MIN_ROWS_PER_CLASS:
            raise DataError(
                f"too few galaxies to train on: the {name} split has {n_sf} star-forming and {n_agn} AGN with an ok "
                f"cutout (at least {MIN_ROWS_PER_CLASS} of each needed); fetch more cutouts (`agnsurvey fetch`), "
                "ingest a larger catalog, or relabel (e.g. without --min-snr)"
            )
    n_train = len(splits["train"])
    if args.batch_size > n_train:
        raise DataError(
            f"--batch-size {args.batch_size} is larger than the {n_train} training images; use a smaller batch"
        )
    if args.batch_size % processes:
        raise DataError(
            f"--batch-size {args.batch_size} cannot be split over {processes} training processes; use a multiple "
            f"of {processes}"
        )
    digest = hashlib.sha256()
    cube = args.workspace.read_manifest("fetch") or {}
    settings = {k: cube.get("parameters", {}).get(k) for k in ("image_size", "size", "radius_scale", "layer")}
    if cube.get("parameters", {}).get("pixels", "rgb") != "rgb":  # rgb cubes keep the fingerprint they had
        settings |= {k: cube["parameters"].get(k) for k in ("pixels", "bands", "bricks")}
    digest.update(json.dumps(settings, sort_keys=True).encode())  # other pixels are other data
    for name in ("train", "val"):
        digest.update(splits[name].cube_row.tobytes())
        digest.update(splits[name].label.tobytes())
        digest.update(splits[name].objid.tobytes())
    return splits, digest.hexdigest()


def data_fingerprint(args: TrainArgs, processes: int = 1) -> str:
    """What the model's training data is (splits' rows, labels, ids, and the cutout settings), as a
    hash: another fingerprint means other data (``agnsurvey run`` retrains only then)."""
    return _check_data(args, processes)[1]


def _recorded(args: TrainArgs) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(args).items() if k != "workspace"}


def _prepare_directory(args: TrainArgs, fingerprint: str) -> dict[str, Any]:
    """Create, check or reset the model directory; returns its state (epochs done)."""
    directory = model_dir(args)
    ws = args.workspace
    recorded = {"arguments": _recorded(args), "workspace": str(ws.root), "data": fingerprint,
                "labels": ws.read_manifest("label"), "cube": ws.read_manifest("fetch")}  # fmt: skip
    if args.restart and directory.exists():
        _discard(directory)
    old_path = directory / "args.json"
    if old_path.exists():
        old = read_json(old_path)
        if old.get("data") != fingerprint:
            where = old.get("workspace")
            why = (f"it was made by another workspace ({where})" if where != str(args.workspace.root)
                   else "the labels or the cube's ok rows changed since")  # fmt: skip
            raise TrainingError(
                f"{directory} was trained on other data: {why}; pass --restart to train anew, or --name OTHER to "
                "keep it"
            )
        changed = [f"{k} {old['arguments'].get(k)!r} -> {v!r}" for k, v in recorded["arguments"].items()
                   if k not in RESUMABLE and old["arguments"].get(k) != v]  # fmt: skip
        if changed:
            raise TrainingError(
                f"{directory} was trained with other arguments ({'; '.join(changed)}); re-run with its arguments "
                "to resume, pass --restart to train anew, or --name OTHER to train beside it"
            )
    directory.mkdir(parents=True, exist_ok=True)
    for stale in [*directory.glob(".*.tmp*"), *directory.glob("checkpoints/.*.tmp*")]:  # a killed run's half files
        stale.unlink(missing_ok=True)
    write_json_atomic(old_path, recorded)
    return read_state(directory)


def _discard(directory: Path) -> None:
    import uuid

    trash = directory.with_name(f".{directory.name}.discarded-{uuid.uuid4().hex[:8]}")
    os.replace(directory, trash)
    shutil.rmtree(trash, ignore_errors=True)


# --- one training process ------------------------------------------------------------------------


def fit(args: TrainArgs, processes: Processes | None = None, fence: Fence | None = None) -> None:
    """Train in this process (process ``processes.index`` of several, or alone), resuming from the
    model directory's state. Process 0 (or the only one) writes checkpoints and history (under
    ``fence``: the attempt's, when several processes train on workers)."""
    from cluster import devices

    devices.prepare(args.accelerator, args.devices, processes)
    import keras

    from pipeline.learn.batches import CubeBatches
    from pipeline.learn.rows import class_weights, select_rows

    where = devices.placement(args.accelerator, args.devices, processes)
    if args.batch_size % where.total:
        raise DataError(
            f"--batch-size {args.batch_size} cannot be split over {where.describe()}; use a multiple of {where.total}"
        )
    state = read_state(model_dir(args))
    splits = select_rows(args.workspace, args.composites)
    part = (processes.index, processes.count) if processes else (0, 1)
    local_batch = args.batch_size // where.processes
    common = {"block_rows": args.block_rows, "readers": args.readers, "prefetch": args.prefetch, "part": part}
    train_batches = CubeBatches(args.workspace.cube, splits["train"], local_batch, shuffle=True,
                                augment_images=args.augment, shuffle_buffer=args.shuffle_buffer, seed=args.seed,
                                class_weight=class_weights(splits["train"], args.class_weight), **common)  # fmt: skip
    # validation batches are padded only where the devices need equal batches (callbacks.ValLoss leaves it out)
    val_batches = CubeBatches(args.workspace.cube, splits["val"], local_batch, pad=where.total > 1, **common)
    keras.utils.set_random_seed(args.seed)  # the same initial weights in every process
    policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(args.precision)
    try:
        _fit(args, processes, where, state, splits, train_batches, val_batches, fence)
    finally:
        train_batches.close()
        val_batches.close()
        keras.mixed_precision.set_dtype_policy(policy)
    if processes is not None:
        import jax

        jax.distributed.shutdown()  # every process reaches it after the same saves


def _fit(args: TrainArgs, processes: Processes | None, where: Any, state: dict[str, Any], splits: dict,
         train_batches: Any, val_batches: Any, fence: Fence | None) -> None:  # fmt: skip
    import keras

    from cluster import devices
    from pipeline.learn.callbacks import (
        Checkpoint,
        Progress,
        SetEpoch,
        ValLoss,
        fenced,
        save_atomic,
        val_loss_metric,
    )
    from pipeline.learn.model import build_model

    writer = processes is None or processes.index == 0
    directory = model_dir(args)
    image_size = train_batches.cube.layout.image_size
    with devices.distributed(where):
        if state["checkpoint"]:
            model = load_model(directory / state["checkpoint"])
            optimizer = model.optimizer  # with its state: the same training as without the recompile
        else:
            model = build_model(args.model, image_size, fit_stretch(train_batches.cube, splits["train"].cube_row))
            optimizer = keras.optimizers.Adam(args.lr)
        # a checkpoint too: one written before the val-loss metric gets it
        model.compile(optimizer=optimizer, loss="binary_crossentropy",
                      weighted_metrics=[keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc"),
                                        val_loss_metric()])  # fmt: skip
        images = len(splits["train"])
        callbacks: list[keras.callbacks.Callback] = [
            ValLoss(),  # first: the others see its val_loss, without the padding of the val batches
            SetEpoch(train_batches),
            Checkpoint(directory, state, images, writer, keep=args.keep_checkpoints, fence=fence),
        ]
        if writer:
            callbacks.append(Progress(args.epochs, args.batch_size, images))
            print(f"training {args.model} on {where.describe()} ({keras.backend.backend()}): "
                  f"{len(splits['train']):,} train / {len(splits['val']):,} val images, "
                  f"from epoch {state['epochs_done'] + 1}", flush=True)  # fmt: skip
        # shuffle=False: the reader shuffles; Keras would ask for its batches in a random order
        model.fit(train_batches, validation_data=val_batches, epochs=args.epochs, initial_epoch=state["epochs_done"],
                  callbacks=callbacks, verbose=0, shuffle=False)  # fmt: skip
        with fenced(fence, writer):
            save_atomic(model, directory / "model.keras", writer)


STRETCH_SAMPLE = 512  # training images the flux stretch's softening is measured on


def fit_stretch(cube: Cube, rows: np.ndarray) -> Stretch | None:
    """The per-band stretch of a flux cube (softening = each band's robust sky noise over the first
    training images, in cube order); None for an rgb cube (the model scales bytes itself)."""
    if cube.pixels != "flux":
        return None
    sample = np.sort(np.asarray(rows, dtype=np.int64))[:STRETCH_SAMPLE]
    return Stretch.fit(cube.read_rows(sample), cube.bands)


_shown_epochs: dict[Path, int] = {}


def _print_new_epochs(args: TrainArgs) -> None:
    """While worker processes train: print the epochs process 0 has finished since last asked."""
    directory = model_dir(args)
    history = read_state(directory)["history"]
    for row in history[_shown_epochs.get(directory, 0) :]:
        print(epoch_line(row["epoch"], args.epochs, row, row.get("seconds", 0.0)), flush=True)
    _shown_epochs[directory] = len(history)


def _finish(args: TrainArgs, manifest: Manifest, splits: dict, seconds: float, processes: int) -> Manifest:
    directory = model_dir(args)
    state = read_state(directory)
    if state["epochs_done"] < args.epochs:
        raise TrainingError(f"training stopped after {state['epochs_done']} of {args.epochs} epochs; re-run to resume")
    if not whole_model(directory / "model.keras"):
        raise TrainingError(f"{directory / 'model.keras'} is missing or damaged and no checkpoint can replace it; "
                            "pass --restart to train anew")  # fmt: skip
    last = state["history"][-1] if state["history"] else {}
    manifest.rows_in = len(splits["train"]) + len(splits["val"])
    manifest.rows_out = len(splits["train"])
    manifest.extra = {
        "splits": {name: dict(zip(("sf", "agn"), rows.counts(), strict=True)) for name, rows in splits.items()},
        "epochs_done": state["epochs_done"],
        "final": {k: last[k] for k in ("loss", "val_loss", "val_accuracy", "val_auc") if k in last},
        "images_per_second": last.get("images_per_second"),
        "processes": processes,  # training processes of this command's last epochs (1: in the driver)
    }
    manifest.outputs = {"model": str(directory / "model.keras"), "history": str(directory / "history.csv")}
    manifest.finish()
    args.workspace.write_manifest(f"train-{args.name}", manifest.to_dict())
    return manifest


def _process_main(payload: str) -> int:
    """Entry of one training process started by :func:`cluster.multiworker.run_in_every_worker`.

    A failure leaves at once (``os._exit``): JAX's exit handler would otherwise wait minutes at a
    shutdown barrier for the other processes, which are still waiting for this one.
    """
    spec = json.loads(payload)
    from cluster.multiworker import die_with_parent

    die_with_parent(spec.pop("_parent"))
    processes = Processes(**spec.pop("_processes"))
    fence = Fence(**spec.pop("_fence"))
    try:
        args = TrainArgs(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})
        fit(args, processes, fence)
    except (DataError, DeviceError, WorkspaceError, TrainingError) as exc:
        print(f"agnsurvey train (process {processes.index}): error: {exc}", file=sys.stderr, flush=True)
        os._exit(2)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    return 0


# --- as a stage of `agnsurvey run` ------------------------------------------------------------------


def _model_settings(args: TrainArgs) -> dict:
    """The model's settings: not those a resumed run may change, but ``epochs`` (more continue)."""
    ignored = {"workspace", *RESUMABLE} - {"epochs"}  # devices, readers, ...: the same model, sooner or later
    return {k: v for k, v in dataclasses.asdict(args).items() if k not in ignored}


def _run_settings(args: TrainArgs, run: RunContext) -> tuple[dict, list]:
    """The model's settings and its data's content: an identical relabel retrains nothing."""
    return _model_settings(args), [data_fingerprint(args)]


def _train_for_run(args: TrainArgs, run: RunContext, before: dict, fingerprint: str, tokens: list) -> Manifest:
    """Resume or continue the run's model; train anew if this run trained it with other settings or data."""

    def but_epochs(settings: dict) -> dict:
        return {k: v for k, v in settings.items() if k != "epochs"}

    other = bool(before) and (but_epochs(before.get("settings") or {}) != but_epochs(_model_settings(args))
                              or before.get("upstream") != json.loads(json.dumps(tokens)))  # fmt: skip
    if other:  # this run trained it with other settings or data: the config changed, so train anew
        print(f"\ntrain: settings or data changed since {model_dir(args)} was trained; training anew")
    return train(dataclasses.replace(args, restart=bool(other)), client=training_client(args, run.client))


def training_client(args: TrainArgs, client: Any) -> Any:
    """Where ``agnsurvey run`` trains: on ``client``'s workers (one process per worker) or in this
    process (None), by ``args.on``. Unset: the workers when there are several and some run on other
    machines (a remote cluster, Slurm jobs); with every worker on this machine (a LocalCluster), this
    process, which trains on all its cores at once without exchanging gradients between processes."""
    if args.on == "workers" and client is None:
        raise ConfigError("train.on = 'workers' needs a Dask cluster; run with --cluster or --workers, or set "
                          "train.on = 'driver'")  # fmt: skip
    if args.on == "driver" or client is None:
        return None
    if args.on == "workers":
        return client
    from cluster.client import workers_elsewhere

    return client if _worker_count(client) > 1 and workers_elsewhere(client) else None


def _trained(args: TrainArgs) -> bool:
    """``args.epochs`` epochs done and their model.keras whole (a continuation keeps an older one)."""
    try:
        done = read_state(model_dir(args))["epochs_done"] >= args.epochs
    except TrainingError:
        return False
    return done and whole_model(model_dir(args) / "model.keras")


def _result(manifest: dict) -> str:
    extra = manifest.get("extra", {})
    final = extra.get("final") or {}
    return f"{extra.get('epochs_done')} epochs, val AUC {final['val_auc']:.3f}" if "val_auc" in final else ""


STEP = Step(
    "train",
    settings=_run_settings,
    complete=lambda args, run, made: _trained(args),
    execute=_train_for_run,
    manifest=lambda args: f"train-{args.name}",
    result=_result,
)


if __name__ == "__main__":
    sys.exit(_process_main(sys.argv[1]))
