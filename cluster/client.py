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
import re
import shutil
import signal
import socket
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import dask
from distributed import Client, LocalCluster, WorkerPlugin, wait


class ClusterSpecError(ValueError):
    """The cluster spec names nothing we can connect to, or its workers cannot do the work."""


SPEC_HELP = (
    "local, local:N (N worker processes), local-cuda (one worker per GPU), slurm, a scheduler address "
    "(tcp://host:8786) or a scheduler file"
)


@dataclass(frozen=True)
class SlurmSettings:
    """The SLURM jobs dask-jobqueue submits: each job runs ``processes`` workers sharing ``cores`` and
    ``memory``; ``jobs`` of them are requested. None leaves Dask's ``jobqueue.slurm`` config value."""

    queue: str | None = None
    account: str | None = None
    walltime: str | None = "01:00:00"
    cores: int | None = None
    memory: str | None = None
    processes: int | None = None
    jobs: int = 1
    job_extra_directives: tuple[str, ...] = ()
    job_script_prologue: tuple[str, ...] = ()
    local_directory: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "job_extra_directives", tuple(self.job_extra_directives))
        object.__setattr__(self, "job_script_prologue", tuple(self.job_script_prologue))
        for key in ("cores", "processes", "jobs"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ClusterSpecError(f"cluster.slurm.{key} must be a positive integer (got {value!r})")
        if self.walltime is not None and not re.fullmatch(r"(\d+-)?\d{1,3}(:\d{2}){1,2}", str(self.walltime)):
            raise ClusterSpecError(f"cluster.slurm.walltime {self.walltime!r} must look like 01:00:00 or 1-12:00:00")

    @classmethod
    def from_table(cls, table: Mapping[str, Any] | None) -> SlurmSettings:
        """From the ``[cluster.slurm]`` table; unknown keys are named with the known ones."""
        table = dict(table or {})
        known = [f.name for f in fields(cls)]
        for key in table:
            if key not in known:
                raise ClusterSpecError(f"unknown key cluster.slurm.{key}; known keys: {', '.join(known)}")
        return cls(**table)


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


@dataclass(frozen=True)
class Slurm:
    """Workers submitted as SLURM batch jobs by dask-jobqueue (the ``hpc`` extra)."""

    settings: SlurmSettings = field(default_factory=SlurmSettings)
    remote = True

    def cluster(self) -> Any:
        """The (not yet scaled) SLURMCluster; its ``job_script()`` is what would be submitted."""
        try:
            from dask_jobqueue import SLURMCluster
        except ImportError as exc:
            raise ClusterSpecError(
                f"--cluster slurm needs dask-jobqueue ({exc}); pip install 'agnsurvey[hpc]'"
            ) from None
        s = self.settings
        options = {k: getattr(s, k) for k in ("queue", "account", "walltime", "cores", "memory", "processes",
                                             "local_directory") if getattr(s, k) is not None}  # fmt: skip
        if s.job_extra_directives:
            options["job_extra_directives"] = list(s.job_extra_directives)
        if s.job_script_prologue:
            options["job_script_prologue"] = list(s.job_script_prologue)
        try:
            return SLURMCluster(scheduler_options={"dashboard_address": ":0"}, **options)
        except ValueError as exc:  # e.g. cores or memory neither given nor in Dask's jobqueue config
            raise ClusterSpecError(
                f"--cluster slurm: {exc}; set it in [cluster.slurm] (cores, memory, queue, account, walltime)"
            ) from None

    def open(self, stack: ExitStack) -> Client:
        if shutil.which("sbatch") is None:
            raise ClusterSpecError(
                "--cluster slurm: sbatch is not on this machine's PATH; run agnsurvey on a SLURM login node (or "
                "load the slurm module)"
            )
        cluster = stack.enter_context(self.cluster())
        cluster.scale(jobs=self.settings.jobs)
        return stack.enter_context(Client(cluster))


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
        yield kind.open(stack)


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
