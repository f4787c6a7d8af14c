"""Shared benchmark helpers: what machine a number came from, where it is saved, how it is printed.

Every benchmark writes one JSON file to ``benchmarks/results/<name>-<UTC timestamp>.json`` holding
:func:`machine_info` (CPU, cores, memory, OS, Python and key package versions, git commit), its
parameters and all raw timings, and prints a human table with :func:`print_table`. :func:`report`
is the tail every benchmark shares: its tables and notes printed, its JSON written.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(os.environ.get("AGNSURVEY_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
PACKAGES: tuple[str, ...] = ("dask", "distributed", "pandas", "pyarrow", "numpy", "astropy", "agnsurvey")


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else whatever ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_bytes() -> int | None:
    """Total physical memory in bytes (psutil if installed, else /proc/meminfo), None if unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def usable_cores() -> int:
    """Cores this process may run on (CPU affinity), which can be fewer than the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit(repo: Path | None = None) -> dict[str, Any]:
    """HEAD commit of the repository holding the benchmarks, and whether the tree has local changes."""
    cwd = repo or Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": None}
    return {"commit": head, "dirty": bool(status.strip())}


def machine_info(extra_packages: Sequence[str] = ()) -> dict[str, Any]:
    """Where the numbers were measured: hardware, OS, software versions, code version.

    ``extra_packages``: more distributions whose versions matter to this benchmark (e.g. aiohttp).
    """
    mem = memory_bytes()
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "memory_gib": round(mem / 2**30, 1) if mem else None,
        "os": platform.platform(),
        "hostname": platform.node(),
        "python": platform.python_version(),
        "packages": package_versions(tuple(PACKAGES) + tuple(n for n in extra_packages if n not in PACKAGES)),
        "git": git_commit(),
    }


def write_results(
    name: str, payload: dict[str, Any], machine: dict[str, Any] | None = None, directory: Path = RESULTS_DIR
) -> Path:
    """Write ``payload`` plus ``machine`` to ``<directory>/<name>-<timestamp>.json``.

    Pass the :func:`machine_info` taken when the benchmark started: the git commit is checked again
    now, and ``git_changed_during_run`` says whether the code changed while it ran.
    """
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = directory / f"{name}-{stamp}.json"
    machine = machine or machine_info()
    now_git = git_commit()
    machine = {**machine, "git_at_end": now_git, "git_changed_during_run": now_git != machine["git"]}
    body = {"benchmark": name, "timestamp_utc": stamp, "machine": machine, **payload}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(body, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def format_rate(rows_per_s: float | None) -> str:
    """12_345_678 → '12.3M'; None → '-'."""
    if rows_per_s is None:
        return "-"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if rows_per_s >= scale:
            return f"{rows_per_s / scale:.2f}{unit}"
    return f"{rows_per_s:.0f}"


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], right: Sequence[str] = ()) -> str:
    """Print ``rows`` (dicts of already formatted values) as an aligned text table; returns the text."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if c in right else v.ljust(w) for v, w, c in zip(values, widths, columns, strict=True)]
        return "  ".join(parts).rstrip()

    text = "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])
    print(text)
    return text


def summary_row(stage: str, work: str, rate: float, unit: str, reference: str, reference_rate: float) -> dict[str, Any]:
    """One line of ``agnsurvey bench``'s table: a stage's rate beside the reference measured in the
    same run (an alternative, or the measured ceiling), and their ratio."""
    ratio = rate / reference_rate if reference_rate else None
    return {"stage": stage, "work": work, "rate": round(rate, 2), "unit": unit, "reference": reference,
            "reference_rate": round(reference_rate, 2),
            "ratio": float(f"{ratio:.3g}") if ratio is not None else None}  # fmt: skip  (3 figures: 0.0344, not 0.034)


def arg_parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's command line, described by the first paragraph of its module docstring."""
    return argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])


@dataclass(frozen=True)
class Table:
    """One side-by-side table of :func:`report`: rows of formatted values, the columns in order and
    those aligned right. ``key``: the payload key its text is saved under (None: printed only);
    ``heading``: the line printed above it (a blank line by default)."""

    rows: Sequence[dict[str, Any]]
    columns: Sequence[str]
    right: Sequence[str] = ()
    key: str | None = "table_text"
    heading: str = ""


def report(name: str, machine: dict[str, Any], payload: dict[str, Any], tables: Sequence[Table] = (),
           notes: Sequence[str] = (), summary: list[dict[str, Any]] | None = None,
           notes_key: str | None = "notes") -> Path:  # fmt: skip
    """Print ``tables`` then ``notes``; write ``<name>-<timestamp>.json`` (``summary`` first, for
    ``agnsurvey bench``, then ``payload``, each saved table's text and, under ``notes_key``, the notes)
    with the ``machine`` taken when the benchmark started; print and return its path."""
    texts = {}
    for table in tables:
        print(table.heading)
        text = print_table(table.rows, table.columns, right=table.right)
        if table.key is not None:
            texts[table.key] = text
    if notes:
        print("\n".join(notes))
    body = ({"summary": summary} if summary is not None else {}) | payload | texts
    if notes_key is not None:
        body[notes_key] = list(notes)
    path = write_results(name, body, machine=machine)
    print(f"results: {path}")
    return path
