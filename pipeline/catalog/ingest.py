"""Stage ``ingest``: catalog files → ``WS/catalog/``, a HATS catalog in the canonical schema, in sky order.

The graph, task by task (work units are input chunks, then HEALPix partitions):

1. read: one task per input chunk → canonical rows + ``_healpix_29`` (HEALPix nested index,
   order 29, the HATS convention; -1 where coordinates are unusable), sorted on (``_healpix_29``,
   ``objid``) and written as an Arrow IPC file (a "sorted run") in the catalog's temporary
   directory, with the run's sorted ids and HEALPix indices beside it (16 bytes a row): neither
   rows nor keys are held in worker memory between the passes. The task returns a few numbers:
   its id range and the ids repeated within it.
2. plan, on the client: repeated ids are those repeated within a chunk when the chunks' id ranges
   do not overlap (a catalog in id order), else found by merging the chunks' sorted ids; the runs
   are then asked where they are (the first occurrence in input order is kept). The runs' sorted
   HEALPix indices (8 bytes a row, read by the client; counted run by run, never merged)
   partition the sky adaptively (:func:`storage.healpix.adaptive_partitions`):
   HEALPix pixels of mixed orders with at most ``max_rows`` rows each.
3. merge: consecutive partitions are grouped (about two groups per worker thread, at most
   ``MERGE_ROWS`` rows each); a group's task reads its slice of every sorted run (less the
   repeated rows), merges and sorts them on (``_healpix_29``, ``objid``) and writes one file per
   partition, ``dataset/Norder=k/Dir=d/Npix=n.parquet``; the runs are deleted, and the HATS
   metadata files are written with the ``hats`` library, so ``lsdb.open_catalog(WS/catalog)``
   opens the result.

Each row gets ``cube_row``: its position in the written catalog (0..N-1 in sky order), which is
its row in the image cube ``WS/cube.zarr``. The same inputs give the same order, hence the same
``cube_row``, whatever the partitioning, so a re-ingest keeps the cube valid. The client knows
each merge group's row count before it runs (sorted HEALPix indices less the dropped repeats), so
groups number their rows independently.

Partitions go to a temporary directory that replaces ``WS/catalog/`` in one rename, so a killed
run leaves the previous catalog intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from dask import delayed
from distributed import Client

from cluster.client import compute
from pipeline.catalog.args import IngestArgs
from pipeline.catalog.canonical import canonical_columns
from pipeline.catalog.readers.base import CatalogSource, Chunk
from pipeline.catalog.sources import (
    file_stats,
    inspect_all,
    map_lines_hint,
    missing_lines_text,
    plan_chunks,
    read_raw,
    rows_before,
)
from pipeline.errors import CatalogError
from pipeline.stage import Step, writing
from storage.hats_catalog import (
    Written,
    finish_catalog,
    is_hats,
    pixel_path,
    preload_hats,
    write_partition,
)
from storage.healpix import HEALPIX_ORDER, adaptive_partitions, healpix29, pixel_bounds, rows_in_ranges
from storage.manifest import Manifest, atomic_file, block_digest, checksum_blocks, combine_digests
from storage.workspace import atomic_directory

DROP_BAD_COORDINATES = "bad_coordinates"
DROP_DUPLICATE_ID = "duplicate_objid"
MERGE_ROWS = 1_000_000  # rows one merge task sorts in memory (~70 MB)
RUNS = ".sorted-runs"  # in the catalog's temporary directory: each chunk's sorted rows, until the merge
INPUT_ROW = "_input_row"  # in a sorted run: the row's position in its chunk, in file order
RUN_BATCH_ROWS = 8192  # rows per record batch of a sorted run: a merge reads whole batches of it
PARTITIONS_PER_THREAD = 2  # a small or clustered catalog still gets this many partitions per worker thread


def valid_coordinates(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """True where RA is finite and in [0, 360) degrees and Dec finite and in [-90, 90] degrees."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(ra) & np.isfinite(dec) & (ra >= 0) & (ra < 360) & (dec >= -90) & (dec <= 90)


