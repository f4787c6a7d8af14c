"""GPU check: what a machine with one or more NVIDIA GPUs does for agnsurvey, in one command, each
rate beside a reference measured in the same run (under 8 minutes).

1. **training** of the paper CNN and ResNet-18 under mixed precision (``mixed_bfloat16``, as
   ``train --precision`` sets it) on one GPU and on all of them (the Keras distribution
   ``cluster.devices`` gives ``train``; batch per device fixed): fed from the Zarr cube by
   ``CubeBatches`` as ``train`` reads it, beside the **in-memory ceiling** (``model.fit`` on the
   same batches held in memory), and all GPUs' ceiling beside N x one GPU's (scaling);
2. **scoring from a cube**: the ``score`` stage in one process on one GPU, beside ``predict`` on
   the same images in memory;
3. **a LocalCUDACluster** (dask-cuda, one worker per GPU) running the ``score`` stage on the cube,
   beside N x the one-process ceiling (skipped, with the reason, where dask-cuda is missing);
4. **the batch reader alone**: images/s with 1 and 4 reader threads, and images per busy core,
   beside what the cores must deliver to keep the paper CNN's GPUs at their ceiling.

The measurements run in a child process (the only one holding the GPUs' memory; this one never
loads JAX), then the cluster. KERAS_BACKEND defaults to jax (no TensorFlow needed). ``--dry-run``
runs the same code paths on the CPU in under a minute: tiny sizes, 2 logical CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=2``) and a LocalCluster of 2 workers. Without
``--dry-run`` and without a GPU it stops with a one-line error, never a quiet CPU run.

    python benchmarks/gpu_check.py                      # on the GPU machine
    python benchmarks/gpu_check.py --dry-run            # anywhere: checks the script (CPU)

Prints one table and writes ``benchmarks/results/gpu_check-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "jax")  # before anything imports Keras (here, the child, the workers)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import Table, arg_parser, machine_info, report, usable_cores  # noqa: E402

# the full run (GPU) and the dry run (CPU): cube image side, batch per device, timed batches per
# epoch, timed epochs, shuffle buffer (images), smallest cube (rows)
SIZES = {"full": {"image_size": 128, "batch_size": 128, "steps": 30, "epochs": 2, "buffer": 1024, "images": 4096},
         "dry": {"image_size": 32, "batch_size": 4, "steps": 4, "epochs": 2, "buffer": 32, "images": 256}}  # fmt: skip
TRAIN_FRACTION = 0.7  # below the train split's 75 %: the cube surely holds the training rows a measurement needs
CLUSTER_S = 60  # seconds kept for the cluster row: the device side's deadline is the budget less this
GRACE_S = 45  # the device side is killed this long after its deadline (a measurement started before it)
MIN_LEFT_S = 20  # a device measurement starts only with this long left before the deadline (full run)
PACKAGES = ("keras", "jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt", "dask-cuda", "zarr", "tensorflow")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = arg_parser(__doc__)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: checks the script, measures "
                        "nothing (2 logical CPU devices, a LocalCluster of 2 workers)")  # fmt: skip
    parser.add_argument("--models", nargs="+", default=["paper", "resnet18"], help="default: paper resnet18")
    parser.add_argument("--batch-size", type=int, help="images per device per batch (128; dry run 4)")
    parser.add_argument("--steps", type=int, help="timed batches per epoch (30; dry run 4)")
    parser.add_argument("--epochs", type=int, help="timed epochs per fit, the best is shown (2)")
    parser.add_argument("--image-size", type=int, help="cube image side, pixels (128; dry run 32)")
    parser.add_argument("--buffer", type=int, help="shuffle buffer, images (1024; dry run 32)")
    parser.add_argument("--readers", type=int, default=4, help="reader threads of the batch reader (4, as train)")
    parser.add_argument("--precision", default="mixed_bfloat16", choices=["mixed_bfloat16", "float32"])
    parser.add_argument("--cluster", help="Dask cluster of the scoring row (default local-cuda; dry run local:2)")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds: no measurement starts after it (420)")
    parser.add_argument("--_measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--_deadline", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--_probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for key, value in SIZES["dry" if args.dry_run else "full"].items():
        if key != "images" and getattr(args, key) is None:
            setattr(args, key, value)
    args.cluster = args.cluster or ("local:2" if args.dry_run else "local-cuda")
    return args


def backend_name() -> str:
    name = os.environ["KERAS_BACKEND"]
    return "JAX" if name == "jax" else name


def probe() -> dict[str, Any]:
    """In a fresh process (this one never holds GPU memory): the GPUs Keras' backend sees, and
    ``nvidia-smi``'s view. No GPU: a one-line error (SystemExit)."""
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    try:
        done = subprocess.run([sys.executable, __file__, "--_probe"], env=env, capture_output=True, text=True,
                              timeout=180)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise SystemExit("gpu_check: error: the device probe (import Keras, list the GPUs) took over 180 s") from None
    found = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    if done.returncode or not found:
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"gpu_check: error: the device probe failed (exit {done.returncode}): {why}")
    seen = json.loads(found[-1].removeprefix("PROBE "))
    if not seen["gpus"]:
        raise SystemExit(
            f"gpu_check: error: no NVIDIA GPU visible to {backend_name()} (it sees: {', '.join(seen['devices'])}); "
            "check nvidia-smi, CUDA_VISIBLE_DEVICES and that the CUDA build is installed (pip install 'jax[cuda12]'); "
            "use --dry-run to check the script on CPU"
        )
    smi = shutil.which("nvidia-smi")
    if smi:
        query = [smi, "--query-gpu=index,name,memory.total,driver_version", "--format=csv,noheader"]
        listed = subprocess.run(query, capture_output=True, text=True, timeout=30)
        seen["nvidia_smi"] = listed.stdout.strip().splitlines() if listed.returncode == 0 else listed.stderr.strip()
    return seen


