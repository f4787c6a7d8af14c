"""One training process per Dask worker: data-parallel training across processes or nodes.

Each Dask worker runs one task that starts a fresh Python process (``python -m MODULE SPEC``) and
waits for it. A fresh process, not the worker itself: JAX's multi-process runtime is initialised
once per process, before anything else touches JAX, and must not outlive the job; a GPU worker
(dask-cuda) passes on its ``CUDA_VISIBLE_DEVICES``, so each process gets its own GPU. Process 0
listens for the others (``jax.distributed``) on a free port of its worker's host.

If one process fails, the others are stopped (they would wait forever in a collective), and the
error names the failed process with the end of its log (``WS/models/NAME/process-K.log``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from distributed import Client, Event


class TrainingProcessError(RuntimeError):
    """A training process failed; the message holds the end of its log."""


class WorkerLost(TrainingProcessError):
    """A Dask worker left while its training process ran (killed, out of memory, its job ended)."""

    def __init__(self, message: str, worker: str = ""):
        super().__init__(message)
        self.worker = worker


def free_port() -> int:
    """A TCP port free on this host now."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def run_process(module: str, spec: dict[str, Any], index: int, count: int, coordinator: str, log: str,
                abort: str) -> int:  # fmt: skip
    """The body of one worker's task: run ``python -m module`` for process ``index`` until it ends
    or the job is aborted; raises with the end of its log if it fails."""
    payload = json.dumps(spec | {"_processes": {"index": index, "count": count, "coordinator": coordinator},
                                 "_parent": os.getpid()})  # fmt: skip
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONUNBUFFERED="1")
    env.pop("XLA_FLAGS", None)
    stop = Event(abort)
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", module, payload], stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            while proc.poll() is None:
                if stop.is_set():
                    proc.kill()
                    proc.wait()
                    return -1
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if proc.returncode != 0:
        tail = Path(log).read_text(errors="replace").strip().splitlines()[-12:]
        raise TrainingProcessError(
            f"training process {index} of {count} exited with code {proc.returncode}; the end of {log}:\n"
            + "\n".join(tail)
        )
    return 0


def die_with_parent(parent: int) -> None:
    """Called first thing by a training process: be killed when the Dask worker that started it
    dies (Linux ``PR_SET_PDEATHSIG``), so a killed worker never leaves a process waiting in a
    collective; exit at once if that worker is already gone."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


WORKER_GONE_GRACE_S = 3.0  # how long a failure waits to learn whether a worker died (then that is the news)


def run_in_every_worker(
    client: Client,
    module: str,
    spec: dict[str, Any],
    logs: Path,
    watch: Callable[[], None] | None = None,
) -> None:
    """Run ``python -m module`` once on every worker of the cluster, as processes 0..N-1 of one job
    (``spec`` plus this process's place is its one argument). ``watch`` is called every second
    meanwhile (progress). Returns when all succeeded; raises when one failed (the rest stopped)."""
    workers = sorted(client.scheduler_info()["workers"])
    host = urlparse(workers[0]).hostname or "127.0.0.1"
    port = client.submit(free_port, workers=[workers[0]], pure=False).result()
    abort = f"agnsurvey-train-abort-{uuid.uuid4().hex[:8]}"
    stop = Event(abort, client=client)
    futures = [
        client.submit(run_process, module, spec, i, len(workers), f"{host}:{port}", str(logs / f"process-{i}.log"),
                      abort, workers=[w], allow_other_workers=False, pure=False, key=f"train-process-{i}-{abort}")
        for i, w in enumerate(workers)
    ]  # fmt: skip
    def gone() -> list[str]:
        return sorted(set(workers) - set(client.scheduler_info()["workers"]))

    try:
        while True:
            time.sleep(1.0)
            if watch is not None:
                watch()
            failed = [f for f in futures if f.status in ("error", "cancelled", "lost")]
            if failed:
                stop.set()
                deadline = time.monotonic() + WORKER_GONE_GRACE_S
                while not gone() and time.monotonic() < deadline:
                    time.sleep(0.2)  # the others' collective errors may come before the scheduler sees a death
                if not gone():
                    failed[0].result()  # raises the process's error
            missing = gone()  # asked once: a restarted worker may be back by the next question
            if missing:
                stop.set()
                raise WorkerLost(
                    f"Dask worker {missing[0]} left while training (killed, or out of memory); re-run the same "
                    "command to resume from the last checkpoint",
                    worker=missing[0],
                )
            if all(f.status == "finished" for f in futures):
                if watch is not None:
                    watch()
                return
    except BaseException:
        stop.set()
        client.cancel(futures)
        raise