@dataclass(frozen=True)
class Spilled:
    """What a read task reports of one input chunk, whose rows went, sorted on (``_healpix_29``,
    ``objid``), to the Arrow IPC file ``path`` (see :func:`_read_and_spill`): the first ``bad``
    rows there have unusable coordinates, the other ``rows`` have ids from ``first_id`` to
    ``last_id`` of which ``repeats`` occur more than once (sorted; usually none). A few numbers:
    the keys of those rows stay on disk beside the run (:meth:`load_healpix`, :meth:`load_ids`)."""

    path: str
    bad: int
    rows: int
    first_id: int
    last_id: int
    repeats: np.ndarray

    def load_healpix(self) -> np.ndarray:
        """The run's HEALPix indices of its rows with usable coordinates (sorted: the file's order)."""
        return np.fromfile(_keys_path(self.path), dtype=np.int64, offset=8 * self.rows)

    def load_ids(self) -> np.ndarray:
        """The ids of the run's rows with usable coordinates, sorted."""
        return np.fromfile(_keys_path(self.path), dtype=np.int64, count=self.rows)


def _keys_path(run: str | Path) -> Path:
    """Beside a sorted run: its sorted ids, then its HEALPix indices (raw int64)."""
    return Path(f"{run}.keys")


def _read_and_spill(chunk: Chunk, path: Path) -> Spilled:
    """Read one chunk, index it on the sky, sort it, and write it to ``path`` (Arrow IPC, with
    ``_input_row``: each row's position in file order, so the first occurrence of a repeated id is
    known), and its keys beside it (:class:`Spilled`), which it returns. Rows and keys go to
    disk, not to the worker's memory: merge tasks read just their slices of the run."""
    columns = canonical_columns(read_raw(chunk), chunk.source, first_row=lambda: rows_before(chunk))
    ra, dec = columns["ra"], columns["dec"]
    ok = valid_coordinates(ra, dec)
    if ok.all():
        hpx, ids = healpix29(ra, dec), columns["objid"]
    else:
        hpx, ids = np.full(len(ra), -1, dtype=np.int64), columns["objid"][ok]
        hpx[ok] = healpix29(ra[ok], dec[ok])
    columns["_healpix_29"] = hpx
    order = sky_order(hpx, columns["objid"], runs=False)
    table = pa.table(columns).take(pa.array(order)).append_column(INPUT_ROW, pa.array(order)).combine_chunks()
    hpx = table.column("_healpix_29").chunk(0).to_numpy() if table.num_rows else hpx
    bad = int(np.searchsorted(hpx, 0))  # -1 sorts first
    ids = _sorted(ids).astype(np.int64, copy=False)
    del columns, order
    with (
        atomic_file(path) as partial,
        pa.OSFile(str(partial), "wb") as sink,
        pa.ipc.new_file(sink, table.schema) as writer,
    ):
        writer.write_table(table, max_chunksize=RUN_BATCH_ROWS)
    with atomic_file(_keys_path(path)) as partial, open(partial, "wb") as fh:
        for keys in (ids, hpx[bad:]):  # file writes: a full disk is ENOSPC (numpy's own writers lose the errno)
            fh.write(np.ascontiguousarray(keys, dtype=np.int64).data)
    first, last = (int(ids[0]), int(ids[-1])) if ids.size else (0, -1)
    return Spilled(str(path), bad, len(ids), first, last, repeated_ids([ids]))


def _sorted(values: np.ndarray) -> np.ndarray:
    """``values`` sorted (catalogs are often in id order already: then as they are)."""
    return values if (values[1:] >= values[:-1]).all() else np.sort(values)


