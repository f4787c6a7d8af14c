"""Stage ``ingest``: catalog files → ``WS/catalog/`` Parquet shards, canonical schema, in sky order.

The graph, task by task (work units are input chunks, then output shards):

1. read: one task per input chunk → canonical rows + ``_healpix_29`` (HEALPix nested index,
   order 29, the HATS convention; -1 where coordinates are unusable); kept in worker memory.
2. keys: each chunk sorts its ids and HEALPix indices; the client merges the sorted runs to find
   repeated ids (then asks the chunks where they are: the first occurrence in input order is
   kept) and cuts the sorted indices into shards of ~``shard_rows`` (repeats not subtracted).
3. merge: consecutive shards are grouped (about two groups per worker thread, at most
   ``MERGE_ROWS`` rows each); a group's task takes its HEALPix range from every chunk (less the
   rejected rows), sorts it on (``_healpix_29``, ``objid``) and writes its shards, one file each.

Each row gets ``cube_row``: its position in the written catalog (0..N-1, shard after shard), which
is its row in the image cube ``WS/cube.zarr``. The same inputs give the same order, hence the same
``cube_row``, so a re-ingest keeps the cube valid. The client knows each merge group's row count
before it runs (sorted HEALPix indices less the dropped repeats), so groups number their rows
independently.

Shards go to a temporary directory that replaces ``WS/catalog/`` in one rename, so a killed run
leaves the previous catalog intact.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from dask import delayed
from distributed import Client

from cluster.client import compute, persist
from pipeline.catalog import (
    CatalogSource,
    Chunk,
    inspect_all,
    map_lines_hint,
    missing_lines_text,
    plan_chunks,
    read_chunk,
)
from pipeline.config import IngestArgs
from pipeline.errors import CatalogError
from pipeline.healpix import HEALPIX_ORDER, healpix29
from pipeline.stage import writing
from storage.manifest import Manifest, file_checksum
from storage.shards import SHARD_NAME, finish_shards, write_shard
from storage.workspace import Workspace, as_workspace, atomic_directory

DROP_BAD_COORDINATES = "bad_coordinates"
DROP_DUPLICATE_ID = "duplicate_objid"
MERGE_ROWS = 1_000_000  # rows one merge task sorts in memory (~70 MB)


def valid_coordinates(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """True where RA is finite and in [0, 360) degrees and Dec finite and in [-90, 90] degrees."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(ra) & np.isfinite(dec) & (ra >= 0) & (ra < 360) & (dec >= -90) & (dec <= 90)


def _read_and_index(chunk: Chunk) -> pd.DataFrame:
    """One chunk in canonical form with ``_healpix_29`` (-1 where the coordinates are unusable)."""
    frame = read_chunk(chunk)
    ok = valid_coordinates(frame["ra"].to_numpy(), frame["dec"].to_numpy())
    hpx = np.full(len(frame), -1, dtype=np.int64)
    hpx[ok] = healpix29(frame["ra"].to_numpy()[ok], frame["dec"].to_numpy()[ok])
    frame["_healpix_29"] = hpx
    return frame


def _keys(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted ids, sorted HEALPix indices) of the rows with usable coordinates, and the other rows."""
    hpx = frame["_healpix_29"].to_numpy()
    ok = hpx >= 0
    return np.sort(frame["objid"].to_numpy()[ok]), np.sort(hpx[ok]), np.flatnonzero(~ok)


def _rows_with_ids(frame: pd.DataFrame, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions (input order), ids and HEALPix indices of the rows with usable coordinates whose id
    is in ``ids``."""
    objid, hpx = frame["objid"].to_numpy(), frame["_healpix_29"].to_numpy()
    rows = np.flatnonzero(np.isin(objid, ids) & (hpx >= 0))
    return rows, objid[rows], hpx[rows]


def _healpix_range(frame: pd.DataFrame, dropped: np.ndarray, low: int, high: int | None) -> pd.DataFrame:
    """Rows of a chunk with ``low <= _healpix_29 < high`` (no upper bound when None), less ``dropped``."""
    hpx = frame["_healpix_29"].to_numpy()
    inside = hpx >= low
    if high is not None:
        inside &= hpx < high
    inside[dropped] = False
    return frame.loc[inside]


