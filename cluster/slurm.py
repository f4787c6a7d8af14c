"""Dask workers as Slurm batch jobs (dask-jobqueue's ``SLURMCluster``, the ``hpc`` extra).

Each job runs ``processes`` Dask workers sharing ``cores`` and ``memory``; ``jobs`` of them are
submitted when the cluster opens, and scancelled when it closes (however the run ends: done, an
error, Ctrl-C). A job that never starts (a partition with no free node) is not waited on forever:
after ``start_timeout`` seconds with no worker, the error names the partition, the job ids and
Slurm's reason, and the jobs are cancelled.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field, fields
from typing import Any

from distributed import Client

from cluster.errors import ClusterSpecError


@dataclass(frozen=True)
class SlurmSettings:
    """The SLURM jobs dask-jobqueue submits: each job runs ``processes`` workers sharing ``cores`` and
    ``memory``; ``jobs`` of them are requested. None leaves Dask's ``jobqueue.slurm`` config value.
    ``job_script_prologue``: shell lines run before the workers start (activate the environment);
    ``log_directory``: where the jobs' output files go (default: the directory sbatch runs in);
    ``start_timeout``: seconds to wait for the first worker before giving up on pending jobs."""

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
    log_directory: str | None = None
    start_timeout: float = 600.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "job_extra_directives", tuple(self.job_extra_directives))
        object.__setattr__(self, "job_script_prologue", tuple(self.job_script_prologue))
        for key in ("cores", "processes", "jobs"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ClusterSpecError(f"cluster.slurm.{key} must be a positive integer (got {value!r})")
        if self.walltime is not None and not re.fullmatch(r"(\d+-)?\d{1,3}(:\d{2}){1,2}", str(self.walltime)):
            raise ClusterSpecError(f"cluster.slurm.walltime {self.walltime!r} must look like 01:00:00 or 1-12:00:00")
        timeout = self.start_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ClusterSpecError(f"cluster.slurm.start_timeout must be a number of seconds > 0 (got {timeout!r})")

    @classmethod
    def from_table(cls, table: Mapping[str, Any] | None) -> SlurmSettings:
        """From the ``[cluster.slurm]`` table; unknown keys are named with the known ones."""
        table = dict(table or {})
        known = [f.name for f in fields(cls)]
        for key in table:
            if key not in known:
                raise ClusterSpecError(f"unknown key cluster.slurm.{key}; known keys: {', '.join(known)}")
        return cls(**table)


@dataclass(frozen=True)
class Slurm:
    """Workers submitted as SLURM batch jobs by dask-jobqueue (the ``hpc`` extra)."""

    settings: SlurmSettings = field(default_factory=SlurmSettings)
    remote = True

    def cluster(self) -> Any:
        """The (not yet scaled) SLURMCluster; its ``job_script()`` is what would be submitted."""
        SLURMCluster = _slurm_cluster_class()
        s = self.settings
        keys = ("queue", "account", "walltime", "cores", "memory", "processes", "local_directory", "log_directory")
        options = {k: getattr(s, k) for k in keys if getattr(s, k) is not None}
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
        """Submit the jobs and return a client once the first worker has joined (the jobs are
        cancelled when ``stack`` closes)."""
        if shutil.which("sbatch") is None:
            raise ClusterSpecError(
                "--cluster slurm: sbatch is not on this machine's PATH; run agnsurvey on a SLURM login node (or "
                "load the slurm module)"
            )
        cluster = self.cluster()
        stack.callback(_close, cluster)
        cluster.scale(jobs=self.settings.jobs)
        client = stack.enter_context(Client(cluster))
        wait_for_a_job(client, cluster, self.settings.start_timeout)
        return client


def _close(cluster: Any) -> None:
    """Close the cluster (scancel its jobs); a job that never started makes dask-jobqueue's close
    raise, which must not replace the error that ends the command."""
    try:
        cluster.close()
    except Exception as exc:  # noqa: BLE001
        ids = ", ".join(job_ids(cluster)) or "none submitted"
        print(f"agnsurvey: the Slurm cluster did not close cleanly ({type(exc).__name__}: {exc}); check squeue for "
              f"its jobs ({ids})", file=sys.stderr)  # fmt: skip


def _slurm_cluster_class() -> type:
    """dask-jobqueue's SLURMCluster, imported with this process's Ctrl-C handler kept: importing
    dask_jobqueue sets SIGINT to ``sys.exit()`` (its ``runner`` module), which would make a Ctrl-C
    end a run with exit status 0 and no word of what was left."""
    previous = signal.getsignal(signal.SIGINT)
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as exc:
        raise ClusterSpecError(f"--cluster slurm needs dask-jobqueue ({exc}); pip install 'agnsurvey[hpc]'") from None
    finally:
        if previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)
    return SLURMCluster


def job_ids(cluster: Any) -> list[str]:
    """The Slurm job ids of a SLURMCluster's submitted jobs, in submission order."""
    return sorted((str(job.job_id) for job in cluster.workers.values() if getattr(job, "job_id", None)), key=int)


