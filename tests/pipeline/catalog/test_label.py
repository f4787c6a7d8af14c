"""Label: every drop reason counted, labels from an independent BPT computation, cube order, plots."""

import subprocess
import sys
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
from conftest import nsa_rows, write_nsa_fits

from pipeline.catalog.args import IngestArgs, LabelArgs
from pipeline.catalog.ingest import ingest
from pipeline.catalog.label import label
from pipeline.errors import CatalogError, WorkspaceError
from storage.hats_catalog import partition_files
from storage.tables import read_labels
from storage.workspace import Workspace


def ingested(tmp_path, rows, name="cat.fits", **kw):
    write_nsa_fits(tmp_path / name, rows)
    ws = tmp_path / "ws"
    ingest(IngestArgs(workspace=ws, inputs=[str(tmp_path / name)], **kw))
    return ws


def expected_paper_class(ha, nii, hb, oiii):
    """Independent of pipeline.catalog.bpt: the paper's rule written out per galaxy."""
    out = {}
    for i, (a, n, b, o) in enumerate(zip(ha, nii, hb, oiii, strict=True)):
        x, y = np.log10(float(n) / float(a)), np.log10(float(o) / float(b))
        out[i] = "sf" if (y < 0.61 / (x - 0.05) + 1.3 and x < -0.1) else "agn"
    return out


def test_every_drop_reason_is_counted(tmp_path, synchronous):
    rows = nsa_rows(40)
    for err in ("HAFLUXERR", "N2FLUXERR", "HBFLUXERR", "O3FLUXERR"):
        rows[err][:] = 0.01  # every untouched row passes S/N >= 3
    rows["HAFLUX"][0] = np.nan
    rows["N2FLUX"][1] = np.inf
    rows["HBFLUX"][2] = 0.0
    rows["O3FLUX"][3] = -3.0
    rows["HAFLUX"][4] = -9999.0  # the NSA sentinel
    rows["N2FLUX"][4] = -9999.0
    rows["HBFLUX"][5] = np.nan  # non-finite outranks non-positive in the same row
    rows["O3FLUX"][5] = -1.0
    rows["O3FLUX"][6] = 0.02  # S/N 2
    rows["HBFLUXERR"][7] = 0.0  # S/N undefined
    rows["N2FLUXERR"][8] = np.nan
    ws = ingested(tmp_path, rows)
    manifest = label(LabelArgs(workspace=ws, min_snr=3.0))
    assert manifest.dropped == {
        "non-finite: ha_flux": 1,
        "non-finite: nii_flux": 1,
        "non-positive: hb_flux": 1,
        "non-positive: oiii_flux": 1,
        "non-positive: ha_flux, nii_flux": 1,
        "non-finite: hb_flux": 1,
        "low S/N: oiii_flux": 1,
        "low S/N: hb_flux": 1,
        "low S/N: nii_flux": 1,
    }
    assert manifest.rows_in == 40 and manifest.rows_out == 40 - 9
    assert manifest.extra["problems_by_line"]["oiii_flux non-positive"] == 1  # row 5's -1 is not counted twice
    assert manifest.extra["problems_by_line"]["ha_flux non-positive"] == 1
    kept = set(read_labels(Workspace(ws))["objid"])
    assert kept == set(rows["NSAID"][9:].tolist())


def test_without_snr_cut_low_snr_rows_are_labelled(tmp_path, synchronous):
    rows = nsa_rows(10)
    rows["O3FLUX"][0] = 0.5
    ws = ingested(tmp_path, rows)
    manifest = label(LabelArgs(workspace=ws))
    assert manifest.rows_out == 10 and manifest.dropped == {}


def test_labels_match_an_independent_bpt_computation(tmp_path, synchronous):
    rows = nsa_rows(800, seed=4)
    ws = ingested(tmp_path, rows, max_rows=150)
    manifest = label(LabelArgs(workspace=ws))
    got = read_labels(Workspace(ws)).set_index("objid")
    want = expected_paper_class(rows["HAFLUX"], rows["N2FLUX"], rows["HBFLUX"], rows["O3FLUX"])
    for i, objid in enumerate(rows["NSAID"]):
        assert got.loc[objid, "bpt_class"] == want[i]
        assert got.loc[objid, "label"] == (1 if want[i] == "agn" else 0)
    assert manifest.extra["classes"]["sf"] == sum(v == "sf" for v in want.values())
    assert got["label"].dtype == np.int8
    np.testing.assert_allclose(
        got.loc[rows["NSAID"], "log_nii_ha"], np.log10(rows["N2FLUX"] / rows["HAFLUX"]), rtol=1e-5
    )


def test_three_class_composites_get_label_minus_one(tmp_path, synchronous):
    rows = nsa_rows(6)
    ha, hb = rows["HAFLUX"], rows["HBFLUX"]
    for i, (x, y) in enumerate([(-0.56, 0.0), (-0.56, 0.45), (-0.56, 0.9), (0.1, -0.7), (0.1, 0.0), (0.6, -1.0)]):
        rows["N2FLUX"][i] = ha[i] * 10**x
        rows["O3FLUX"][i] = hb[i] * 10**y
    ws = ingested(tmp_path, rows)
    label(LabelArgs(workspace=ws, scheme="three-class"))
    got = read_labels(Workspace(ws)).set_index("objid").loc[rows["NSAID"]]
    assert list(got["bpt_class"]) == ["sf", "composite", "agn", "composite", "agn", "agn"]
    assert list(got["label"]) == [0, -1, 1, -1, 1, 1]