def _sort_and_write(pieces: list[pd.DataFrame], starts: list[int], paths: list[Path], first_row: int,
                    rows_expected: int) -> list[int]:  # fmt: skip
    """Merge one HEALPix range from every chunk, sort on (HEALPix, objid), number the rows
    ``cube_row`` from ``first_row``, write one file per shard."""
    frame = pd.concat(pieces, ignore_index=True)
    if len(frame) != rows_expected:
        raise RuntimeError(f"ingest: a merge group has {len(frame)} rows, not {rows_expected}: a bug, please report")
    order = np.lexsort((frame["objid"].to_numpy(), frame["_healpix_29"].to_numpy()))
    frame = frame.take(order).reset_index(drop=True)
    frame["cube_row"] = np.arange(first_row, first_row + len(frame), dtype=np.int64)
    cuts = [*np.searchsorted(frame["_healpix_29"].to_numpy(), starts[1:]).tolist(), len(frame)]
    begin, rows = 0, []
    for end, path in zip(cuts, paths, strict=True):
        rows.append(write_shard(frame.iloc[begin:end], path))
        begin = end
    return rows


def repeated_ids(sorted_runs: list[np.ndarray]) -> np.ndarray:
    """Ids that occur more than once, from per-chunk sorted ids (merging sorted runs is cheap)."""
    ids = np.sort(np.concatenate(sorted_runs), kind="stable")
    return np.unique(ids[1:][ids[1:] == ids[:-1]])


def later_occurrences(hits: list[np.ndarray], ids_of_hits: list[np.ndarray]) -> list[np.ndarray]:
    """Per chunk, the rows holding a repeated id that are not its first occurrence in input order."""
    chunk = np.concatenate([np.full(len(h), i) for i, h in enumerate(hits)])
    repeated = _repeats(ids_of_hits)
    rows = np.concatenate(hits)
    return [rows[repeated & (chunk == i)] for i in range(len(hits))]


def _repeats(ids_of_hits: list[np.ndarray]) -> np.ndarray:
    """True for each hit (chunks in input order) whose id occurred in an earlier hit."""
    return pd.Series(np.concatenate(ids_of_hits)).duplicated(keep="first").to_numpy()


def group_rows(healpix_sorted: np.ndarray, dropped_healpix: np.ndarray,
               bounds: list[tuple[int, int | None]]) -> list[int]:  # fmt: skip
    """Rows each merge group writes: indices in [low, high) less the dropped rows' indices there."""
    dropped_healpix = np.sort(dropped_healpix)
    out = []
    for low, high in bounds:
        hi = len(healpix_sorted) if high is None else np.searchsorted(healpix_sorted, high)
        hi_drop = len(dropped_healpix) if high is None else np.searchsorted(dropped_healpix, high)
        out.append(int(hi - np.searchsorted(healpix_sorted, low) - (hi_drop - np.searchsorted(dropped_healpix, low))))
    return out


def shard_starts(healpix_sorted: np.ndarray, shard_rows: int) -> list[int]:
    """Lowest HEALPix index of each shard, cutting sorted indices every ``shard_rows`` rows."""
    return sorted(set(healpix_sorted[::shard_rows].tolist()))


