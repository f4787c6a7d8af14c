"""Where graphs run: a Dask client from a spec string.

``local`` (embedded LocalCluster with worker processes), ``local-cuda`` (dask-cuda, one worker per
GPU; falls back to ``local`` with a warning when CUDA or dask-cuda is missing), ``tcp://host:port``
(a running scheduler), or the path of a scheduler file (``dask scheduler --scheduler-file``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import dask
from distributed import Client, LocalCluster


class ClusterSpecError(ValueError):
    """The cluster spec names nothing we can connect to."""


@contextmanager
def connect(
    spec: str = "local",
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str = "auto",
) -> Iterator[Client]:
    """Yield a connected :class:`distributed.Client`; embedded clusters are closed on exit."""
    with ExitStack() as stack:
        if spec in ("local", "local-cuda"):
            cluster = stack.enter_context(_local_cluster(spec, n_workers, threads_per_worker, memory_limit))
            client = stack.enter_context(Client(cluster))
        elif spec.startswith(("tcp://", "tls://", "ucx://", "inproc://")):
            client = stack.enter_context(Client(spec, timeout="20s"))
        elif Path(spec).is_file():
            try:
                client = stack.enter_context(Client(scheduler_file=spec, timeout="20s"))
            except ValueError as exc:  # not JSON, or no address in it
                raise ClusterSpecError(f"scheduler file {spec} is not readable ({exc}); pass the file that "
                                       "`dask scheduler --scheduler-file` wrote") from None  # fmt: skip
        else:
            raise ClusterSpecError(
                f"cluster spec {spec!r} is not 'local', 'local-cuda', a scheduler address "
                "(tcp://host:8786) or an existing scheduler file; fix --cluster"
            )
        yield client


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


def compute(*collections: Any, client: Client | None = None) -> tuple[Any, ...]:
    """``dask.compute`` on the injected client, or on dask's current scheduler when None."""
    if client is None:
        if _progress["enabled"]:
            from dask.diagnostics import ProgressBar

            with ProgressBar(minimum=2.0):
                return dask.compute(*collections)
        return dask.compute(*collections)
    if _progress["enabled"]:
        from distributed import progress

        futures = client.compute(list(collections))
        progress(futures, notebook=False)
        return tuple(client.gather(futures))
    return dask.compute(*collections, scheduler=client)


def persist(*collections: Any, client: Client | None = None) -> tuple[Any, ...]:
    """Keep collections' results in (distributed) memory for several passes over them."""
    if client is None:
        return dask.persist(*collections)
    persisted = client.persist(list(collections))
    if _progress["enabled"]:
        from distributed import progress

        progress(persisted, notebook=False)
    return tuple(persisted)