def test_cube_row_numbers_catalog_rows_in_sky_order_and_labels_keep_it(tmp_path, synchronous):
    rows = nsa_rows(900, seed=2)
    rows["HBFLUX"][::7] = -1.0  # unlabelled rows keep their cube row: the cube belongs to the catalog
    ws = ingested(tmp_path, rows, max_rows=100)
    catalog = pd.concat([pd.read_parquet(path) for _, _, path in partition_files(ws / "catalog")])  # sky order
    np.testing.assert_array_equal(catalog["cube_row"], np.arange(len(catalog)))
    assert catalog["_healpix_29"].is_monotonic_increasing
    label(LabelArgs(workspace=ws))
    labels = read_labels(Workspace(ws))
    assert len(labels) < len(catalog) and labels["cube_row"].is_unique
    by_row = catalog.set_index("cube_row").loc[labels["cube_row"]]
    np.testing.assert_array_equal(by_row["objid"], labels["objid"])
    assert [p[:2] for p in partition_files(ws / "labels")] == [p[:2] for p in partition_files(ws / "catalog")]
    assert len(partition_files(ws / "labels")) >= 9


def test_splits_and_plots(tmp_path, synchronous):
    ws = ingested(tmp_path, nsa_rows(2000, seed=3))
    manifest = label(LabelArgs(workspace=ws, split=(0.6, 0.2, 0.2)))
    split = read_labels(Workspace(ws))["split"].value_counts(normalize=True)
    assert abs(split["train"] - 0.6) < 0.05 and abs(split["test"] - 0.2) < 0.05
    for name in ("bpt_all.png", "bpt_sf.png", "bpt_agn.png"):
        png = ws / "reports" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert len(manifest.outputs["plots"]) == 3


def test_distributed_labels_equal_single_process(tmp_path, cluster_client):
    rows = nsa_rows(3000, seed=6)
    rows["O3FLUX"][::11] = 0.0
    write_nsa_fits(tmp_path / "cat.fits", rows)
    frames = []
    for name, client in (("one", None), ("two", cluster_client)):
        args = IngestArgs(workspace=tmp_path / name, inputs=[str(tmp_path / "cat.fits")], max_rows=500)
        with dask.config.set(scheduler="synchronous"):
            ingest(args)
        if client is None:
            with dask.config.set(scheduler="synchronous"):
                m = label(LabelArgs(workspace=tmp_path / name, scheme="three-class", plots=False))
        else:
            m = label(LabelArgs(workspace=tmp_path / name, scheme="three-class", plots=False), client=client)
        frames.append((m, read_labels(Workspace(tmp_path / name))))
    (m1, one), (m2, two) = frames
    assert m1.dropped == m2.dropped and m1.extra["classes"] == m2.extra["classes"]
    pd.testing.assert_frame_equal(one, two)


def test_nsa_v1_catalog_cannot_be_labelled(tmp_path, synchronous):
    rows = {k: v for k, v in nsa_rows(5).items() if k in ("NSAID", "RA", "DEC", "Z")}
    rows["ELPETRO_TH50_R"] = np.full(5, 3.0, np.float32)
    ws = ingested(tmp_path, rows, name="nsa_v1_0_1.fits")
    with pytest.raises(CatalogError) as err:
        label(LabelArgs(workspace=ws))
    message = str(err.value)
    assert "nsa_v1_0_1.fits has no emission-line columns" in message
    assert "NSA v0_1_2" in message and "--column ha_flux=NAME" in message and "agnsurvey score" in message


def test_min_snr_needs_error_columns(tmp_path, synchronous):
    rows = {k: v for k, v in nsa_rows(5).items() if "ERR" not in k}
    ws = ingested(tmp_path, rows, name="noerr.fits")
    with pytest.raises(CatalogError, match=r"--min-snr needs the flux errors of all four lines, but .*noerr.fits"):
        label(LabelArgs(workspace=ws, min_snr=3))
    assert label(LabelArgs(workspace=ws, plots=False)).rows_out == 5
    one = {k: v for k, v in nsa_rows(5).items() if k != "HBFLUXERR"}
    (tmp_path / "one").mkdir()
    ws = ingested(tmp_path / "one", one, name="nohberr.fits")
    with pytest.raises(CatalogError, match=r"nohberr.fits has no hb_flux_err column; .*--column hb_flux_err=NAME$"):
        label(LabelArgs(workspace=ws, min_snr=3))


def test_label_without_ingest(tmp_path):
    with pytest.raises(WorkspaceError, match=r"run `agnsurvey ingest CATALOG --workspace"):
        label(LabelArgs(workspace=tmp_path / "empty"))


