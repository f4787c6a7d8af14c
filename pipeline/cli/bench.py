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
        "ceiling, streaming fetch+score vs fetch alone), each writing its JSON with machine info to "
        "benchmarks/results/, then print one table and write the combined JSON there. --quick: small sizes.",
    )
    bench.add_argument("suite", nargs="?", default="all", choices=["catalog", "fetch", "train", "score", "all"],
                       help="which benchmark (default all)")  # fmt: skip
    bench.add_argument("--quick", action="store_true", help="small sizes: a check in minutes, not a measurement")
    bench.set_defaults(handler=_bench, needs_cluster=False)


def _bench(ns: argparse.Namespace, raw: dict, connect: options.ClientFactory) -> list[Manifest]:
    from pipeline.bench import run_benchmarks, table

    rows, path = run_benchmarks(ns.suite, quick=ns.quick)
    print(f"\nagnsurvey bench {ns.suite}{' --quick' if ns.quick else ''}\n{table(rows)}\n\nwrote {path}")
    return []
