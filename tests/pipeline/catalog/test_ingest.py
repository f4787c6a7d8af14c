"""Ingest: drop reasons, duplicate handling, sky-ordered shards that lose and duplicate nothing."""

import json

import astropy.units as u
import blake3
import dask
import numpy as np
import pandas as pd
import pytest
from astropy_healpix import HEALPix
from conftest import nsa_rows, rows_frame, write_nsa_fits

from pipeline.catalog.args import IngestArgs
from pipeline.catalog.ingest import ingest
from pipeline.errors import CatalogError
from storage.hats_catalog import partition_files
from storage.tables import read_catalog
from storage.workspace import Workspace


def run_ingest(ws, inputs, client=None, **kw):
    return ingest(IngestArgs(workspace=ws, inputs=[str(p) for p in inputs], **kw), client=client)


def test_drops_bad_coordinates_and_duplicates(tmp_path, synchronous):
    a = nsa_rows(100, seed=1)
    for i, (ra, dec) in enumerate([(np.nan, 10.0), (360.0, 10.0), (-0.5, 10.0), (150.0, 90.5), (150.0, np.inf)]):
        a["RA"][i], a["DEC"][i] = ra, dec
    b = nsa_rows(50, seed=2)
    b["NSAID"] = np.arange(5000, 5050, dtype=np.int32)
    b["NSAID"][:10] = a["NSAID"][50:60]  # the same galaxies again, in a second file
    b["NSAID"][10] = b["NSAID"][11]  # and a duplicate inside the file
    write_nsa_fits(tmp_path / "a.fits", a)
    write_nsa_fits(tmp_path / "b.fits", b)
    manifest = run_ingest(tmp_path / "ws", [tmp_path / "a.fits", tmp_path / "b.fits"])

    assert manifest.rows_in == 150
    assert manifest.dropped == {"bad_coordinates": 5, "duplicate_objid": 11}
    assert manifest.rows_out == 150 - 16
    frame = read_catalog(Workspace(tmp_path / "ws")).set_index("objid")
    first = dict(zip(a["NSAID"], a["RA"], strict=True))
    for objid in a["NSAID"][50:60]:
        assert frame.loc[objid, "ra"] == first[objid]  # the first occurrence (file a) is kept
    assert frame.loc[b["NSAID"][10], "ra"] == b["RA"][10]  # first of the in-file pair
    assert not set(a["NSAID"][:5]) & set(frame.index)


def test_the_first_of_a_repeated_id_in_file_order_is_kept_even_when_it_sorts_later_on_the_sky(tmp_path, synchronous):
    rows = nsa_rows(6, seed=3)
    rows["NSAID"][:] = [7, 8, 7, 9, 8, 7]
    rows["RA"][:], rows["DEC"][:] = [300.0, 250.0, 10.0, 20.0, 5.0, 1.0], 0.0  # later copies sort first
    write_nsa_fits(tmp_path / "rep.fits", rows)
    manifest = run_ingest(tmp_path / "ws", [tmp_path / "rep.fits"])
    assert manifest.dropped["duplicate_objid"] == 3
    kept = read_catalog(Workspace(tmp_path / "ws")).set_index("objid")["ra"].to_dict()
    assert kept == {7: 300.0, 8: 250.0, 9: 20.0}


def test_boundary_coordinates_are_kept(tmp_path, synchronous):
    rows = nsa_rows(4)
    rows["RA"][:4] = [0.0, 359.999999, 10.0, 20.0]
    rows["DEC"][:4] = [0.0, 0.0, -90.0, 90.0]
    write_nsa_fits(tmp_path / "edge.fits", rows)
    assert run_ingest(tmp_path / "ws", [tmp_path / "edge.fits"]).rows_out == 4


