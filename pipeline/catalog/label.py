"""Stage ``label``: ingested catalog → ``WS/labels/`` with BPT ratios, class, label and split.

A row is labelled iff its four line fluxes are finite and > 0 (and, with ``min_snr``, every line
has flux/err >= min_snr). Every dropped row is counted once, under the set of problems it has
("non-positive: hb_flux, oiii_flux"), so the counts add up to the rows dropped; the manifest also
holds the per-line totals. Labelled rows keep the catalog's ``cube_row`` (their row in the image
cube, which belongs to the catalog): relabelling never invalidates a cutout.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from dask import delayed
from distributed import Client

from cluster.client import compute
from pipeline.catalog import bpt, bpt_plots
from pipeline.catalog.args import LabelArgs
from pipeline.catalog.schema import ERROR_COLUMNS, LINE_COLUMNS
from pipeline.catalog.sources import map_lines_hint, missing_lines_text, nsa_v1_message
from pipeline.catalog.splits import SPLITS, split_codes
from pipeline.errors import CatalogError, WorkspaceError
from pipeline.stage import Step, writing
from storage.hats_catalog import (
    Written,
    check_table,
    finish_catalog,
    is_hats,
    partition_files,
    pixel_path,
    preload_hats,
    read_partition,
    write_partition,
)
from storage.manifest import Manifest
from storage.workspace import atomic_directory

PROBLEMS: tuple[str, ...] = ("non-finite", "non-positive", "low S/N")  # most severe first
LABEL_COLUMNS = ("log_nii_ha", "log_oiii_hb", "bpt_class", "label", "split")
CLASS_CATEGORIES = list(bpt.CLASS_NAMES.values())  # bpt_class codes → names (the dictionary written)
NEEDED = ("objid", *LINE_COLUMNS, *ERROR_COLUMNS)  # what labelling reads of a catalog partition


def flux_problems(columns: Mapping[str, Any], min_snr: float | None) -> np.ndarray:
    """Bitmask per row (uint16): bit 3*line + k for problem k of line (Hα, [NII], Hβ, [OIII]).
    ``columns``: a DataFrame, or any mapping of the line (and error) columns to arrays."""
    mask = np.zeros(len(columns[LINE_COLUMNS[0]]), dtype=np.uint16)
    for i, (flux_col, err_col) in enumerate(zip(LINE_COLUMNS, ERROR_COLUMNS, strict=True)):
        flux = np.asarray(columns[flux_col])
        flux = flux if flux.dtype.kind == "f" else flux.astype(np.float64)  # float32 fluxes are tested as stored
        finite = np.isfinite(flux)
        with np.errstate(invalid="ignore"):
            bits = (~finite).astype(np.uint16)
            bits |= (finite & ~(flux > 0)).astype(np.uint16) << np.uint16(1)
            if min_snr is not None:
                flux = flux.astype(np.float64)
                err = np.asarray(columns[err_col], dtype=np.float64)
                snr_ok = np.isfinite(err) & (err > 0) & (flux >= min_snr * err)
                bits = np.where((bits == 0) & ~snr_ok, 4, bits).astype(np.uint16)
        mask |= bits << np.uint16(3 * i)
    return mask


def describe_problems(mask: int) -> str:
    """Human name of a problem bitmask: the worst problem and the lines that have it."""
    for k, name in enumerate(PROBLEMS):
        lines = [LINE_COLUMNS[i] for i in range(4) if (mask >> (3 * i)) & (1 << k)]
        if lines:
            return f"{name}: {', '.join(lines)}"
    return "ok"


def worst_problems(mask: np.ndarray) -> np.ndarray:
    """Keep, per row, only the bits of its most severe problem kind (so each row counts once)."""
    out = np.zeros_like(mask)
    for k in reversed(range(len(PROBLEMS))):  # least severe first: a more severe kind overwrites it
        kind = mask & np.uint16(sum(1 << (3 * i + k) for i in range(4)))
        np.copyto(out, kind, where=kind != 0)
    return out


def label_columns(columns: Mapping[str, Any], scheme: bpt.Scheme, min_snr: float | None,
                  split: tuple) -> tuple[np.ndarray, dict[str, np.ndarray]]:  # fmt: skip
    """Kernel: ``(problems, new)`` for a catalog partition: ``problems``, for every row, the bitmask
    of :func:`flux_problems` reduced to the worst kind (0 = labelled); ``new``, for the labelled
    rows only (in order), the BPT columns as arrays (class and split are int8 codes into
    ``bpt.CLASS_NAMES`` and ``SPLITS``)."""
    problems = worst_problems(flux_problems(columns, min_snr))
    rows = np.flatnonzero(problems == 0)
    nii, ha, oiii, hb = (np.asarray(columns[c])[rows] for c in ("nii_flux", "ha_flux", "oiii_flux", "hb_flux"))
    x, y = bpt.log_ratios(nii, ha, oiii, hb)
    classes = bpt.bpt_class(x, y, scheme)
    new = {
        "log_nii_ha": x.astype(np.float32),
        "log_oiii_hb": y.astype(np.float32),
        "bpt_class": classes,
        "label": bpt.training_label(classes),
        "split": split_codes(np.asarray(columns["objid"])[rows], split),
    }
    return problems, new


def _label_partition_file(source: Path, out: Path, order: int, pixel: int,
                          args: LabelArgs) -> tuple[pd.DataFrame, dict | None, Written | None]:  # fmt: skip
    """Label one catalog partition into the same pixel of the labels (Arrow in, Arrow out); returns
    its tallies (summed on the client) and what was written (None when no row passed the cuts)."""
    table = _checked(read_partition(source, use_threads=False), source)  # one thread: workers are the parallelism
    problems, new = label_columns({c: table.column(c).to_numpy() for c in NEEDED}, args.scheme, args.min_snr,
                                  args.split)  # fmt: skip
    n = np.bincount(problems.astype(np.intp) * 8, minlength=8)  # rows by problem (labelled ones at 0)
    n[: len(CLASS_CATEGORIES)] = np.bincount(new["bpt_class"], minlength=len(CLASS_CATEGORIES))  # ... by class
    keys = np.flatnonzero(n)
    summary = pd.DataFrame({"_problems": keys // 8, "bpt_class": [CLASS_CATEGORIES[k] for k in keys % 8], "n": n[keys]})
    rows = np.flatnonzero(problems == 0)
    counts = None  # the BPT plots' histograms: only when they are drawn
    if args.plots:
        counts = bpt_plots.bpt_hist_counts(new["log_nii_ha"], new["log_oiii_hb"], new["label"])
    if not rows.size:
        return summary, counts, None
    kept = _nan_for_null(table.take(pa.array(rows)).replace_schema_metadata(None), source)
    for name, values in new.items():
        if name in ("bpt_class", "split"):
            names = CLASS_CATEGORIES if name == "bpt_class" else list(SPLITS)
            kept = kept.append_column(name, pa.DictionaryArray.from_arrays(pa.array(values), pa.array(names)))
        else:
            kept = kept.append_column(name, pa.array(values))
    written = write_partition(kept, out, order, pixel, dictionary_columns=("bpt_class", "split"), not_null=True)
    return summary, counts, written


KEYS = ("objid", "cube_row", "_healpix_29")  # integers in every row: a galaxy's id, cube row and sky index


def _checked(table: pa.Table, source: Path) -> pa.Table:
    """A catalog partition, after checking that it has the columns labelling reads and that its
    keys are integers with a value in every row (a partition rewritten by hand, e.g. by pandas,
    may have lost either)."""
    missing = [c for c in (*KEYS, *NEEDED) if c not in table.column_names]
    bad = [c for c in KEYS if c in table.column_names
           and (not pa.types.is_integer(table.schema.field(c).type) or table.column(c).null_count)]  # fmt: skip
    if missing or bad:
        problems = [f"no column {c!r}" for c in dict.fromkeys(missing)]
        problems += [f"column {c!r} is not integers in every row" for c in bad]
        raise _reingest(source, f"{'; '.join(problems)}, which ingest always writes")
    return table


def _reingest(source: Path, problem: str) -> WorkspaceError:
    """The error for a catalog partition ingest would not have written."""
    return WorkspaceError(
        f"{source}: {problem}; re-run `agnsurvey ingest` (the same inputs give the same rows and cube rows)"
    )


def _nan_for_null(table: pa.Table, source: Path) -> pa.Table:
    """``table`` with the nulls of its float columns as NaN, so that the labels declare every
    column not null, as ingest does (catalogs ingested by earlier versions, through pandas, stored
    a NaN as a null); a null in any other column is an error that names the fix."""
    for i, (field, column) in enumerate(zip(table.schema, table.columns, strict=True)):
        if not column.null_count:
            continue
        if not pa.types.is_floating(field.type):
            raise _reingest(source, f"column {field.name!r} has empty values, which ingest never writes")
        table = table.set_column(i, field, pc.fill_null(column, pa.scalar(np.nan, field.type)))
    return table


def check_catalog(args: LabelArgs) -> dict:
    """The ingest manifest, after checking the workspace has a catalog with line fluxes."""
    ws = args.workspace
    manifest = ws.read_manifest("ingest")
    if manifest is None or not ws.catalog.exists():
        raise WorkspaceError(
            f"{ws.root} has no ingested catalog; run `agnsurvey ingest CATALOG --workspace {ws.root}` first"
        )
    check_table(ws.catalog, f"`agnsurvey ingest CATALOG --workspace {ws.root}`")
    missing = missing_lines(manifest)
    if len(missing) == len(manifest["inputs"]):
        if all(i["nsa_v1"] for i in manifest["inputs"]):
            raise CatalogError(nsa_v1_message(list(missing)))
        lacks = "; ".join(missing_lines_text(path, lines) for path, lines in missing.items())
        needed = sorted({c for lines in missing.values() for c in lines}, key=LINE_COLUMNS.index)
        raise CatalogError(
            f"nothing to label: {lacks} (at ingest). Labelling needs all four lines (Hα, [NII], Hβ, [OIII]); "
            f"re-ingest mapping them with {map_lines_hint(needed)}"
        )
    if args.min_snr is not None:
        no_err = {i["path"]: [e for e in ERROR_COLUMNS if e not in i["columns"]] for i in manifest["inputs"]}
        no_err = {path: errs for path, errs in no_err.items() if errs}
        if no_err:
            lacks = "; ".join(f"{path} has no {', '.join(errs)} column" for path, errs in no_err.items())
            needed = sorted({e for errs in no_err.values() for e in errs}, key=ERROR_COLUMNS.index)
            raise CatalogError(
                f"--min-snr needs the flux errors of all four lines, but {lacks}; drop --min-snr, or re-ingest "
                f"mapping them with {' '.join(f'--column {e}=NAME' for e in needed)}"
            )
    return manifest


def missing_lines(ingest_manifest: dict) -> dict[str, list[str]]:
    """Per ingested file that lacks some, the canonical line-flux columns it had no source for."""
    out = {}
    for source in ingest_manifest["inputs"]:
        lines = [c for c in LINE_COLUMNS if c not in source["columns"]]
        if lines:
            out[source["path"]] = lines
    return out


def label(args: LabelArgs, client: Client | None = None) -> Manifest:
    """Label every ingested galaxy; writes ``WS/labels/`` and BPT plots, returns the manifest."""
    with writing(args.workspace, "labels", "label", reads=("catalog",)):
        return _label(args, client)


def _label(args: LabelArgs, client: Client | None) -> Manifest:
    ingest_manifest = check_catalog(args)
    ws = args.workspace
    manifest = Manifest(stage="label", parameters=parameters(args))
    manifest.inputs = [{"path": str(ws.catalog), "rows": ingest_manifest["rows_out"]}]
    without = missing_lines(ingest_manifest)
    if without:
        manifest.extra["inputs_without_lines"] = list(without)
        manifest.warnings = [
            f"{missing_lines_text(path, lines)}: its rows are dropped (non-finite flux)"
            for path, lines in without.items()
        ]

    preload_hats()
    partitions = partition_files(ws.catalog)
    with atomic_directory(ws.labels) as tmp:
        tallies = compute(
            *[delayed(_label_partition_file)(path, pixel_path(tmp, k, p), k, p, args) for k, p, path in partitions],
            client=client,
        )
        written = [t[2] for t in tallies if t[2] is not None]
        summary = pd.concat([t[0] for t in tallies], ignore_index=True)
        if not written:  # raised inside the block: the previous labels stay
            reasons = summary.groupby("_problems")["n"].sum().sort_values(ascending=False)
            worst = "; ".join(f"{describe_problems(int(m))}: {int(n):,}" for m, n in reasons.head(4).items())
            raise CatalogError(
                f"no galaxy in {ws.catalog} passed the flux cuts ({worst}); check the line-flux column map"
                + (" or lower --min-snr" if args.min_snr is not None else "")
            )
        finish_catalog(tmp, "labels", written)

    totals = summary.groupby(["_problems", "bpt_class"])["n"].sum().reset_index()
    dropped = totals[totals["_problems"] != 0].groupby("_problems")["n"].sum()
    kept = totals[totals["_problems"] == 0].groupby("bpt_class")["n"].sum()
    manifest.rows_in = int(totals["n"].sum())
    manifest.rows_out = int(kept.sum())
    manifest.dropped = {describe_problems(int(m)): int(n) for m, n in dropped.sort_values(ascending=False).items()}
    manifest.extra["classes"] = {name: int(kept.get(name, 0)) for name in bpt.CLASS_NAMES.values()}
    manifest.extra["problems_by_line"] = _by_line(dropped)
    manifest.outputs = {"labels": str(ws.labels), "format": "HATS (lsdb.open_catalog)", "partitions": len(written)}
    if args.plots and manifest.rows_out:
        hist = bpt_plots.sum_counts([t[1] for t in tallies])
        manifest.outputs["plots"] = [str(p) for p in bpt_plots.bpt_histograms(hist, ws.reports, args.scheme)]
    manifest.finish()
    ws.write_manifest("label", manifest.to_dict())
    return manifest


def _by_line(dropped: pd.Series) -> dict[str, int]:
    """Non-exclusive totals per (problem, line): a row with two bad lines counts under both."""
    out: dict[str, int] = {}
    for mask, n in dropped.items():
        for i, line in enumerate(LINE_COLUMNS):
            for k, name in enumerate(PROBLEMS):
                if (int(mask) >> (3 * i)) & (1 << k):
                    out[f"{line} {name}"] = out.get(f"{line} {name}", 0) + int(n)
    return dict(sorted(out.items()))


def parameters(args: LabelArgs) -> dict:
    """The settings the labels depend on, as the manifest records them."""
    return {"scheme": args.scheme, "min_snr": args.min_snr, "split": list(args.split)}


# --- as a stage of `agnsurvey run` ------------------------------------------------------------------

STEP = Step(
    "label",
    settings=lambda args, run: (parameters(args), [run.upstream]),
    complete=lambda args, run, made: is_hats(args.workspace.labels),
    execute=lambda args, run, before, fingerprint, tokens: label(args, client=run.client),
    result=lambda m: ", ".join(f"{k} {v:,}" for k, v in (m.get("extra", {}).get("classes") or {}).items()),
)
