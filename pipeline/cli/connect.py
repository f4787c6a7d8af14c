"""The cluster a command runs on: connected on first use, its dashboard printed, and a remote
one's workers checked to see the workspace before any work starts."""

from __future__ import annotations

import argparse
import contextlib
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pipeline.config import ClusterConfig
from pipeline.errors import ConfigError

WORKERS_TIMEOUT_S = 300.0  # a remote cluster's first worker (a SLURM job may queue a while)


def open_cluster(stack: ExitStack, cluster: ClusterConfig, ns: argparse.Namespace, raw: dict) -> Any:
    """Connect to the configured cluster, print its dashboard, and check that the workers of a
    remote one see the workspace (before any work starts)."""
    from cluster.client import ClusterSpecError, check_workspace_visible, connect, dashboard_link, parse_spec
    from cluster.slurm import Slurm, job_ids, worker_jobs

    try:
        kind = parse_spec(cluster.spec, cluster.n_workers, cluster.threads_per_worker, cluster.memory_limit,
                          cluster.slurm, ns.debug)  # fmt: skip
        client = stack.enter_context(connect(kind))
    except ClusterSpecError as exc:
        raise ConfigError(str(exc)) from None
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot connect to cluster {cluster.spec!r}: {exc}") from None
    link = dashboard_link(client)
    if link and not ns.quiet:
        workers = len(client.scheduler_info().get("workers", {}))
        print(f"dask: {type(kind).__name__.lower()} cluster, {workers} workers, dashboard {link}", file=sys.stderr)
    if isinstance(kind, Slurm) and not ns.quiet:
        with contextlib.suppress(Exception):  # a line of news: a worker leaving just now must not end the run
            started = ", ".join(sorted({j for j in worker_jobs(client).values() if j.isdigit()}, key=int))
            print(f"slurm: jobs {', '.join(job_ids(client.cluster))} submitted, workers running in {started} so far; "
                  "all are scancelled when this command ends", file=sys.stderr)  # fmt: skip
    workspace = getattr(ns, "workspace", None) or raw.get("workspace")
    if kind.remote:
        try:
            client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
        except TimeoutError:
            raise ConfigError(
                f"no Dask worker joined {cluster.spec!r} within {WORKERS_TIMEOUT_S:.0f} s; check that workers run "
                "(SLURM: squeue, and the jobs' logs) and can reach the scheduler"
            ) from None
    if kind.remote and workspace:
        try:
            check_workspace_visible(client, Path(workspace))
        except ClusterSpecError as exc:
            raise ConfigError(str(exc)) from None
    return client