def test_partitions_lose_and_duplicate_nothing_and_are_sky_ordered(tmp_path, synchronous):
    rows = nsa_rows(2000, seed=5)
    rows["RA"] = np.random.default_rng(0).uniform(0, 360, 2000)  # the whole sky
    rows["DEC"] = np.degrees(np.arcsin(np.random.default_rng(1).uniform(-1, 1, 2000)))
    write_nsa_fits(tmp_path / "sky.fits", rows)
    manifest = run_ingest(tmp_path / "ws", [tmp_path / "sky.fits"], max_rows=300, chunk_rows=250)
    partitions = partition_files(tmp_path / "ws" / "catalog")
    assert manifest.outputs["partitions"] == len(partitions) >= 2000 // 300
    frames = [pd.read_parquet(path) for _, _, path in partitions]
    assert all(0 < len(f) <= 300 for f in frames)
    ids = np.concatenate([f["objid"].to_numpy() for f in frames])
    assert len(ids) == 2000 and set(ids) == set(rows["NSAID"].tolist())
    hpx = np.concatenate([f["_healpix_29"].to_numpy() for f in frames])
    assert np.all(np.diff(hpx) >= 0)  # monotonic across partition boundaries too
    whole = pd.concat(frames, ignore_index=True).set_index("objid")
    expected = HEALPix(nside=2**29, order="nested").lonlat_to_healpix(rows["RA"] * u.deg, rows["DEC"] * u.deg)
    np.testing.assert_array_equal(whole.loc[rows["NSAID"], "_healpix_29"].to_numpy(), expected)
    for (order, pixel, _), frame in zip(partitions, frames, strict=True):  # each row in its file's pixel
        at_order = HEALPix(nside=2**order, order="nested").lonlat_to_healpix(frame["ra"].values * u.deg,
                                                                             frame["dec"].values * u.deg)
        assert set(at_order.tolist()) == {pixel}
    assert (whole["cube_row"].to_numpy() == np.arange(2000)).all()  # cube rows follow the sky order


def test_manifest_records_inputs_and_checksums(tmp_path, nsa_fits, synchronous):
    path, _ = nsa_fits
    run_ingest(tmp_path / "ws", [path])
    manifest = json.loads((tmp_path / "ws" / "manifests" / "ingest.json").read_text())
    (entry,) = manifest["inputs"]
    assert entry["checksum"] == "blake3:" + blake3.blake3(path.read_bytes()).hexdigest()  # what b3sum prints
    assert entry["bytes"] == path.stat().st_size and entry["rows"] == 600
    assert entry["columns"]["ha_flux"] == "HAFLUX" and entry["has_lines"]
    assert manifest["rows_in"] == 600 and manifest["rows_out"] == 600
    assert manifest["seconds"] > 0 and manifest["software"]["python"]


def test_large_inputs_are_checksummed_by_blocks_on_the_cluster(tmp_path, nsa_fits, cluster_client, monkeypatch):
    path, _ = nsa_fits
    monkeypatch.setattr("storage.manifest.CHECKSUM_BLOCK", 4096)  # as if the file were larger than 64 MiB
    blocks = [path.read_bytes()[a : a + 4096] for a in range(0, path.stat().st_size, 4096)]
    assert len(blocks) > 3
    run_ingest(tmp_path / "ws", [path], client=cluster_client)
    (entry,) = json.loads((tmp_path / "ws" / "manifests" / "ingest.json").read_text())["inputs"]
    tree = blake3.blake3(b"".join(blake3.blake3(b).digest() for b in blocks)).hexdigest()
    assert entry["checksum"] == "blake3-64MiB-blocks:" + tree


def test_rerun_is_idempotent(tmp_path, nsa_fits, synchronous):
    path, _ = nsa_fits
    run_ingest(tmp_path / "ws", [path], max_rows=100)
    first = read_catalog(Workspace(tmp_path / "ws"))
    run_ingest(tmp_path / "ws", [path], max_rows=100)
    pd.testing.assert_frame_equal(read_catalog(Workspace(tmp_path / "ws")), first)
    assert not list((tmp_path / "ws").glob(".catalog*"))  # no temporary directories left


def test_failed_run_keeps_the_previous_catalog(tmp_path, nsa_fits, synchronous):
    path, rows = nsa_fits
    run_ingest(tmp_path / "ws", [path])
    before = read_catalog(Workspace(tmp_path / "ws"))
    bad = rows_frame(nsa_rows(3000, seed=9))
    bad["RA"] = bad["RA"].astype(object)
    bad.loc[2900, "RA"] = "12h30m"  # beyond the rows the schema check samples: fails mid-run
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(CatalogError, match="bad.csv"):
        run_ingest(tmp_path / "ws", [path, tmp_path / "bad.csv"])
    pd.testing.assert_frame_equal(read_catalog(Workspace(tmp_path / "ws")), before)
    assert not list((tmp_path / "ws").glob(".catalog*"))


