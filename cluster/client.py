"""Where graphs run: a Dask client from a spec string.

``local`` (embedded LocalCluster with worker processes), ``local-cuda`` (dask-cuda, one worker per
GPU; falls back to ``local`` with a warning when CUDA or dask-cuda is missing), ``tcp://host:port``
(a running scheduler), or the path of a scheduler file (``dask scheduler --scheduler-file``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing.forkserver
import signal
import threading
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import dask
from distributed import Client, LocalCluster, WorkerPlugin, wait


class ClusterSpecError(ValueError):
    """The cluster spec names nothing we can connect to."""


class QuietWorkers(WorkerPlugin):
    """Unless ``debug``, for workers this process started: a task's error is reported once, by the
    client, not also as the worker's "Compute Failed" block, nor followed by the chatter of workers
    shutting down mid-task. Memory warnings still show."""

    name = "agnsurvey-quiet-workers"

    def __init__(self, debug: bool = False):
        self.debug = debug

    def setup(self, worker: Any) -> None:
        if not self.debug:
            logging.getLogger("distributed").setLevel(logging.CRITICAL)
            logging.getLogger("distributed.worker.memory").setLevel(logging.WARNING)


def start_workers_ignoring_ctrl_c() -> None:
    """Make the worker processes of embedded clusters ignore SIGINT from birth, restarts included.

    A terminal sends Ctrl-C to the whole process group: workers would die of it, each printing a
    traceback, while the client stops them anyway. So workers are forked from a forkserver started
    with SIGINT ignored (forked children keep that), and this process keeps its own handler. While
    the forkserver starts, SIGINT is blocked as well as ignored: Linux keeps a blocked signal pending
    even when ignored, so a Ctrl-C in that instant is delivered once the handler is back.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may change handlers; workers then start the default way
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"})


@contextmanager
def connect(
    spec: str = "local",
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str = "auto",
    debug: bool = False,
) -> Iterator[Client]:
    """Yield a connected :class:`distributed.Client`; embedded clusters are closed on exit.

    Workers of an embedded cluster ignore Ctrl-C (the client stops them; see
    :func:`start_workers_ignoring_ctrl_c`) and, unless ``debug``, do not log a task's error twice.
    """
    with ExitStack() as stack:
        if spec in ("local", "local-cuda"):
            start_workers_ignoring_ctrl_c()
            cluster = stack.enter_context(_local_cluster(spec, n_workers, threads_per_worker, memory_limit))
            client = stack.enter_context(Client(cluster))
            client.register_plugin(QuietWorkers(debug))  # also applied to workers that restart later
        elif spec.startswith(("tcp://", "tls://", "ucx://", "inproc://")):
            client = stack.enter_context(Client(spec, timeout="20s"))
        elif Path(spec).is_file():
            client = stack.enter_context(Client(scheduler_file=scheduler_address(spec), timeout="20s"))
        else:
            raise ClusterSpecError(
                f"cluster spec {spec!r} is not 'local', 'local-cuda', a scheduler address "
                "(tcp://host:8786) or an existing scheduler file; fix --cluster"
            )
        yield client


def scheduler_address(path: str) -> str:
    """``path`` after checking it is a scheduler file (JSON with an ``address``); a clear error if not."""
    fix = "pass the file that `dask scheduler --scheduler-file FILE` wrote, or the address tcp://host:8786"
    try:
        info = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ClusterSpecError(f"scheduler file {path} cannot be read ({exc.strerror}); {fix}") from None
    except (ValueError, UnicodeDecodeError):
        raise ClusterSpecError(f"scheduler file {path} is not JSON; {fix}") from None
    if not isinstance(info, dict) or not isinstance(info.get("address"), str):
        raise ClusterSpecError(f"scheduler file {path} has no scheduler address in it; {fix}")
    return path


def _local_cluster(spec: str, n_workers: int | None, threads: int | None, memory_limit: str) -> Any:
    if spec == "local-cuda":
        try:
            from dask_cuda import LocalCUDACluster  # type: ignore[import-not-found]

            return LocalCUDACluster(memory_limit=memory_limit, dashboard_address=":0")
        except Exception as exc:  # no dask-cuda, no CUDA driver, no GPU
            warnings.warn(f"local-cuda unavailable ({exc}); using a CPU LocalCluster", stacklevel=3)
    return LocalCluster(
        n_workers=n_workers,
        threads_per_worker=threads or 1,
        processes=True,
        memory_limit=memory_limit,
        dashboard_address=":0",
    )


_progress = {"enabled": False}


def show_progress(enabled: bool = True) -> None:
    """Turn progress bars on or off for :func:`compute` and :func:`persist` (the CLI turns them on)."""
    _progress["enabled"] = enabled


def progress_enabled() -> bool:
    return _progress["enabled"]


FAILED_COMPUTE_WAIT_S = 60.0


def compute(*collections: Any, client: Client | None = None) -> tuple[Any, ...]:
    """``dask.compute`` on the injected client, or on dask's current scheduler when None."""
    if client is None:
        if _progress["enabled"]:
            from dask.diagnostics import ProgressBar

            with ProgressBar(minimum=2.0):
                return dask.compute(*collections)
        return dask.compute(*collections)
    futures = client.compute(list(collections))
    try:
        if _progress["enabled"]:
            from distributed import progress

            progress(futures, notebook=False)
        return tuple(client.gather(futures))
    except Exception:
        # one task failed: let the others end before the caller cleans up, so none is still writing
        # into an output directory being removed (they mostly fail the same way, e.g. a full disk)
        with contextlib.suppress(Exception):
            wait(futures, timeout=FAILED_COMPUTE_WAIT_S)
        raise


def persist(*collections: Any, client: Client | None = None) -> tuple[Any, ...]:
    """Keep collections' results in (distributed) memory for several passes over them."""
    if client is None:
        return dask.persist(*collections)
    persisted = client.persist(list(collections))
    if _progress["enabled"]:
        from distributed import progress

        progress(persisted, notebook=False)
    return tuple(persisted)
