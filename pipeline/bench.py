"""``agnsurvey bench``: run the benchmarks in ``benchmarks/`` and print one table of their results.

Each benchmark script measures a stage beside a reference in the same run (an alternative, or the
measured ceiling) and writes its JSON, with machine info, to ``benchmarks/results/``; its
``summary`` rows (stage, work, rate, reference, reference rate, ratio) are what this table shows.
The combined table is written there too (``bench-<timestamp>.json``). ``AGNSURVEY_BENCH_RESULTS``
names another results directory. ``gpu`` (``benchmarks/gpu_check.py``) needs NVIDIA GPUs: ``all``
runs it only with ``--quick``, as its ``--dry-run`` (the same code paths on the CPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.errors import AgnSurveyError

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# name: (script, arguments of the full run, arguments of --quick)
SUITES: dict[str, tuple[str, list[str], list[str]]] = {
    "catalog": ("bench_catalog.py", ["--sizes", "1000000", "10000000"], ["--sizes", "200000"]),
    "fetch": ("bench_fetch.py", [], ["--images", "512", "--concurrency", "8", "64", "--baseline-images", "40",
                                     "--cpu-images", "128", "--no-legacystamps", "--bricks", "2",
                                     "--per-brick", "1", "10", "100", "--brick-cutouts", "200"]),
    "train": ("bench_train.py", [], ["--quick", "--backends", "tensorflow"]),
    "score": ("bench_score.py", [], ["--quick"]),
    "gpu": ("gpu_check.py", [], ["--dry-run"]),  # needs NVIDIA GPUs; --quick: the same code paths on the CPU
}  # fmt: skip


class BenchError(AgnSurveyError):
    """A benchmark could not run or wrote no result."""


def run_benchmarks(which: str = "all", quick: bool = False, directory: Path = BENCHMARKS) -> tuple[list[dict], Path]:
    """Run the ``which`` benchmark (or ``all``), each in its own process with its output shown;
    returns the summary rows of every result and the path of the combined JSON."""
    if not (directory / "_machine.py").exists():
        raise BenchError(f"the benchmarks are not here ({directory}); run `agnsurvey bench` from a checkout of the "
                         "agnsurvey repository (pip install -e .)")  # fmt: skip
    names = [n for n in SUITES if n != "gpu" or quick] if which == "all" else [which]
    rows, files = [], []
    for name in names:
        script, full, short = SUITES[name]
        started = time.time()
        print(f"\n== bench {name}: python benchmarks/{script} {' '.join(short if quick else full)}", flush=True)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
        done = subprocess.run([sys.executable, str(directory / script), *(short if quick else full)],
                              cwd=directory.parent, env=env)  # fmt: skip
        result = newest_result(results_dir(directory), script.removesuffix(".py"), since=started)
        if done.returncode or result is None:
            raise BenchError(f"benchmarks/{script} failed (exit {done.returncode}); its output is above. Re-run it "
                             "alone to see why")  # fmt: skip
        files.append(result.name)  # a name, not this machine's path
        rows += [dict(r, result=result.name) for r in json.loads(result.read_text()).get("summary", [])]
    return rows, write_combined(directory, rows, files, quick)


def results_dir(directory: Path = BENCHMARKS) -> Path:
    return Path(os.environ.get("AGNSURVEY_BENCH_RESULTS") or directory / "results")


def newest_result(results: Path, name: str, since: float) -> Path | None:
    """The newest ``<name>-<timestamp>.json`` written at or after ``since`` (epoch seconds)."""
    found = [p for p in results.glob(f"{name}-*.json") if p.stat().st_mtime >= since - 1]
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def write_combined(directory: Path, rows: list[dict], files: list[str], quick: bool) -> Path:
    sys.path.insert(0, str(directory))
    try:
        from _machine import machine_info, write_results  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(directory))
    return write_results("bench", {"quick": quick, "results": files, "summary": rows}, machine_info(),
                         directory=results_dir(directory))  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    """The combined table: stage, work, rate, the reference measured in the same run, the ratio."""
    head = ("stage", "work", "rate", "reference (same run)", "ratio")
    lines = [head] + [(r["stage"], r["work"], f"{r['rate']:,.1f} {r['unit']}",
                       f"{r['reference']}: {r['reference_rate']:,.1f}",
                       f"{r['ratio']:.2f}" if r.get("ratio") is not None else "-") for r in rows]  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines)
