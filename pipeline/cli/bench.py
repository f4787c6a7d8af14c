"""``agnsurvey bench``: the benchmarks in ``benchmarks/``, one table."""

from __future__ import annotations

import argparse

from pipeline.cli import options
from storage.manifest import Manifest


def add_parsers(stages: argparse._SubParsersAction) -> None:
    """``bench``."""
    bench = stages.add_parser(
        "bench",
        help="run the benchmarks in benchmarks/ and print one table: rate beside a reference measured in the same run",
        description="Run benchmarks/bench_<STAGE>.py (catalog: ingest+label vs pandas and the I/O floor; fetch: vs "
        "the latency/CPU bound; train: input pipeline vs the in-memory ceiling; score: Dask scoring vs the in-memory "
        "ceiling, streaming fetch+score vs fetch alone; gpu: on a machine with NVIDIA GPUs, paper CNN and ResNet-18 "
        "training in mixed precision on one and on all GPUs vs the in-memory ceiling, scoring from the cube on one "
        "GPU and on a LocalCUDACluster, the batch reader per core; under 8 minutes, KERAS_BACKEND=jax, dask-cuda for "
        "the cluster row), each writing its JSON with machine info to benchmarks/results/, then print one table and "
        "write the combined JSON there. --quick: small sizes (gpu: its --dry-run, the same code paths on the CPU; "
        "`all` runs gpu only with --quick).",
    )
    bench.add_argument("suite", nargs="?", default="all", choices=["catalog", "fetch", "train", "score", "gpu", "all"],
                       help="which benchmark (default all)")  # fmt: skip
    bench.add_argument("--quick", action="store_true", help="small sizes: a check in minutes, not a measurement")
    bench.set_defaults(handler=_bench, needs_cluster=False)


def _bench(ns: argparse.Namespace, raw: dict, connect: options.ClientFactory) -> list[Manifest]:
    from pipeline.bench import run_benchmarks, table

    rows, path = run_benchmarks(ns.suite, quick=ns.quick)
    print(f"\nagnsurvey bench {ns.suite}{' --quick' if ns.quick else ''}\n{table(rows)}\n\nwrote {path}")
    return []
