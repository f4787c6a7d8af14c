"""What a command prints when it ends: a stage's short table (:func:`print_summary`) and, for
``run``, one table of every stage (:func:`print_run_table`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import RunArgs
from storage.manifest import Manifest

if TYPE_CHECKING:  # the run's modules load every stage: not for --help
    from pipeline.run import StageRun


def print_run_table(args: RunArgs, stages: list[StageRun]) -> None:
    """One table for the whole run: per stage, what it did, rows, images, a metric, time; then where
    the report is."""
    ws = args.workspace
    lines = [("stage", "done", "rows", "images", "result", "time")]
    for s in stages:
        done = "ran" if s.ran else "skipped"
        if s.manifest is not None and s.manifest.unfinished:
            done = "incomplete"
        lines.append((s.name, done, f"{s.rows:,}" if s.rows is not None else "", f"{s.images:,}" if s.images else "",
                      s.result, f"{s.seconds:.1f} s" if s.ran else "-"))  # fmt: skip
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    print(f"\nrun {ws.root}")
    for row in lines:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    report = ws.reports / "report.md"
    if report.exists():
        print(f"\nreport  {report}\nplots   {', '.join(p.name for p in sorted(ws.reports.glob('*.png')))} in "
              f"{ws.reports}")  # fmt: skip
    if ws.scores.exists():
        print(f"scores  {ws.scores} (HATS: objid, ra, dec, p_agn, label, status; lsdb.open_catalog reads it)")


def print_summary(stage: str, manifest: Manifest) -> Manifest:
    """A short table: rows in/out, classes, drops by reason, speed, outputs; then any warnings."""
    m = manifest.to_dict()
    extra = m.get("extra", {})
    rows: list[tuple[str, str]] = [("rows in", f"{m['rows_in']:,}")] if m.get("rows_in") else []
    rows.append(("rows out", f"{m.get('rows_out', 0):,}"))
    for name, n in (extra.get("classes") or extra.get("class_counts") or {}).items():
        rows.append((f"  class {name}", f"{n:,}"))
    for name, n in extra.get("status", {}).items():
        rows.append((f"  status {name}", f"{n:,}"))
    if "threshold" in extra and "policy" in extra:
        rows.append(("threshold", f"{extra['threshold']:.4f} ({extra.get('policy')}, chosen on the val split)"))
    paper = extra.get("paper", {})
    for section in ("final", "test"):
        for key, value in (extra.get(section) or {}).items():
            if isinstance(value, float | int):
                text = f"{value:,}" if isinstance(value, int) else f"{value:.4f}"
                rows.append((f"  {section} {key}", text + (f"  (paper {paper[key]:,})" if key in paper else "")))
    scoring = extra.get("scoring")
    if scoring:
        rows.append(("this run", f"{scoring['images']:,} images scored in {scoring['parts_scored']:,} parts "
                                 f"({scoring['images_per_second'] or 0:,.0f} img/s), {scoring['parts_skipped']:,} "
                                 "parts already complete"))  # fmt: skip
        labels = extra.get("labels", {})
        rows.append(("labels", f"{labels.get('agn', 0):,} AGN, {labels.get('sf', 0):,} star-forming at threshold "
                               f"{extra['threshold']:.4f}"))  # fmt: skip
    this_run = extra.get("this_run")
    if this_run:
        rows.append(("this run", f"{this_run['rows_requested']:,} rows requested, {this_run['requests']:,} requests, "
                                 f"{this_run['retries']:,} retries, {this_run['throttled']:,} throttled"))  # fmt: skip
    dropped = m.get("dropped", {})
    if m.get("rows_in") and "status" not in extra and (dropped or stage in ("ingest", "label")):
        rows.append(("dropped", f"{sum(dropped.values()):,}"))
        by_line = extra.get("problems_by_line")
        if by_line:
            rows.extend((f"  {reason} (rows may repeat)", f"{n:,}") for reason, n in by_line.items())
        else:
            rows.extend((f"  {reason}", f"{n:,}") for reason, n in dropped.items())
    seconds, done = m.get("seconds", 0.0), m.get("rows_in") or m.get("rows_out")
    if seconds and done:
        rows.append(("time", f"{seconds:.1f} s ({done / seconds:,.0f} rows/s)"))
    for key, value in m.get("outputs", {}).items():
        if isinstance(value, dict) and "path" in value:
            value = value["path"]
        if isinstance(value, str | int):
            rows.append((key, str(value)))
        elif isinstance(value, list) and value and isinstance(value[0], str):
            rows.append((key, ", ".join(Path(v).name for v in value)))
    width = max(len(r[0]) for r in rows)
    print(f"\n{stage}")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    for warning in manifest.warnings:
        print(f"agnsurvey: warning: {warning}", file=sys.stderr)
    return manifest