def _read_run(path: str, begin: int = 0, end: int | None = None, columns: list[str] | None = None) -> pa.Table:
    """Rows ``[begin, end)`` (``columns`` of them) of a chunk's sorted run, read from its record
    batches of ``RUN_BATCH_ROWS`` rows. Read, not memory-mapped: the kernel maps whole page-cache
    folios around each touched page, so the mapped pages of many small slices counted ~6x their
    size in the worker's memory (measured: 525 MB for an 83 MB merge group of 40 runs)."""
    with pa.OSFile(path) as source:
        reader = pa.ipc.open_file(source)
        n_batches = reader.num_record_batches
        end = n_batches * RUN_BATCH_ROWS if end is None else end
        first, last = begin // RUN_BATCH_ROWS, min(n_batches, -(-end // RUN_BATCH_ROWS))
        batches = [reader.get_batch(i) for i in range(first, last)]
        schema = reader.schema
    if columns is not None:
        batches, schema = [b.select(columns) for b in batches], pa.schema([schema.field(c) for c in columns])
    if any(b.num_rows != RUN_BATCH_ROWS for b in batches[:-1]):
        raise RuntimeError(f"ingest: {path} is not cut in batches of {RUN_BATCH_ROWS} rows: a bug")
    table = pa.Table.from_batches(batches, schema=schema)
    return table.slice(begin - first * RUN_BATCH_ROWS, end - begin)