def probe_main() -> int:
    """``--_probe``: print the backend's GPUs (and every device it has) as one ``PROBE`` line."""
    from cluster import devices

    gpus = devices.gpus()
    found = [f"{d.platform}:{d.id}" for d in __import__("jax").devices()] if devices.backend() == "jax" else []
    print("PROBE " + json.dumps({"backend": devices.backend(), "gpus": [str(g) for g in gpus],
                                 "kinds": [getattr(g, "device_kind", str(g)) for g in gpus],
                                 "devices": found or ["?"]}))  # fmt: skip
    return 0


def measure_main(args: argparse.Namespace) -> int:
    """``--_measure DATA``: the device side (``_gpu_measure``), after the devices are prepared."""
    from cluster import devices

    accelerator = "cpu" if args.dry_run else "gpu"
    devices.prepare(accelerator, 2 if args.dry_run else None)  # XLA_FLAGS before JAX starts, in the dry run
    import keras

    keras.mixed_precision.set_dtype_policy(args.precision)
    from _gpu_measure import measure

    try:
        return measure(args._measure, accelerator, args.models, args.batch_size, args.steps, args.epochs,
                       args.buffer, args.readers, args._deadline, 0 if args.dry_run else MIN_LEFT_S)  # fmt: skip
    except devices.DeviceError as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 2