def merge_groups(n_shards: int, n_rows: int, n_threads: int, max_rows: int = MERGE_ROWS) -> list[range]:
    """Consecutive shards merged by one task: a multiple of the threads, at most ``max_rows`` each."""
    wanted = max(2 * n_threads, -(-n_rows // max_rows))
    n_groups = min(n_shards, -(-wanted // n_threads) * n_threads)
    edges = np.linspace(0, n_shards, n_groups + 1).round().astype(int)
    return [range(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def ingest(args: IngestArgs, client: Client | None = None) -> Manifest:
    """Ingest ``args.inputs`` into ``WS/catalog/``; returns the manifest (also written to disk)."""
    with writing(args.workspace, "catalog", "ingest"):
        return _ingest(args, client)


def _ingest(args: IngestArgs, client: Client | None) -> Manifest:
    manifest = Manifest(stage="ingest", parameters=parameters(args))
    sources = inspect_all(args.inputs, args.columns, args.radius_column, args.format, args.hdu, args.id_kind)
    manifest.warnings = [w for w in map(_lines_warning, sources) if w]
    chunks = [c for s in sources for c in plan_chunks(s, args.chunk_rows)]
    checksums = _start_checksums(sources, client)
    parts = persist(*[delayed(_read_and_index)(c) for c in chunks], client=client)
    keys = compute(*[delayed(_keys)(p) for p in parts], client=client)
    bad = [k[2] for k in keys]
    duplicates = [np.empty(0, dtype=np.intp)] * len(parts)
    duplicate_healpix = np.empty(0, dtype=np.int64)
    repeated = repeated_ids([k[0] for k in keys])
    if repeated.size:
        hits = compute(*[delayed(_rows_with_ids)(p, repeated) for p in parts], client=client)
        duplicates = later_occurrences([h[0] for h in hits], [h[1] for h in hits])
        duplicate_healpix = np.concatenate([h[2] for h in hits])[_repeats([h[1] for h in hits])]
    rows_in = sum(len(k[0]) + len(k[2]) for k in keys)
    manifest.rows_in = rows_in
    manifest.dropped = {
        DROP_BAD_COORDINATES: sum(len(b) for b in bad),
        DROP_DUPLICATE_ID: sum(len(d) for d in duplicates),
    }
    kept = rows_in - sum(manifest.dropped.values())
    checksums = client.gather(checksums) if client is not None else checksums
    manifest.inputs = [dict(s.describe(), checksum=c) for s, c in zip(sources, checksums, strict=True)]
    if kept == 0:
        raise CatalogError(
            f"no usable rows in {', '.join(s.path for s in sources)} "
            f"({manifest.dropped[DROP_BAD_COORDINATES]} with bad coordinates, "
            f"{manifest.dropped[DROP_DUPLICATE_ID]} duplicate ids); check the ra/dec column map"
        )

    dropped = [np.union1d(b, d) for b, d in zip(bad, duplicates, strict=True)]
    healpix_sorted = np.sort(np.concatenate([k[1] for k in keys]), kind="stable")
    starts = shard_starts(healpix_sorted, args.shard_rows)
    groups = merge_groups(len(starts), kept, _threads(client))
    bounds = [(starts[g.start], starts[g.stop] if g.stop < len(starts) else None) for g in groups]
    rows_per_group = group_rows(healpix_sorted, duplicate_healpix, bounds)
    first_rows = np.concatenate([[0], np.cumsum(rows_per_group)]).tolist()
    ws = args.workspace
    with atomic_directory(ws.catalog) as tmp:
        writes = []
        for i, (group, (low, high)) in enumerate(zip(groups, bounds, strict=True)):
            pieces = [delayed(_healpix_range)(p, d, low, high) for p, d in zip(parts, dropped, strict=True)]
            paths = [tmp / SHARD_NAME.format(k) for k in group]
            writes.append(delayed(_sort_and_write)(pieces, starts[group.start : group.stop], paths, first_rows[i],
                                                   rows_per_group[i]))  # fmt: skip
        compute(*writes, client=client)
        shard_rows = finish_shards(tmp)
        if sum(shard_rows) != kept:  # inside the block: a wrong catalog never replaces a good one
            raise RuntimeError(f"ingest wrote {sum(shard_rows)} rows but kept {kept}: a bug, please report")
    if client is not None:
        client.cancel(list(parts))
    manifest.rows_out = sum(shard_rows)
    manifest.outputs = {
        "catalog": str(ws.catalog),
        "shards": len(shard_rows),
        "rows_per_shard": {"min": min(shard_rows), "max": max(shard_rows)},
        "sort_key": f"_healpix_29 (HEALPix nested, order {HEALPIX_ORDER}), then objid",
        "cube_row": "0..N-1 in this order: the row of each galaxy in WS/cube.zarr",
    }
    manifest.finish()
    ws.write_manifest("ingest", manifest.to_dict())
    return manifest


def _lines_warning(source: CatalogSource) -> str:
    """What a file without some of the four line fluxes means for labelling ('' when it has all)."""
    if not source.missing_lines:
        return ""
    if source.looks_like_nsa_v1:
        return (
            f"{Path(source.path).name}: NSA v1_0_1 has no emission lines; its rows can be fetched and scored "
            "(agnsurvey score), not labelled"
        )
    return (
        f"{missing_lines_text(source.path, source.missing_lines)}: its rows cannot be labelled (label needs all "
        f"four lines); map them with {map_lines_hint(source.missing_lines)}, or use the file only for scoring"
    )


def _threads(client: Client | None) -> int:
    if client is None:
        return os.cpu_count() or 1
    return max(1, sum(client.nthreads().values()))


def _start_checksums(sources: list[CatalogSource], client: Client | None) -> list:
    """SHA-256 of every input: futures on the cluster (overlapping the first pass), else computed now."""
    if client is not None:
        return client.map(file_checksum, [s.path for s in sources], pure=False)
    return [file_checksum(s.path) for s in sources]


def parameters(args: IngestArgs) -> dict:
    return {
        "inputs": list(args.inputs),
        "columns": dict(args.columns),
        "radius_column": args.radius_column,
        "shard_rows": args.shard_rows,
        "chunk_rows": args.chunk_rows,
        "format": args.format,
        "hdu": args.hdu,
        "id_kind": args.id_kind,
    }


def read_catalog(workspace: Workspace | str | Path) -> pd.DataFrame:
    """The whole ingested catalog as one pandas DataFrame (small catalogs, notebooks, tests)."""
    return pd.read_parquet(as_workspace(workspace).catalog)