def _rows_with_ids(path: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions, ids and HEALPix indices of a chunk's rows with usable coordinates whose id is in
    ``ids``, in input order."""
    run = _read_run(path, columns=["objid", "_healpix_29", INPUT_ROW])
    objid, hpx = run.column("objid").to_numpy(), run.column("_healpix_29").to_numpy()
    rows = np.flatnonzero(np.isin(objid, ids) & (hpx >= 0))
    rows = rows[np.argsort(run.column(INPUT_ROW).to_numpy()[rows], kind="stable")]
    return rows, objid[rows], hpx[rows]


def _run_slice(path: str, begin: int, end: int, dropped: np.ndarray) -> pa.Table:
    """Rows ``[begin, end)`` of a chunk's sorted run, less the rows at positions ``dropped``."""
    piece = _read_run(path, begin, end).drop_columns([INPUT_ROW])
    if dropped.size:  # repeated ids: rare
        keep = np.ones(end - begin, dtype=bool)
        keep[dropped - begin] = False
        piece = piece.filter(pa.array(keep))
    return piece


def sky_order(hpx: np.ndarray, objid: np.ndarray, runs: bool = True) -> np.ndarray:
    """Permutation that sorts rows on (HEALPix index, objid). One argsort of the indices (``runs``:
    a stable one, fast on the sorted runs a merge concatenates); the ids are needed only where two
    rows with coordinates share an order-29 pixel (~0.4 milliarcsec: rare)."""
    order = np.argsort(hpx, kind="stable" if runs else None)
    ordered = hpx[order]
    if ((ordered[1:] == ordered[:-1]) & (ordered[1:] >= 0)).any():
        return np.lexsort((objid, hpx))
    return order


def _sort_and_write(pieces: list[tuple[str, int, int, np.ndarray]], partitions: list[tuple[int, int]], root: Path,
                    first_row: int, rows_expected: int) -> list[Written]:  # fmt: skip
    """Merge one HEALPix range from every chunk (``pieces``: the arguments of :func:`_run_slice`),
    sort on (HEALPix, objid), number the rows ``cube_row`` from ``first_row``, write one file per
    partition ``(order, pixel)``."""
    tables = [_run_slice(*piece) for piece in pieces if piece[2] > piece[1]]
    table = pa.concat_tables(tables, promote_options="permissive") if tables else None
    if table is None or table.num_rows != rows_expected:
        rows = 0 if table is None else table.num_rows
        raise RuntimeError(f"ingest: a merge group has {rows} rows, not {rows_expected}: a bug")
    hpx = table.column("_healpix_29").to_numpy()
    order = sky_order(hpx, table.column("objid").to_numpy())
    table = table.take(pa.array(order))
    del tables  # the pieces as read: freed before the writing
    table = table.append_column("cube_row", pa.array(np.arange(first_row, first_row + table.num_rows, dtype=np.int64)))
    hpx = hpx[order]
    written = []
    for k, p in partitions:
        begin, end = (int(i) for i in np.searchsorted(hpx, pixel_bounds(k, p)))
        written.append(write_partition(table.slice(begin, end - begin), pixel_path(root, k, p), k, p, not_null=True))
    return written


def repeated_ids(sorted_runs: list[np.ndarray]) -> np.ndarray:
    """Ids that occur more than once, from per-chunk sorted ids (merging sorted runs is cheap)."""
    ids = np.sort(np.concatenate([np.empty(0, np.int64), *sorted_runs]), kind="stable")
    return np.unique(ids[1:][ids[1:] == ids[:-1]])


def repeated_in(spilled: list[Spilled]) -> np.ndarray:
    """Ids that occur more than once in the chunks. When the chunks' id ranges do not overlap (a
    catalog in id order, as most are), the repeats within each chunk, which the read tasks found;
    otherwise every chunk's ids are read back and merged."""
    runs = sorted((s for s in spilled if s.rows), key=lambda s: s.first_id)
    if all(a.last_id < b.first_id for a, b in zip(runs[:-1], runs[1:], strict=True)):
        return np.unique(np.concatenate([np.empty(0, np.int64), *(s.repeats for s in runs)]))
    return repeated_ids([s.load_ids() for s in runs])


def _repeated_rows(spilled: list[Spilled], client: Client | None) -> tuple[list[np.ndarray], np.ndarray]:
    """Per chunk, the positions in its sorted run of the rows dropped as repeats of an earlier id
    (in input order); and those rows' HEALPix indices."""
    repeated = repeated_in(spilled)
    if not repeated.size:
        return [np.empty(0, dtype=np.intp)] * len(spilled), np.empty(0, dtype=np.int64)
    hits = compute(*[delayed(_rows_with_ids)(s.path, repeated) for s in spilled], client=client)
    duplicate_healpix = np.concatenate([h[2] for h in hits])[_repeats([h[1] for h in hits])]
    return later_occurrences([h[0] for h in hits], [h[1] for h in hits]), duplicate_healpix


def _merge_tasks(spilled: list[Spilled], runs_healpix: list[np.ndarray], dropped: list[np.ndarray],
                 partitions: list[tuple[int, int]], rows: list[int], threads: int, root: Path) -> list:  # fmt: skip
    """One :func:`_sort_and_write` task per merge group of consecutive partitions, given the slice
    of every chunk's sorted run that falls in the group's HEALPix range."""
    groups = merge_groups(rows, threads)
    first_rows = np.concatenate([[0], np.cumsum([sum(rows[i] for i in g) for g in groups])]).tolist()
    edges = np.array([pixel_bounds(*partitions[g.start])[0] for g in groups]
                     + [pixel_bounds(*partitions[-1])[1]], dtype=np.int64)  # fmt: skip
    slices = [(run.bad + np.searchsorted(hpx, edges)).tolist() for run, hpx in zip(spilled, runs_healpix, strict=True)]
    tasks = []
    for i, group in enumerate(groups):
        pieces = []
        for run, d, s in zip(spilled, dropped, slices, strict=True):
            inside = d[(d >= s[i]) & (d < s[i + 1])]
            pieces.append((run.path, s[i], s[i + 1], inside))
        tasks.append(delayed(_sort_and_write)(pieces, partitions[group.start : group.stop], root, first_rows[i],
                                              first_rows[i + 1] - first_rows[i]))  # fmt: skip
    return tasks


def later_occurrences(hits: list[np.ndarray], ids_of_hits: list[np.ndarray]) -> list[np.ndarray]:
    """Per chunk, the rows holding a repeated id that are not its first occurrence in input order."""
    chunk = np.concatenate([np.full(len(h), i) for i, h in enumerate(hits)])
    repeated = _repeats(ids_of_hits)
    rows = np.concatenate(hits)
    return [rows[repeated & (chunk == i)] for i in range(len(hits))]


def _repeats(ids_of_hits: list[np.ndarray]) -> np.ndarray:
    """True for each hit (chunks in input order) whose id occurred in an earlier hit."""
    return pd.Series(np.concatenate(ids_of_hits)).duplicated(keep="first").to_numpy()


def group_rows(inside: list[int], dropped_healpix: np.ndarray, bounds: list[tuple[int, int]]) -> list[int]:
    """Rows in each HEALPix range [low, high): ``inside`` (the indices counted there) less the
    dropped rows' indices there."""
    low, high = np.array(bounds, dtype=np.int64).reshape(-1, 2).T
    return (np.asarray(inside, dtype=np.int64) - rows_in_ranges([np.sort(dropped_healpix)], low, high)).tolist()


def partition_threshold(max_rows: int, rows: int, threads: int) -> int:
    """Rows per partition: ``max_rows``, or fewer so that every worker thread gets
    ``PARTITIONS_PER_THREAD`` partitions of a small catalog."""
    return max(1, min(max_rows, -(-rows // (PARTITIONS_PER_THREAD * threads))))


def merge_groups(rows: list[int], n_threads: int, max_rows: int = MERGE_ROWS) -> list[range]:
    """Consecutive partitions merged by one task: about equal rows, a multiple of the threads in
    number, at most ``max_rows`` rows each unless one partition alone is larger."""
    total = sum(rows)
    wanted = max(2 * n_threads, -(-total // max_rows))
    n_groups = min(len(rows), -(-wanted // n_threads) * n_threads)
    ends = np.cumsum(rows)
    cuts = np.searchsorted(ends, np.linspace(0, total, n_groups + 1)[1:-1], side="left") + 1
    edges = [0, *sorted(set(np.clip(cuts, 1, len(rows) - 1).tolist())), len(rows)] if len(rows) > 1 else [0, 1]
    return [range(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def ingest(args: IngestArgs, client: Client | None = None) -> Manifest:
    """Ingest ``args.inputs`` into ``WS/catalog/``; returns the manifest (also written to disk)."""
    with writing(args.workspace, "catalog", "ingest"):
        return _ingest(args, client)


def _ingest(args: IngestArgs, client: Client | None) -> Manifest:
    manifest = Manifest(stage="ingest", parameters=parameters(args))
    preload_hats()  # the driver's ~1 s import of hats overlaps the reading
    phase = Phases()
    sources = inspect_all(args.inputs, args.columns, args.radius_column, args.format, args.hdu, args.id_kind)
    manifest.warnings = [w for w in map(_lines_warning, sources) if w]
    chunks = [c for s in sources for c in plan_chunks(s, args.chunk_rows)]
    checksums = _start_checksums(sources, client)
    ws = args.workspace
    with atomic_directory(ws.catalog) as tmp:
        runs = tmp / RUNS
        runs.mkdir()
        spilled = compute(*[delayed(_read_and_spill)(c, runs / f"chunk-{i:05d}.arrow") for i, c in enumerate(chunks)],
                          client=client)  # fmt: skip
        duplicates, duplicate_healpix = _repeated_rows(spilled, client)
        manifest.rows_in = sum(s.rows + s.bad for s in spilled)
        manifest.dropped = {
            DROP_BAD_COORDINATES: sum(s.bad for s in spilled),
            DROP_DUPLICATE_ID: sum(len(d) for d in duplicates),
        }
        kept = manifest.rows_in - sum(manifest.dropped.values())
        phase("read")
        if kept == 0:
            raise CatalogError(
                f"no usable rows in {', '.join(s.path for s in sources)} "
                f"({manifest.dropped[DROP_BAD_COORDINATES]} with bad coordinates, "
                f"{manifest.dropped[DROP_DUPLICATE_ID]} duplicate ids); check the ra/dec column map"
            )
        runs_healpix = [s.load_healpix() for s in spilled]  # each sorted: counted run by run, never merged
        threads = _threads(client)
        threshold = partition_threshold(args.max_rows, kept, threads)
        candidates = adaptive_partitions(runs_healpix, threshold)
        bounds = [tuple(map(int, pixel_bounds(k, p))) for k, p, _ in candidates]
        counts = group_rows([n for *_, n in candidates], duplicate_healpix, bounds)
        partitions = [(k, p) for (k, p, _), n in zip(candidates, counts, strict=True) if n > 0]
        rows = [n for n in counts if n > 0]
        del candidates, bounds
        phase("plan")
        tasks = _merge_tasks(spilled, runs_healpix, duplicates, partitions, rows, threads, tmp)
        del runs_healpix  # 8 bytes a row, on the client
        written = compute(*tasks, client=client)
        written = [w for group_written in written for w in group_written]
        if [w.rows for w in written] != rows:  # inside the block: a wrong catalog never replaces a good one
            raise RuntimeError(f"ingest wrote {[w.rows for w in written]} rows per partition, not {rows}: a bug")
        with ThreadPoolExecutor(max_workers=1) as pool:
            removed = pool.submit(shutil.rmtree, runs)  # ~0.1 s of unlinking per 10M rows: beside the metadata
            phase("sort_and_write")
            finish_catalog(tmp, "catalog", written)
            checksums = _checksums(checksums, client)  # hashed in the gaps of the work; before the catalog is replaced
            removed.result()
        phase("metadata")
    manifest.inputs = [dict(s.describe(), checksum=c) for s, c in zip(sources, checksums, strict=True)]
    manifest.extra["seconds_by_phase"] = phase.seconds
    crowded = [(k, p, n) for (k, p), n in zip(partitions, rows, strict=True) if n > threshold]
    if crowded:  # only a single order-29 pixel can exceed the threshold
        manifest.warnings.append(
            f"{len(crowded)} partition(s) hold more than {threshold:,} rows (up to {max(n for *_, n in crowded):,}): "
            "their rows share one position to within 0.4 milliarcsec (HEALPix order 29), which cannot be split; "
            "check the coordinates if that is not expected"
        )
    manifest.rows_out = sum(rows)
    manifest.outputs = {
        "catalog": str(ws.catalog),
        "format": "HATS (lsdb.open_catalog)",
        "partitions": len(partitions),
        "rows_per_partition": {"min": min(rows), "max": max(rows), "threshold": threshold},
        "orders": sorted({k for k, _ in partitions}),
        "partitioning": partitioning_digest(partitions),
        "sort_key": f"_healpix_29 (HEALPix nested, order {HEALPIX_ORDER}), then objid",
        "cube_row": "0..N-1 in this order: the row of each galaxy in WS/cube.zarr",
    }
    manifest.finish()
    ws.write_manifest("ingest", manifest.to_dict())
    return manifest


class Phases:
    """Wall seconds of a stage's phases: ``phase(name)`` ends the phase running since the last call."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._last, 3)
        self._last = now


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
    """Per input, the futures of its 64 MiB blocks' BLAKE3 digests (:func:`combine_digests` makes
    the checksum). On the cluster they run at low priority: in the gaps the reading and merging
    leave, not before them. Without a cluster, the digests themselves."""
    blocks = [[(s.path, a, b) for a, b in checksum_blocks(s.path)] for s in sources]
    if client is None:
        return [[block_digest(*block) for block in file_blocks] for file_blocks in blocks]
    return [client.map(block_digest, *zip(*file_blocks, strict=True), pure=False, priority=-10)
            for file_blocks in blocks]  # fmt: skip


def _checksums(started: list, client: Client | None) -> list[str]:
    """The inputs' checksums, once their block digests are done."""
    digests = [client.gather(futures) for futures in started] if client is not None else started
    return [combine_digests(d) for d in digests]


def parameters(args: IngestArgs) -> dict:
    return {
        "inputs": list(args.inputs),
        "columns": dict(args.columns),
        "radius_column": args.radius_column,
        "max_rows": args.max_rows,
        "chunk_rows": args.chunk_rows,
        "format": args.format,
        "hdu": args.hdu,
        "id_kind": args.id_kind,
    }


def partitioning_digest(partitions: list[tuple[int, int]]) -> str:
    """SHA-256 of the partition list: outputs keyed by partition (scores) must match it."""
    return hashlib.sha256(json.dumps(sorted(partitions)).encode()).hexdigest()


ORDER_SETTINGS = ("columns", "radius_column", "format", "hdu", "id_kind")  # what decides the rows and their order


def order_settings(args: IngestArgs) -> dict:
    """The settings the catalog's rows and their order (hence ``cube_row``) depend on; not how rows
    are cut into partitions or read in chunks."""
    return {k: getattr(args, k) for k in ORDER_SETTINGS}


# --- as a stage of `agnsurvey run` ------------------------------------------------------------------

STEP = Step(
    "ingest",
    settings=lambda args, run: (order_settings(args), [file_stats(args.inputs), run.upstream]),
    complete=lambda args, run, made: is_hats(args.workspace.catalog),  # a catalog from before HATS: ingested again
    execute=lambda args, run, before, fingerprint, tokens: ingest(args, client=run.client),
)
