"""HATS partitioning and files: adaptive pixels that lose nothing, metadata LSDB reads, inputs."""

import shutil

import astropy.units as u
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy_healpix import HEALPix
from conftest import nsa_rows, rows_frame

from pipeline.catalog.args import IngestArgs, LabelArgs
from pipeline.catalog.ingest import ingest
from pipeline.catalog.label import label
from pipeline.errors import CatalogError, WorkspaceError
from storage.hats_catalog import partition_files, pixel_path, write_frame, write_partition
from storage.healpix import adaptive_partitions, healpix29
from storage.tables import read_catalog


def clustered_positions(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Half the rows uniform over the sky, half in a few tight clumps (arcseconds to a degree)."""
    rng = np.random.default_rng(seed)
    ra = rng.uniform(0, 360, n // 2)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n // 2)))
    centres = rng.uniform([0, -60], [360, 60], (5, 2))
    widths = np.array([1.0, 0.1, 1e-3, 1e-4, 3e-5])
    k = rng.integers(0, 5, n - n // 2)
    ra_c = centres[k, 0] + rng.normal(0, widths[k])
    dec_c = centres[k, 1] + rng.normal(0, widths[k])
    return np.r_[ra, ra_c % 360], np.r_[dec, np.clip(dec_c, -90, 90)]


@pytest.mark.parametrize("threshold", [1, 37, 500, 10**6])
def test_adaptive_partitions_cover_every_row_once_within_the_threshold(threshold):
    ra, dec = clustered_positions(5000)
    hpx = np.sort(healpix29(ra, dec))
    parts = adaptive_partitions(hpx, threshold)
    orders = np.array([o for o, _, _ in parts])
    pixels = np.array([p for _, p, _ in parts])
    rows = np.array([r for _, _, r in parts])
    assert rows.sum() == len(hpx) and (rows > 0).all()
    over = rows > threshold
    assert (orders[over] == 29).all()  # only a single deepest pixel may hold more than the threshold
    # each row lies in exactly one partition: its HEALPix pixel at that partition's order, computed
    # here with astropy-healpix from the coordinates, is the partition's pixel for exactly one of them
    member = np.zeros(len(hpx), dtype=int)
    for order in np.unique(orders):
        at_order = HEALPix(nside=2**order, order="nested").lonlat_to_healpix(ra * u.deg, dec * u.deg)
        member += np.isin(at_order, pixels[orders == order])
    assert (member == 1).all()
    starts = pixels << (2 * (29 - orders))
    assert (np.diff(starts) > 0).all()  # sky order
    if threshold >= len(hpx):
        assert all(o == 0 for o in orders)  # nothing to split: whole order-0 pixels


@pytest.mark.parametrize("threshold", [1, 37, 500])
def test_adaptive_partitions_of_sorted_runs_equal_those_of_the_merged_indices(threshold):
    """Ingest counts the sorted runs of its chunks without merging them: same partitions."""
    ra, dec = clustered_positions(5000)
    hpx = healpix29(ra, dec)
    runs = [np.sort(run) for run in np.array_split(hpx, [700, 701, 2900])]  # one run of a single row
    runs.insert(2, np.empty(0, dtype=np.int64))  # and an empty one (a chunk of bad coordinates)
    assert adaptive_partitions(runs, threshold) == adaptive_partitions(np.sort(hpx), threshold)
    assert adaptive_partitions(list(np.sort(hpx)), threshold) == adaptive_partitions(np.sort(hpx), threshold)


def test_rows_at_one_position_stay_one_partition_at_the_deepest_order(tmp_path):
    hpx = np.full(50, healpix29(np.array([150.0]), np.array([2.0]))[0])
    assert adaptive_partitions(hpx, 10) == [(29, int(hpx[0]), 50)]
    rows = rows_frame(nsa_rows(50, seed=1)).assign(RA=150.0, DEC=2.0)
    rows.to_parquet(tmp_path / "one.parquet")
    manifest = ingest(IngestArgs(workspace=tmp_path / "ws", inputs=[str(tmp_path / "one.parquet")], max_rows=10))
    assert manifest.outputs["partitions"] == 1 and manifest.outputs["orders"] == [29]
    assert any("share one position" in w for w in manifest.warnings)


def test_a_catalog_in_one_square_degree_gets_partitions_for_every_worker_thread(tmp_path, cluster_client):
    lsdb = pytest.importorskip("lsdb")
    rows = rows_frame(nsa_rows(3000, seed=4))
    rng = np.random.default_rng(4)
    rows["RA"], rows["DEC"] = 180 + rng.uniform(0, 1, 3000), 30 + rng.uniform(0, 1, 3000)
    rows.to_parquet(tmp_path / "clump.parquet")
    manifest = ingest(IngestArgs(workspace=tmp_path / "ws", inputs=[str(tmp_path / "clump.parquet")]),
                      client=cluster_client)  # default --max-rows (500,000): one partition without the rule
    threads = sum(cluster_client.nthreads().values())
    parts = partition_files(tmp_path / "ws" / "catalog")
    assert manifest.outputs["partitions"] == len(parts) >= 2 * threads
    assert max(len(pd.read_parquet(p)) for _, _, p in parts) <= -(-3000 // (2 * threads))
    assert len(lsdb.open_catalog(tmp_path / "ws" / "catalog").compute()) == 3000


def test_a_margin_cache_given_as_input_is_refused(tmp_path):
    frame = pd.DataFrame({"objid": np.arange(20), "ra": np.linspace(10, 11, 20), "dec": np.zeros(20)})
    write_frame(frame, tmp_path / "margin", "margin")
    props = tmp_path / "margin" / "hats.properties"
    text = props.read_text().replace("dataproduct_type=object", "dataproduct_type=margin")
    props.write_text(text + "hats_primary_table_url=catalog\nhats_margin_threshold=5.0\n")
    with pytest.raises(CatalogError, match=r"is a HATS margin catalog, not a table of objects; give the object"):
        ingest(IngestArgs(workspace=tmp_path / "ws", inputs=[str(tmp_path / "margin")],
                          columns={"objid": "objid", "ra": "ra", "dec": "dec"}))  # fmt: skip


def test_write_frame_round_trips_and_pandas_reads_the_dataset(tmp_path):
    lsdb = pytest.importorskip("lsdb")
    ra, dec = clustered_positions(2000, seed=2)
    frame = pd.DataFrame({"objid": np.arange(2000), "ra": ra, "dec": dec, "x": np.arange(2000) * 0.5})
    written = write_frame(frame, tmp_path / "t", "t", max_rows=300)
    assert len(written) > 2000 // 300 and max(w.rows for w in written) <= 300 or any(w.order == 29 for w in written)
    plain = pd.read_parquet(tmp_path / "t" / "dataset")  # the dataset directory, as any Parquet reader
    assert sorted(plain["objid"]) == list(range(2000))
    opened = lsdb.open_catalog(tmp_path / "t").compute().sort_values("objid")
    np.testing.assert_array_equal(opened["x"].to_numpy(), frame["x"].to_numpy())


def test_catalog_and_labels_declare_their_columns_not_null_and_read_as_before(tmp_path):
    """Stage tables are written with every column "required" (cheaper to write and read); LSDB,
    pandas and a nullable table's reader see the same values; a column with nulls is refused."""
    lsdb = pytest.importorskip("lsdb")
    rows = rows_frame(nsa_rows(1500, seed=5))
    rows.to_parquet(tmp_path / "in.parquet")
    ws = tmp_path / "ws"
    ingest(IngestArgs(workspace=ws, inputs=[str(tmp_path / "in.parquet")], max_rows=400))
    label(LabelArgs(workspace=ws, plots=False))
    for table in ("catalog", "labels"):
        for _, _, path in partition_files(ws / table):
            schema = pq.read_schema(path)
            assert not any(field.nullable for field in schema), f"{path}: {schema}"
        opened = lsdb.open_catalog(ws / table).compute()
        assert len(opened) == len(pd.read_parquet(ws / table / "dataset")) > 0
    catalog = read_catalog(ws).sort_values("objid")
    np.testing.assert_array_equal(catalog["objid"].to_numpy(), np.sort(rows["NSAID"].to_numpy()))
    with_null = pa.table({"_healpix_29": pa.array([1, 2], pa.int64()), "x": pa.array([1.0, None])})
    with pytest.raises(ValueError, match=r"columns \['x'\] hold nulls"):
        write_partition(with_null, tmp_path / "n.parquet", 29, 1, not_null=True)


def test_tables_from_before_hats_get_a_clear_error(tmp_path):
    (tmp_path / "catalog").mkdir()
    pd.DataFrame({"objid": [1], "cube_row": [0]}).to_parquet(tmp_path / "catalog" / "part-00000.parquet")
    with pytest.raises(WorkspaceError, match=r"written before workspace tables were HATS catalogs; re-run"):
        read_catalog(tmp_path)


@pytest.mark.parametrize("directory", [False, True])
@pytest.mark.parametrize(("order", "pixel"), [(0, 5), (7, 123_456), (29, 12 * 4**29 - 1)])
def test_pixel_paths_are_the_ones_hats_spells(tmp_path, order, pixel, directory):
    from hats.io.paths import pixel_catalog_file
    from hats.pixel_math import HealpixPixel

    expected = pixel_catalog_file(tmp_path, HealpixPixel(order, pixel), npix_suffix="/" if directory else ".parquet")
    assert str(pixel_path(tmp_path, order, pixel, directory)).rstrip("/") == str(expected.path).rstrip("/")


def test_a_missing_or_damaged_partition_is_a_clear_error_never_fewer_rows(tmp_path):
    rows = rows_frame(nsa_rows(600, seed=6))
    rows.to_parquet(tmp_path / "cat.parquet")
    ws = tmp_path / "ws"
    ingest(IngestArgs(workspace=ws, inputs=[str(tmp_path / "cat.parquet")], max_rows=100))
    source = tmp_path / "hats"  # our catalog, given back as a HATS input
    shutil.copytree(ws / "catalog", source)
    identity = {c: c for c in ("objid", "ra", "dec")}
    (order, pixel, first), *_ = partition_files(source)
    shutil.copy(first, first.with_name("Npix=999999.parquet"))  # a stray copy beside the partitions: not read
    again = ingest(IngestArgs(workspace=tmp_path / "ws2", inputs=[str(source)], columns=identity))
    assert again.rows_in == 600 and again.dropped["duplicate_objid"] == 0
    first.unlink()
    with pytest.raises(CatalogError, match=r"1 of its \d+ partitions are missing .* its rows would be lost"):
        ingest(IngestArgs(workspace=tmp_path / "ws3", inputs=[str(source)], columns=identity))
    (_, _, victim), *_ = partition_files(ws / "catalog")
    victim.write_bytes(b"not parquet")
    with pytest.raises(WorkspaceError, match=r"Npix=\d+\.parquet is damaged .*re-run `agnsurvey ingest`"):
        label(LabelArgs(workspace=ws, plots=False))
    victim.unlink()
    with pytest.raises(WorkspaceError, match=r"Npix=\d+\.parquet is missing; re-run `agnsurvey ingest`"):
        read_catalog(ws)