def test_distributed_ingest_equals_single_process(tmp_path, cluster_client):
    rows = nsa_rows(3000, seed=7)
    write_nsa_fits(tmp_path / "a.fits", rows)
    rows_frame(nsa_rows(1500, seed=8)).to_parquet(tmp_path / "b.parquet", row_group_size=200)
    inputs = [tmp_path / "a.fits", tmp_path / "b.parquet"]
    kw = dict(max_rows=700, chunk_rows=400)
    with dask.config.set(scheduler="synchronous"):
        one = run_ingest(tmp_path / "one", inputs, **kw)
    two = run_ingest(tmp_path / "two", inputs, client=cluster_client, **kw)
    assert one.dropped == two.dropped and one.rows_out == two.rows_out
    assert partition_files(tmp_path / "one" / "catalog") != []
    pd.testing.assert_frame_equal(read_catalog(tmp_path / "one"), read_catalog(tmp_path / "two"))


@pytest.mark.parametrize("layout", ["in id order", "repeat across a chunk edge", "shuffled"])
def test_repeated_ids_are_found_whether_the_chunks_are_in_id_order_or_not(tmp_path, synchronous, monkeypatch,
                                                                          layout):  # fmt: skip
    """Chunks whose id ranges do not overlap are only searched within (the read tasks report their
    repeats; no chunk's ids are read back); chunks whose ranges overlap, if only at one id, have
    their ids merged. Either way the first occurrence is kept."""
    from pipeline.catalog.ingest import Spilled

    rows = nsa_rows(600, seed=8)
    ids = np.arange(1000, 1600)
    ids[[10, 11, 12]] = ids[9]  # three repeats inside the first chunk
    ids[[250, 399]] = ids[[249, 398]]  # one repeat inside each of two later chunks
    if layout == "in id order":
        monkeypatch.setattr(Spilled, "load_ids", lambda self: pytest.fail("ids read back for chunks in id order"))
    elif layout == "repeat across a chunk edge":
        ids[150] = ids[149]  # the first chunk ends, and the second begins, with this id
    else:
        ids = ids[np.random.default_rng(8).permutation(600)]
        ids[590] = ids[5]  # and one across chunks
    rows["NSAID"] = ids.astype(np.int32)
    write_nsa_fits(tmp_path / "ids.fits", rows)
    manifest = run_ingest(tmp_path / "ws", [tmp_path / "ids.fits"], chunk_rows=150)
    first = pd.DataFrame({"objid": ids, "ra": rows["RA"]}).drop_duplicates("objid", keep="first")
    assert manifest.dropped["duplicate_objid"] == 600 - len(first) == (5 if layout == "in id order" else 6)
    kept = read_catalog(Workspace(tmp_path / "ws")).set_index("objid")["ra"].sort_index()
    pd.testing.assert_series_equal(kept, first.set_index("objid")["ra"].sort_index(), check_dtype=False)


def test_repeated_ids_of_sorted_runs():
    from pipeline.catalog.ingest import repeated_ids

    rng = np.random.default_rng(7)
    for _ in range(50):
        runs = [np.sort(rng.integers(0, 80, size=n)) for n in rng.integers(0, 40, size=5)]
        values, counts = np.unique(np.concatenate(runs), return_counts=True)
        np.testing.assert_array_equal(repeated_ids(runs), values[counts > 1])


def test_a_chunk_with_only_bad_coordinates_among_others(tmp_path, cluster_client):
    rows = nsa_rows(600, seed=10)
    rows["RA"][150:300] = np.nan  # the whole second chunk
    write_nsa_fits(tmp_path / "bad.fits", rows)
    manifest = run_ingest(tmp_path / "ws", [tmp_path / "bad.fits"], client=cluster_client, chunk_rows=150)
    assert manifest.dropped == {"bad_coordinates": 150, "duplicate_objid": 0}
    kept = read_catalog(Workspace(tmp_path / "ws"))
    assert sorted(kept["objid"]) == sorted(np.r_[rows["NSAID"][:150], rows["NSAID"][300:]].tolist())
    assert (kept["cube_row"].to_numpy() == np.arange(450)).all()