def describe_jobs(ids: list[str]) -> str:
    """'job 12 PENDING in partition full (PartitionDown), ...' for the jobs squeue still knows."""
    if not ids:
        return "no job was submitted"
    try:
        done = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i|%P|%T|%r"], capture_output=True,
                              text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"jobs {', '.join(ids)} (squeue could not tell their state: {exc})"
    lines = [line.split("|") for line in done.stdout.split() if line.count("|") == 3]
    if not lines:
        return f"jobs {', '.join(ids)} (squeue knows none of them: {done.stderr.strip() or 'they ended'})"
    return "; ".join(f"job {i} {state} in partition {part}" + (f" ({why})" if why not in ("", "None") else "")
                     for i, part, state, why in lines)  # fmt: skip


SUBMIT_CHECK_S = 5.0  # with no job id by then, sbatch is asked why (dask-jobqueue only logs its refusal)


def wait_for_a_job(client: Client, cluster: Any, timeout_s: float) -> None:
    """Return once a worker has joined; after ``timeout_s`` with none, a :class:`ClusterSpecError`
    that names the jobs, their partition and Slurm's reason (the caller's stack then cancels them).
    A job script that sbatch refuses (no such partition or account) is an error within seconds."""
    started = time.monotonic()
    checked = False
    while not client.scheduler_info()["workers"]:
        waited = time.monotonic() - started
        if not checked and waited > SUBMIT_CHECK_S and not job_ids(cluster):
            checked = True
            refusal = sbatch_refusal(cluster.job_script())
            if refusal:
                raise ClusterSpecError(f"--cluster slurm: sbatch refuses the worker job: {refusal}; fix "
                                       "[cluster.slurm] (queue, account, cores, memory, walltime)")  # fmt: skip
        if waited > timeout_s:
            raise ClusterSpecError(
                f"no Slurm job of this run started within {timeout_s:g} s: {describe_jobs(job_ids(cluster))}; "
                "the jobs are cancelled. Choose a partition with free nodes ([cluster.slurm] queue), ask for less "
                "(cores, memory, walltime), or wait longer (cluster.slurm.start_timeout)"
            )
        time.sleep(0.5)


def sbatch_refusal(script: str) -> str:
    """What sbatch says against ``script`` (``sbatch --test-only``: checked, not submitted); '' if nothing."""
    try:
        done = subprocess.run(["sbatch", "--test-only"], input=script, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sbatch could not be asked ({exc})"
    return " ".join(done.stderr.split()) if done.returncode else ""


def worker_jobs(client: Client) -> dict[str, str]:
    """Each worker's Slurm job id, as the worker's own environment tells (``''``: not in a job)."""
    return client.run(os.getenv, "SLURM_JOB_ID", "")
