"""Stage ``ingest``: catalog files → ``WS/catalog/`` Parquet shards, canonical schema, in sky order.

Graph: one read task per input chunk (canonicalise, flag bad coordinates, HEALPix index) →
persisted; the client then pulls three small key columns (id, input order, HEALPix index) to find
duplicate ids (the first occurrence in input order is kept) and exact shard boundaries; a shuffle
sorts rows into shards of ``shard_rows`` on ``_healpix_29`` (HEALPix nested, order 29, the HATS
convention), ties broken by ``objid``. Shards are written into a temporary directory that replaces
``WS/catalog/`` in one rename, so a killed run leaves the previous catalog intact.
"""

from __future__ import annotations

import logging
from pathlib import Path

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from distributed import Client

from cluster.client import compute, persist
from pipeline.catalog import CatalogSource, Chunk, empty_frame, inspect_all, plan_chunks, read_chunk
from pipeline.config import IngestArgs
from pipeline.errors import CatalogError
from pipeline.healpix import HEALPIX_ORDER, healpix29
from storage.manifest import Manifest, file_checksum
from storage.workspace import Workspace, as_workspace, atomic_directory

log = logging.getLogger(__name__)

DROP_BAD_COORDINATES = "bad_coordinates"
DROP_DUPLICATE_ID = "duplicate_objid"
SHARD_NAME = "part-{:05d}.parquet"


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


def _keep_rows(frame: pd.DataFrame, duplicate_ords: np.ndarray) -> pd.DataFrame:
    keep = (frame["_healpix_29"].to_numpy() >= 0) & ~np.isin(frame["_ord"].to_numpy(), duplicate_ords)
    return frame.loc[keep].drop(columns="_ord")


def _sort_shard(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    frame = frame.reset_index()[columns]
    return frame.sort_values(["_healpix_29", "objid"], kind="stable").reset_index(drop=True)


def shard_boundaries(healpix_sorted: np.ndarray, shard_rows: int) -> list[int]:
    """Dask divisions that cut sorted HEALPix indices into shards of ~``shard_rows`` rows."""
    cuts = healpix_sorted[::shard_rows].tolist() + [int(healpix_sorted[-1])]
    return sorted(set(cuts))


def ingest(args: IngestArgs, client: Client | None = None) -> Manifest:
    """Ingest ``args.inputs`` into ``WS/catalog/``; returns the manifest (also written to disk)."""
    manifest = Manifest(stage="ingest", parameters=_parameters(args))
    sources = inspect_all(args.inputs, args.columns, args.radius_column, args.format)
    chunks = [c for s in sources for c in plan_chunks(s, args.chunk_rows)]
    string_id = sources[0].string_id
    meta = empty_frame(string_id).assign(_healpix_29=pd.Series(dtype="int64"))
    checksums = _start_checksums(sources, client)
    frames = persist(dd.from_map(_read_and_index, chunks, meta=meta, enforce_metadata=False), client)
    (keys,) = compute(frames[["objid", "_ord", "_healpix_29"]], client=client)
    rows_in = len(keys)
    bad = keys["_healpix_29"].to_numpy() < 0
    good = keys.loc[~bad]
    duplicated = good["objid"].duplicated(keep="first").to_numpy()
    duplicate_ords = good["_ord"].to_numpy()[duplicated]
    kept = np.sort(good["_healpix_29"].to_numpy()[~duplicated])
    manifest.rows_in = rows_in
    manifest.dropped = {DROP_BAD_COORDINATES: int(bad.sum()), DROP_DUPLICATE_ID: int(duplicated.sum())}
    checksums = client.gather(checksums) if client is not None else checksums
    manifest.inputs = [dict(s.describe(), checksum=c) for s, c in zip(sources, checksums, strict=True)]
    if len(kept) == 0:
        raise CatalogError(
            f"no usable rows in {', '.join(s.path for s in sources)} "
            f"({manifest.dropped[DROP_BAD_COORDINATES]} with bad coordinates, "
            f"{manifest.dropped[DROP_DUPLICATE_ID]} duplicate ids); check the ra/dec column map"
        )

    clean = frames.map_partitions(_keep_rows, duplicate_ords, meta=meta.drop(columns="_ord"))
    divisions = shard_boundaries(kept, args.shard_rows)
    if len(divisions) < 2:
        divisions = [divisions[0], divisions[0]]
    ordered = clean.set_index("_healpix_29", divisions=divisions, sort=True, shuffle_method="tasks")
    meta_out = meta.drop(columns="_ord")
    ordered = ordered.map_partitions(_sort_shard, list(meta_out.columns), meta=meta_out)
    ws = args.workspace
    with atomic_directory(ws.catalog) as tmp:
        writer = ordered.to_parquet(
            str(tmp),
            write_index=False,
            name_function=SHARD_NAME.format,
            compute=False,
            write_metadata_file=False,
        )
        compute(writer, client=client)
        shard_rows = _drop_empty_shards(tmp)
    if client is not None:
        client.cancel(frames)
    manifest.rows_out = sum(shard_rows)
    expected = rows_in - sum(manifest.dropped.values())
    if manifest.rows_out != expected:
        raise RuntimeError(f"ingest wrote {manifest.rows_out} rows but kept {expected}: a bug, please report")
    manifest.outputs = {
        "catalog": str(ws.catalog),
        "shards": len(shard_rows),
        "rows_per_shard": {"min": min(shard_rows), "max": max(shard_rows)},
        "sort_key": f"_healpix_29 (HEALPix nested, order {HEALPIX_ORDER}), then objid",
    }
    manifest.finish()
    ws.write_manifest("ingest", manifest.to_dict())
    return manifest


def _start_checksums(sources: list[CatalogSource], client: Client | None) -> list:
    """SHA-256 of every input: futures on the cluster (overlapping the first pass), else computed now."""
    if client is not None:
        return client.map(file_checksum, [s.path for s in sources], pure=False)
    return [file_checksum(s.path) for s in sources]


def _drop_empty_shards(directory: Path) -> list[int]:
    """Remove zero-row shards, renumber the rest in sky order; returns rows per shard."""
    rows = []
    for f in sorted(directory.glob("part-*.parquet")):
        n = pq.read_metadata(f).num_rows
        if n == 0:
            f.unlink()
            continue
        f.rename(directory / SHARD_NAME.format(len(rows)))
        rows.append(n)
    return rows


def _parameters(args: IngestArgs) -> dict:
    return {
        "inputs": list(args.inputs),
        "columns": dict(args.columns),
        "radius_column": args.radius_column,
        "shard_rows": args.shard_rows,
        "chunk_rows": args.chunk_rows,
        "format": args.format,
    }


def read_catalog(workspace: Workspace | str | Path) -> pd.DataFrame:
    """The whole ingested catalog as one pandas DataFrame (small catalogs, notebooks, tests)."""
    return pd.read_parquet(as_workspace(workspace).catalog)