def test_no_labelled_galaxy_is_an_error_and_keeps_old_labels(tmp_path, synchronous):
    rows = nsa_rows(20)
    ws = ingested(tmp_path, rows)
    label(LabelArgs(workspace=ws, plots=False))
    before = read_labels(Workspace(ws))
    with pytest.raises(CatalogError, match=r"no galaxy in .* passed the flux cuts \(low S/N.*lower --min-snr"):
        label(LabelArgs(workspace=ws, min_snr=1e6, plots=False))
    pd.testing.assert_frame_equal(read_labels(Workspace(ws)), before)


HOLD = """
import sys, time
from storage.hats_catalog import partition_files
from storage.workspace import Workspace
with Workspace(sys.argv[1]).lock(sys.argv[2], shared=sys.argv[3] == "read"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.mark.parametrize("mode", ["write", "read"])
def test_label_never_reads_a_catalog_that_is_being_replaced(tmp_path, mode):
    """An ingest replacing the catalog while label reads it would mix two catalogs in the labels."""
    ws = ingested(tmp_path, nsa_rows(40))
    root = Path(__file__).resolve().parents[3]
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(ws), "catalog", mode], cwd=root,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        if mode == "write":  # an ingest is running: label must not start
            with pytest.raises(WorkspaceError, match=rf"catalog is being written by another run \(pid {holder.pid} "):
                label(LabelArgs(workspace=ws, plots=False))
        else:  # a label is running: ingest must not replace what it reads
            with pytest.raises(WorkspaceError, match=rf"catalog is being read by another run .*\(pid {holder.pid} "):
                ingest(IngestArgs(workspace=ws, inputs=[str(tmp_path / "cat.fits")]))
            assert label(LabelArgs(workspace=ws, plots=False)).rows_out > 0  # readers share
    finally:
        holder.kill()
        holder.wait()
    assert not (ws / "labels").exists() or mode == "read"


def test_catalog_and_fetch_workers_never_import_a_deep_learning_framework():
    """Splits live in pipeline.catalog.splits (numpy), not beside the Keras reader: a label or fetch task
    must not pay seconds and hundreds of MB to import TensorFlow or JAX."""
    code = ("import sys, pipeline.catalog.ingest, pipeline.catalog.label, pipeline.images.fetch, "
            "pipeline.catalog.splits; "
            "print([m for m in ('keras', 'tensorflow', 'jax') if m in sys.modules])")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_catalog_with_nulls_from_an_earlier_ingest_is_labelled_with_nan(tmp_path, synchronous):
    """Earlier versions wrote catalogs through pandas, with NaN stored as null and every column
    nullable: label still reads them and writes NaN (its columns are declared not null). A null
    in a column that is not a float is an error naming the fix."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = nsa_rows(300, seed=9)
    ws = ingested(tmp_path, rows, max_rows=100)
    (_, _, path), *_ = partition_files(Path(ws) / "catalog")
    old = pq.read_table(path).to_pandas()
    old.loc[old.index[:7], "z"] = np.nan  # pandas writes these as nulls, and declares z nullable
    pq.write_table(pa.Table.from_pandas(old, preserve_index=False), path)
    assert pq.read_table(path).column("z").null_count == 7
    label(LabelArgs(workspace=ws, plots=False))
    labels = read_labels(Workspace(ws)).set_index("objid")
    emptied = labels.index.intersection(old["objid"][:7])
    assert len(emptied) > 0 and labels.loc[emptied, "z"].isna().all()
    assert labels["z"].notna().sum() == len(labels) - len(emptied)

    table = pq.read_table(path)
    pq.write_table(table.set_column(table.schema.get_field_index("cube_row"), "cube_row",
                                    pa.array([None] * table.num_rows, pa.int64())), path)  # fmt: skip
    with pytest.raises(WorkspaceError, match=r"column 'cube_row' is not integers in every row.*re-run"):
        label(LabelArgs(workspace=ws, plots=False))


@pytest.mark.parametrize("damage", ["objid as float with NaN", "cube_row as float", "no hb_flux"])
def test_a_partition_rewritten_without_integer_keys_or_a_line_is_refused(tmp_path, synchronous, damage):
    rows = nsa_rows(200, seed=11)
    ws = ingested(tmp_path, rows, max_rows=100)
    (_, _, path), *_ = partition_files(Path(ws) / "catalog")
    frame = pd.read_parquet(path)
    if damage == "objid as float with NaN":
        frame["objid"] = frame["objid"].astype("float64")
        frame.loc[frame.index[0], "objid"] = np.nan
    elif damage == "cube_row as float":
        frame["cube_row"] = frame["cube_row"].astype("float64")
    else:
        frame = frame.drop(columns="hb_flux")
    frame.to_parquet(path, index=False)
    column = {"no hb_flux": "no column 'hb_flux'"}.get(damage, f"column '{damage.split()[0]}' is not integers")
    with pytest.raises(WorkspaceError, match=rf"{column}.*re-run `agnsurvey ingest`"):
        label(LabelArgs(workspace=ws, plots=False))
    assert not (Path(ws) / "labels").exists()