def cube_size(args: argparse.Namespace, n_devices: int) -> int:
    """Cube rows: enough training rows for the all-device measurement, whole shards past 1,024."""
    need = args.steps * args.batch_size * n_devices / TRAIN_FRACTION
    unit = 1024 if need > 1024 else 8
    return max(SIZES["dry" if args.dry_run else "full"]["images"], int(-(-need // unit) * unit))


def device_side(args: argparse.Namespace, data: Path, deadline: float) -> dict[str, Any]:
    """Run the child process; its ``PART`` lines (results so far, even if it is killed at
    ``deadline`` + GRACE_S), exit status and the end of its stderr. Its other lines are shown."""
    cmd = [sys.executable, __file__, "--_measure", str(data), "--_deadline", str(deadline), "--models", *args.models]
    for key in ("batch_size", "steps", "epochs", "image_size", "buffer", "readers", "precision"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    cmd += ["--dry-run"] if args.dry_run else []
    parts: list[dict[str, Any]] = []
    with tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
        killed = threading.Event()
        killer = threading.Timer(max(deadline + GRACE_S - time.time(), 1.0), lambda: (killed.set(), child.kill()))
        killer.start()
        for line in child.stdout:
            if line.startswith("PART "):
                parts.append(json.loads(line.removeprefix("PART ")))
            else:
                print(f"  {line.rstrip()}", flush=True)
        code = child.wait()
        killer.cancel()
        err.seek(0)
        tail = err.read()[-3000:]
    return {"parts": parts, "exit": code, "killed_at_deadline": killed.is_set(), "stderr_tail": tail if code else ""}


def own_gpu_only() -> str:
    """On a dask-cuda worker, before JAX loads: ``CUDA_VISIBLE_DEVICES`` = its own GPU only
    (dask-cuda lists every GPU, the worker's first; JAX would otherwise take memory on all)."""
    if "jax" not in sys.modules:
        os.environ["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0]
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


def warm_worker() -> float:
    """On a worker: import Keras and the model code (no device is touched: JAX starts its backends
    on first use); seconds."""
    started = time.perf_counter()
    from pipeline.learn.quiet_import import import_keras

    import_keras()
    import pipeline.learn.model  # noqa: F401

    return round(time.perf_counter() - started, 2)


def worker_device() -> dict[str, Any]:
    """On a worker, after scoring: the device Keras' backend computed on."""
    import keras

    if keras.backend.backend() != "jax":
        return {"device": keras.backend.backend(), "platform": "?"}
    import jax

    first = jax.devices()[0]
    return {"device": f"{first.platform}:{first.id} {first.device_kind}", "platform": first.platform,
            "visible": len(jax.devices()), "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")}  # fmt: skip


def open_cluster(spec: str, stack: ExitStack) -> dict[str, Any]:
    """The Dask cluster of the scoring row, opened with ``cluster.client.connect`` (held by
    ``stack``) before the cube is made; its workers import Keras meanwhile. Skipped, with the
    reason, when it cannot open (no dask-cuda, no usable GPU)."""
    import dask

    from cluster.client import ClusterSpecError, LocalCuda, connect, parse_spec

    kind = parse_spec(spec, threads_per_worker=1)
    name = {"LocalCuda": "LocalCUDACluster", "Local": "LocalCluster"}.get(type(kind).__name__, spec)
    out: dict[str, Any] = {"spec": spec, "kind": name}
    environ = dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {}
    # the workers (not the device side) share GPUs' memory: each takes it as needed
    stack.enter_context(dask.config.set({"distributed.nanny.pre-spawn-environ": {
        **environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}}))  # fmt: skip
    try:
        client = stack.enter_context(connect(kind))
    except ClusterSpecError as exc:
        return out | {"status": "skipped", "reason": str(exc)}
    workers = sorted(client.scheduler_info()["workers"])
    if isinstance(kind, LocalCuda):
        out["CUDA_VISIBLE_DEVICES"] = client.run(own_gpu_only)
    warm = [client.submit(warm_worker, workers=[w], allow_other_workers=False, pure=False) for w in workers]
    return out | {"status": "open", "workers": len(workers), "client": client, "warm": warm}


def cluster_rates(opened: dict[str, Any], model_dir: Path, ws: Path, dry_run: bool) -> dict[str, Any]:
    """The ``score`` stage on the cube on the opened cluster, cold (each worker's model load and
    compile; Keras already imported) then warm; and the device each worker computed on."""
    from bench_score import score_cube

    client = opened["client"]
    out = {k: v for k, v in opened.items() if k not in ("client", "warm")}
    try:
        out["import_keras_s"] = client.gather(opened["warm"])
        out["score"] = score_cube(model_dir, ws, client)
        out["worker_devices"] = client.run(worker_device)
    except Exception as exc:  # the rest of the report still stands
        return out | {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    off = [d["device"] for d in out["worker_devices"].values() if d["platform"] != ("cpu" if dry_run else "gpu")]
    if off:
        return out | {"status": "failed", "reason": f"workers computed on {', '.join(sorted(set(off)))}"}
    return out | {"status": "ran"}


def gather(parts: list[dict[str, Any]], cluster: dict[str, Any], dry_run: bool) -> dict[str, Any]:
    """The device side's parts and the cluster's result, by kind."""
    from _gpu_report import scaling

    train = [p for p in parts if p["part"] == "train"]
    return {"dry_run": dry_run, "devices": next((p for p in parts if p["part"] == "devices"), {}), "train": train,
            "scaling": scaling(train),
            "score": {"one_device": next((p for p in parts if p["part"] == "score_device"), None), "cluster": cluster},
            "reader": next((p for p in parts if p["part"] == "reader"), None),
            "skipped": [p for p in parts if p["part"] == "skipped"]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._probe:
        return probe_main()
    if args._measure:
        return measure_main(args)
    started = time.time()
    if args.dry_run:
        os.environ["JAX_PLATFORMS"] = "cpu"  # the child and the workers: CPU only, even on a GPU machine
        gpus, n_devices = None, 2
    else:
        gpus = probe()
        n_devices = len(gpus["gpus"])
        print(f"GPUs: {', '.join(gpus['kinds'])}", flush=True)
    from bench_score import cube_catalog
    from bench_train import make_cube

    machine = machine_info(extra_packages=PACKAGES)
    data = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        with ExitStack() as stack:
            print(f"cluster {args.cluster} for the scoring row ...", flush=True)
            opened = open_cluster(args.cluster, stack)
            images = cube_size(args, n_devices)
            print(f"cube: {images:,} images of {args.image_size} px ...", flush=True)
            cube = make_cube(data / "ws", images, image_size=args.image_size) | {"image_size": args.image_size}
            cube_catalog(data / "ws", images)
            cube["seconds"] = round(time.time() - started, 1)
            side = device_side(args, data, started + args.budget - CLUSTER_S)
            one = next((p for p in side["parts"] if p["part"] == "score_device"), None)
            if opened["status"] != "open":
                cluster = opened
            elif one is None:
                cluster = {"kind": opened["kind"], "status": "skipped", "reason": "no model: scoring on one device did "
                           "not run"}  # fmt: skip
            elif time.time() > started + args.budget - CLUSTER_S / 2:
                cluster = {"kind": opened["kind"], "status": "skipped", "reason": "deadline: the budget is spent"}
            else:
                print(f"score on the {opened['kind']} (cold, then warm) ...", flush=True)
                cluster = cluster_rates(opened, Path(one["model_dir"]), data / "ws", args.dry_run)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    return finish(args, machine, gpus, cube, side, gather(side["parts"], cluster, args.dry_run), started)


def finish(args: argparse.Namespace, machine: dict[str, Any], gpus: dict[str, Any] | None, cube: dict[str, Any],
           side: dict[str, Any], result: dict[str, Any], started: float) -> int:  # fmt: skip
    """Print the table and notes, write the JSON; exit status 1 when the device side or the cluster
    row failed (not when a row was skipped)."""
    from _gpu_report import COLUMNS, RIGHT, notes, rows, summary

    cores = usable_cores()
    lines = notes(result, cores)
    if side["exit"]:
        why = "killed at the deadline" if side["killed_at_deadline"] else f"failed (exit {side['exit']})"
        lines.append(f"the device side {why}; the end of its stderr:\n{side['stderr_tail']}")
    parameters = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    payload = {"parameters": parameters | {"command": " ".join(["benchmarks/gpu_check.py", *sys.argv[1:]])},
               "gpus": gpus, "cube": cube, **result,
               "device_side": {k: side[k] for k in ("exit", "killed_at_deadline", "stderr_tail")},
               "timing": {"budget_s": args.budget, "elapsed_s": round(time.time() - started, 1)}}  # fmt: skip
    heading = f"\nagnsurvey GPU check{' (DRY RUN, CPU)' if args.dry_run else ''}: cube {cube['images']:,} images"
    table = Table(rows(result, cores), COLUMNS, right=RIGHT, heading=heading)
    report("gpu_check", machine, payload, [table], lines, summary=summary(result, cores))
    return 1 if side["exit"] or result["score"]["cluster"]["status"] == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
