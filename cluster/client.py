"""Where graphs run: a Dask client from a spec string, one small class per kind of cluster.

``local`` (an embedded LocalCluster of worker processes sized to this machine), ``local:N`` (N
worker processes), ``local-cuda`` (dask-cuda, one worker per GPU; an error, never a CPU fallback,
when CUDA or dask-cuda is missing), ``tcp://host:port`` (a running scheduler), the path of a
scheduler file (``dask scheduler --scheduler-file``), or ``slurm`` (dask-jobqueue submits the
workers as SLURM jobs; settings from ``[cluster.slurm]`` or Dask's ``jobqueue.slurm`` config).

Workers of a remote cluster must see the workspace at the same path: :func:`check_workspace_visible`
asks every worker before any work starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing.forkserver
import os
import signal
import socket
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
from distributed import Client, LocalCluster, WorkerPlugin, wait

from cluster.errors import ClusterSpecError
from cluster.slurm import Slurm, SlurmSettings  # noqa: F401 - part of this module's interface

SPEC_HELP = (
    "local, local:N (N worker processes), local-cuda (one worker per GPU), slurm, a scheduler address "
    "(tcp://host:8786) or a scheduler file"
)


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


class QuietTensorFlow(WorkerPlugin):
    """For workers this process started (embedded, or Slurm jobs): TensorFlow's C++ start-up lines
    stay out of their output, as in the driver (:mod:`pipeline.learn.quiet_import`), also where the
    job's environment does not pass ``TF_CPP_MIN_LOG_LEVEL`` on; a worker's own setting is kept."""

    name = "agnsurvey-quiet-tensorflow"

    def setup(self, worker: Any) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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


def worker_environ() -> dict[str, Any]:
    """Dask's environment for new worker processes, less ``MALLOC_TRIM_THRESHOLD_``.

    Setting that variable turns glibc's adaptive mmap threshold off, so every array over 128 KiB
    is mapped and unmapped again (page faults, and TLB shootdowns across the worker's threads):
    measured on the label stage, its tasks took 1.6x the CPU time. Workers forked from our
    forkserver never had it in effect (glibc reads it when a process starts); this keeps it so for
    workers started the default way, and keeps it out of this process's environment.
    """
    environ = dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {}
    return {name: value for name, value in environ.items() if name != "MALLOC_TRIM_THRESHOLD_"}


def _prepare_embedded_workers(stack: ExitStack) -> None:
    """Before an embedded cluster starts: its workers ignore Ctrl-C and keep glibc's adaptive malloc
    (for as long as ``stack`` holds the cluster)."""
    start_workers_ignoring_ctrl_c()
    stack.enter_context(dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ()}))


@dataclass(frozen=True)
class Local:
    """An embedded LocalCluster of worker processes; ``n_workers`` None: sized to this machine."""

    n_workers: int | None = None
    threads_per_worker: int | None = None
    memory_limit: str = "auto"
    debug: bool = False
    remote = False

    def open(self, stack: ExitStack) -> Client:
        _prepare_embedded_workers(stack)
        cluster = stack.enter_context(LocalCluster(
            n_workers=self.n_workers, threads_per_worker=self.threads_per_worker or 1, processes=True,
            memory_limit=self.memory_limit, dashboard_address=":0",
        ))  # fmt: skip
        return _embedded_client(stack, cluster, self.debug)


@dataclass(frozen=True)
class LocalCuda:
    """dask-cuda's LocalCUDACluster: one worker process per visible GPU, each pinned to its GPU."""

    memory_limit: str = "auto"
    debug: bool = False
    remote = False

    def open(self, stack: ExitStack) -> Client:
        try:
            from dask_cuda import LocalCUDACluster  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ClusterSpecError(
                f"--cluster local-cuda needs dask-cuda ({exc}); install it on a machine with NVIDIA GPUs "
                "(pip install dask-cuda), or use --cluster local for CPU workers"
            ) from None
        _prepare_embedded_workers(stack)
        try:
            cluster = stack.enter_context(LocalCUDACluster(memory_limit=self.memory_limit, dashboard_address=":0"))
        except Exception as exc:  # no CUDA driver, no GPU
            raise ClusterSpecError(
                f"--cluster local-cuda found no usable CUDA GPU ({type(exc).__name__}: {exc}); check nvidia-smi "
                "and CUDA_VISIBLE_DEVICES, or use --cluster local for CPU workers"
            ) from None
        return _embedded_client(stack, cluster, self.debug)


@dataclass(frozen=True)
class Address:
    """A running scheduler at ``address`` (tcp://host:8786)."""

    address: str
    remote = True

    def open(self, stack: ExitStack) -> Client:
        return stack.enter_context(Client(self.address, timeout="20s"))


@dataclass(frozen=True)
class SchedulerFile:
    """A running scheduler named by the file ``dask scheduler --scheduler-file FILE`` wrote."""

    path: str
    remote = True

    def open(self, stack: ExitStack) -> Client:
        return stack.enter_context(Client(scheduler_file=scheduler_address(self.path), timeout="20s"))


ClusterKind = Local | LocalCuda | Address | SchedulerFile | Slurm


def parse_spec(
    spec: str = "local",
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str = "auto",
    slurm: SlurmSettings | Mapping[str, Any] | None = None,
    debug: bool = False,
) -> ClusterKind:
    """The cluster a spec string names; :class:`ClusterSpecError` saying the accepted forms if none."""
    spec = spec.strip()
    if spec == "local":
        return Local(n_workers, threads_per_worker, memory_limit, debug)
    if spec.startswith("local:"):
        count = spec.partition(":")[2]
        if not count.isdigit() or int(count) < 1:
            raise ClusterSpecError(f"cluster spec {spec!r}: give local:N with N >= 1 worker processes, e.g. local:4")
        if n_workers is not None and n_workers != int(count):
            raise ClusterSpecError(f"cluster spec {spec!r} and --workers {n_workers} disagree; give one of them")
        return Local(int(count), threads_per_worker, memory_limit, debug)
    if spec == "local-cuda":
        return LocalCuda(memory_limit, debug)
    if spec == "slurm":
        return Slurm(slurm if isinstance(slurm, SlurmSettings) else SlurmSettings.from_table(slurm))
    if spec.startswith(("tcp://", "tls://", "ucx://", "inproc://")):
        return Address(spec)
    if Path(spec).is_file():
        return SchedulerFile(spec)
    raise ClusterSpecError(f"cluster spec {spec!r} is not one of: {SPEC_HELP}; fix --cluster or [cluster].spec")


def _embedded_client(stack: ExitStack, cluster: Any, debug: bool) -> Client:
    client = stack.enter_context(Client(cluster))
    client.register_plugin(QuietWorkers(debug))  # also applied to workers that restart later
    return client


@contextmanager
def connect(
    spec: str | ClusterKind = "local",
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str = "auto",
    debug: bool = False,
    slurm: SlurmSettings | Mapping[str, Any] | None = None,
) -> Iterator[Client]:
    """Yield a connected :class:`distributed.Client`; clusters this opened are closed on exit.

    Workers of an embedded cluster ignore Ctrl-C (the client stops them; see
    :func:`start_workers_ignoring_ctrl_c`) and, unless ``debug``, do not log a task's error twice.
    """
    kind = spec if not isinstance(spec, str) else parse_spec(spec, n_workers, threads_per_worker, memory_limit,
                                                             slurm, debug)  # fmt: skip
    with ExitStack() as stack:
        client = kind.open(stack)
        if not debug and not isinstance(kind, Address | SchedulerFile):  # a running cluster's workers are its own
            client.register_plugin(QuietTensorFlow())  # also applied to workers that join later
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


def _reads_token(path: str, token: str) -> str:
    """On a worker: '' when ``path`` holds ``token``, else what this worker sees there."""
    try:
        seen = Path(path).read_text()
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return exc.strerror or str(exc)
    return "" if seen == token else "another file (a different directory at the same path)"


def check_workspace_visible(client: Client, root: Path) -> None:
    """Fail early unless every worker sees the directory ``root`` as this process does (a shared
    file system at the same path): a token written here must be read back by each worker."""
    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    token_path = root / f".reach-{uuid.uuid4().hex[:12]}"
    token = f"{socket.gethostname()} {os.getpid()} {uuid.uuid4().hex}"
    token_path.write_text(token)
    try:
        seen = client.run(_reads_token, str(token_path), token)
    finally:
        token_path.unlink(missing_ok=True)
    blind = {worker: why for worker, why in seen.items() if why}
    if blind:
        named = "; ".join(f"{w}: {why}" for w, why in sorted(blind.items())[:3])
        more = f" (and {len(blind) - 3} more)" if len(blind) > 3 else ""
        raise ClusterSpecError(
            f"{len(blind)} of {len(seen)} workers cannot see the workspace {root} ({named}{more}); put the "
            "workspace on a file system the workers share (e.g. /scratch or /home, not /tmp) and pass that path as "
            "--workspace"
        )


def this_machines_addresses() -> set[str]:
    """The names and IP addresses by which a worker's host may be this machine."""
    import psutil

    found = {"localhost", socket.gethostname(), socket.getfqdn()}
    for addresses in psutil.net_if_addrs().values():
        found.update(a.address.split("%")[0] for a in addresses if a.family in (socket.AF_INET, socket.AF_INET6))
    return found


def workers_elsewhere(client: Client) -> list[str]:
    """The workers of ``client``'s cluster that run on another machine than this process."""
    here = this_machines_addresses()
    return sorted(w for w, info in client.scheduler_info()["workers"].items() if info.get("host") not in here)


def dashboard_link(client: Client) -> str:
    """The Dask dashboard's address ('' when the scheduler serves none)."""
    with contextlib.suppress(Exception):
        return str(client.dashboard_link or "")
    return ""


_progress = {"enabled": False}


def show_progress(enabled: bool = True) -> None:
    """Turn progress bars on or off for :func:`compute` (the CLI turns them on)."""
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
