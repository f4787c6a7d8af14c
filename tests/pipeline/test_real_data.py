"""Ingest and label the real reference data in ``<repo>/../shared/data`` (see its SOURCES.md).

Every expected value here is computed independently in this file: the source files are read with
astropy / pandas, and the BPT rules (Kauffmann 2003, Kewley 2001, the paper's x < -0.1 cut) are
written out below rather than imported from ``pipeline.catalog.bpt``. The per-file LCS counts and the ECO
classification of Polimera come from the data's own documentation. The data is never copied into
the project; without the folder every test is skipped.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import astropy.units as u
import cdshealpix
import dask
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from astropy.coordinates import Latitude, Longitude
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from pandas.testing import assert_frame_equal, assert_series_equal

from pipeline.catalog.args import IngestArgs, LabelArgs
from pipeline.catalog.ingest import ingest
from pipeline.catalog.label import label
from pipeline.errors import CatalogError
from storage.hats_catalog import partition_files
from storage.tables import read_catalog, read_labels
from storage.workspace import Workspace

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA = REPO_ROOT.parent / "shared" / "data"
LCS_TABLES = DATA / "lcs" / "clustertables"
LCS_GLOB = str(LCS_TABLES / "*_NSAmastertable.fits")
LCS_ALL_SIZE = DATA / "lcs" / "LCS_all_size.fits"
ECO_CSV = DATA / "eco_resolve" / "NSA_ECO.csv"
ECO_CLASSES = DATA / "eco_resolve" / "eco_emlineclass_full_snr5_nsa.csv"
RESOLVE = DATA / "eco_resolve" / "NSA_RESOLVE_crossmatched"

pytestmark = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"real reference data not found at {DATA} (../shared/data of the repo)"
)

LINES = ("ha_flux", "nii_flux", "hb_flux", "oiii_flux")
ERRORS = tuple(f"{c}_err" for c in LINES)
FLOAT32 = ("z", "radius_arcsec", *LINES, *ERRORS)
NSA_NAMES = {
    "NSAID": "objid",
    "RA": "ra",
    "DEC": "dec",
    "Z": "z",
    "PETROTH90": "radius_arcsec",
    "HAFLUX": "ha_flux",
    "N2FLUX": "nii_flux",
    "HBFLUX": "hb_flux",
    "O3FLUX": "oiii_flux",
    "HAFLUXERR": "ha_flux_err",
    "N2FLUXERR": "nii_flux_err",
    "HBFLUXERR": "hb_flux_err",
    "O3FLUXERR": "oiii_flux_err",
}
ECO_COLUMNS = {
    "objid": "resname",
    "ra": "radeg",
    "dec": "dedeg",
    "ha_flux": "h_alpha_flux",
    "nii_flux": "nii_6584_flux",
    "hb_flux": "h_beta_flux",
    "oiii_flux": "oiii_5007_flux",
    "ha_flux_err": "h_alpha_flux_err",
    "nii_flux_err": "nii_6584_flux_err",
    "hb_flux_err": "h_beta_flux_err",
    "oiii_flux_err": "oiii_5007_flux_err",
}
LABEL_OF = {"sf": 0, "agn": 1, "composite": -1}
# SOURCES.md, "Reference counts": [NII] BPT, all four lines > 0 and S/N >= 3, per cluster table.
LCS_REFERENCE = {
    "A1367": (366, 278, 51, 37),
    "A2052": (393, 294, 61, 38),
    "A2063": (250, 200, 30, 20),
    "AWM4": (195, 149, 33, 13),
    "MKW11": (184, 153, 21, 10),
    "MKW8": (189, 135, 28, 26),
    "NGC6107": (175, 133, 20, 22),
}
LCS_CHUNK_ROWS, LCS_MAX_ROWS = 250, 500  # several read chunks per file and several output shards


def need(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"reference data missing: {', '.join(missing)}")


# --- independent readers and the BPT rules, written out here --------------------------------------


def read_fits_table(path: Path | str, names: list[str]) -> pd.DataFrame:
    """Columns of HDU 1 in native byte order (the headers' odd COMMENT cards warn; harmless)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)
        data = fits.getdata(path, 1)
        return pd.DataFrame({n: np.asarray(data[n]).astype(data[n].dtype.newbyteorder("=")) for n in names})


def as_canonical(frame: pd.DataFrame, names: dict[str, str]) -> pd.DataFrame:
    """Rename to canonical names and cast like the schema says; absent optional columns are NaN."""
    out = frame.rename(columns=names)
    for c in FLOAT32:
        out[c] = out[c].astype(np.float32) if c in out else np.float32(np.nan)
    for c in ("ra", "dec"):
        out[c] = out[c].astype(np.float64)
    return out


def read_lcs_tables(files: list[str]) -> pd.DataFrame:
    """All rows of the given cluster tables, in input order, with their file and row number."""
    parts = []
    for i, path in enumerate(files):
        part = as_canonical(read_fits_table(path, list(NSA_NAMES)), NSA_NAMES)
        part["objid"] = part["objid"].astype(np.int64)
        part["file"], part["row"] = i, np.arange(len(part))
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def kauffmann(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return 0.61 / (x - 0.05) + 1.3


def kewley(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return 0.61 / (x - 0.47) + 1.19


def classify(x: np.ndarray, y: np.ndarray, scheme: str) -> np.ndarray:
    if scheme == "paper":
        return np.where((y < kauffmann(x)) & (x < -0.1), "sf", "agn")
    assert scheme == "three-class"
    sf = (x < 0.05) & (y < kauffmann(x))
    agn = (x >= 0.47) | (y >= kewley(x))
    return np.where(sf, "sf", np.where(agn, "agn", "composite"))


def expected_labels(frame: pd.DataFrame, scheme: str, min_snr: float | None) -> tuple[pd.DataFrame, Counter]:
    """(kept rows indexed by objid with x, y, bpt_class, label; drop counts by worst problem)."""
    flux = frame[list(LINES)].to_numpy(np.float64)
    err = frame[list(ERRORS)].to_numpy(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        problems = {
            "non-finite": ~np.isfinite(flux),
            "non-positive": np.isfinite(flux) & ~(flux > 0),
            "low S/N": np.isfinite(flux) & (flux > 0),
        }
        if min_snr is None:
            problems["low S/N"] = np.zeros_like(flux, dtype=bool)
        else:
            snr_ok = np.isfinite(err) & (err > 0) & (flux / err >= min_snr)
            problems["low S/N"] &= ~snr_ok
    dropped: Counter = Counter()
    keep = np.ones(len(frame), dtype=bool)
    for i in range(len(frame)):
        for kind, bad in problems.items():
            if bad[i].any():
                dropped[f"{kind}: {', '.join(np.array(LINES)[bad[i]])}"] += 1
                keep[i] = False
                break
    kept = frame.loc[keep]
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.log10(kept["nii_flux"].to_numpy(np.float64) / kept["ha_flux"].to_numpy(np.float64))
        y = np.log10(kept["oiii_flux"].to_numpy(np.float64) / kept["hb_flux"].to_numpy(np.float64))
    classes = classify(x, y, scheme)
    out = pd.DataFrame(
        {
            "x": x,
            "y": y,
            "bpt_class": classes,
            "label": np.array([LABEL_OF[c] for c in classes], dtype=np.int64),
        },
        index=pd.Index(kept["objid"].to_numpy(), name="objid"),
    )
    return out.sort_index(), dropped


def healpix29(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    lon, lat = Longitude(ra, unit=u.deg), Latitude(dec, unit=u.deg)
    return cdshealpix.nested.lonlat_to_healpix(lon, lat, 29).astype(np.int64)


# --- running the stages ----------------------------------------------------------------------------


def run_ingest(root: Path, inputs, **kw):
    with dask.config.set(scheduler="synchronous"):
        return ingest(IngestArgs(workspace=root, inputs=tuple(str(p) for p in inputs), **kw))


def run_label(root: Path, **kw):
    kw.setdefault("plots", False)
    with dask.config.set(scheduler="synchronous"):
        manifest = label(LabelArgs(workspace=root, **kw))
    return manifest, read_labels(Workspace(root))


def copy_catalog(src: Path, dst: Path) -> Path:
    """A new workspace holding the ingested catalog of ``src`` (so labels of two runs never mix)."""
    for sub in ("catalog", "manifests"):
        shutil.copytree(src / sub, dst / sub)
    return dst


def check_against_expected(labels: pd.DataFrame, manifest, expected: pd.DataFrame, dropped: Counter) -> None:
    got = labels.set_index("objid").sort_index()
    assert got.index.is_unique
    assert got.index.equals(expected.index), (
        f"labelled ids differ: {len(got.index.difference(expected.index))} unexpected, "
        f"{len(expected.index.difference(got.index))} missing"
    )
    bad = got["bpt_class"].astype(str).to_numpy() != expected["bpt_class"].to_numpy()
    assert not bad.any(), f"{bad.sum()} class mismatches, e.g.\n{got.loc[bad].head()}"
    np.testing.assert_array_equal(got["label"].to_numpy(np.int64), expected["label"].to_numpy())
    np.testing.assert_allclose(got["log_nii_ha"].to_numpy(np.float64), expected["x"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got["log_oiii_hb"].to_numpy(np.float64), expected["y"], rtol=1e-6, atol=1e-6)
    # cube_row (the catalog row, kept by the labels) follows sky order.
    assert labels["cube_row"].is_unique
    by_cube = labels.sort_values("cube_row")
    sky = by_cube.sort_values(["_healpix_29", "objid"], kind="stable")
    assert by_cube["objid"].tolist() == sky["objid"].tolist()
    # The manifest: every dropped row counted once, under its worst problem.
    assert manifest.rows_out == len(expected)
    assert sum(manifest.dropped.values()) == manifest.rows_in - manifest.rows_out
    assert manifest.dropped == dict(dropped)
    classes = expected["bpt_class"].value_counts()
    assert {k: v for k, v in manifest.extra["classes"].items() if v} == classes.to_dict()


# --- 1. LCS cluster tables: ingest ------------------------------------------------------------------


@pytest.fixture(scope="module")
def lcs_files() -> list[str]:
    files = sorted(glob.glob(LCS_GLOB))
    if len(files) != 7:
        pytest.skip(f"expected the 7 LCS cluster tables in {LCS_TABLES}, found {len(files)}")
    return files


@pytest.fixture(scope="module")
def lcs_rows(lcs_files) -> pd.DataFrame:
    return read_lcs_tables(lcs_files)


@pytest.fixture(scope="module")
def lcs_first(lcs_rows) -> pd.DataFrame:
    """One row per NSAID: the first occurrence in input (sorted glob) order."""
    return lcs_rows.drop_duplicates("objid", keep="first").set_index("objid").sort_index()


@pytest.fixture(scope="module")
def lcs_ingested(tmp_path_factory, lcs_files):
    root = tmp_path_factory.mktemp("lcs")
    manifest = run_ingest(root, [LCS_GLOB], chunk_rows=LCS_CHUNK_ROWS, max_rows=LCS_MAX_ROWS)
    return root, manifest


def test_lcs_ingest_counts_rows_and_duplicates(lcs_ingested, lcs_rows, lcs_files):
    root, manifest = lcs_ingested
    n_unique = lcs_rows["objid"].nunique()
    assert (len(lcs_rows), n_unique) == (3947, 3418)  # SOURCES.md
    assert manifest.rows_in == 3947
    assert manifest.dropped == {"bad_coordinates": 0, "duplicate_objid": 3947 - n_unique}
    assert manifest.rows_out == n_unique
    assert [Path(i["path"]).name for i in manifest.inputs] == [Path(f).name for f in lcs_files]
    on_disk = json.loads((root / "manifests" / "ingest.json").read_text())
    assert on_disk["rows_out"] == n_unique and on_disk["dropped"] == manifest.dropped


def test_lcs_catalog_equals_first_occurrence_values(lcs_ingested, lcs_first):
    root, _ = lcs_ingested
    catalog = read_catalog(Workspace(root)).set_index("objid").sort_index()
    assert catalog.index.is_unique
    assert set(catalog.index) == set(lcs_first.index)
    assert catalog["ra"].dtype == np.float64 and catalog["dec"].dtype == np.float64
    for column in ("ra", "dec", *FLOAT32):
        expected = lcs_first[column]
        assert catalog[column].dtype == expected.dtype, column
        assert_series_equal(catalog[column], expected, check_exact=True, check_names=False)


def test_lcs_partitions_sky_ordered_and_complete(lcs_ingested, lcs_first):
    root, manifest = lcs_ingested
    shards = [path for _, _, path in partition_files(root / "catalog")]
    assert len(shards) == manifest.outputs["partitions"] >= len(lcs_first) // LCS_MAX_ROWS
    parts = [pq.read_table(s).to_pandas() for s in shards]
    assert max(len(p) for p in parts) <= LCS_MAX_ROWS
    assert all(len(p) > 0 for p in parts)
    whole = pd.concat(parts, ignore_index=True)
    assert len(whole) == manifest.rows_out == len(lcs_first)  # nothing lost ...
    assert whole["objid"].is_unique  # ... nothing duplicated
    hpx = whole["_healpix_29"].to_numpy()
    assert np.all(np.diff(hpx) >= 0), "partitions, read in sky order, are not sorted by _healpix_29"
    for a, b in zip(parts, parts[1:], strict=False):
        assert a["_healpix_29"].iloc[-1] <= b["_healpix_29"].iloc[0]
    ties = whole.sort_values(["_healpix_29", "objid"], kind="stable")
    assert whole["objid"].tolist() == ties["objid"].tolist()
    np.testing.assert_array_equal(hpx, healpix29(whole["ra"].to_numpy(), whole["dec"].to_numpy()))


def test_lcs_duplicate_keeps_first_input_in_either_order(tmp_path):
    """A2052 and A2063 share NSAIDs whose NSA columns are equal; map z to the per-field SIGMA_NN,
    which differs, to see which occurrence ingest kept: the one from the file given first."""
    a2052, a2063 = LCS_TABLES / "A2052_NSAmastertable.fits", LCS_TABLES / "A2063_NSAmastertable.fits"
    need(a2052, a2063)
    sigma = {
        p: read_fits_table(p, ["NSAID", "SIGMA_NN"])
        .astype({"NSAID": np.int64, "SIGMA_NN": np.float32})
        .set_index("NSAID")["SIGMA_NN"]
        for p in (a2052, a2063)
    }
    shared = sigma[a2052].index.intersection(sigma[a2063].index)
    assert len(shared) == 529
    assert np.all(sigma[a2052][shared].to_numpy() != sigma[a2063][shared].to_numpy())
    for order in ([a2052, a2063], [a2063, a2052]):
        root = tmp_path / order[0].stem
        manifest = run_ingest(root, order, columns={"z": "SIGMA_NN"}, chunk_rows=100)
        assert manifest.dropped["duplicate_objid"] == 529
        catalog = read_catalog(Workspace(root)).set_index("objid")
        first = pd.concat([sigma[order[0]], sigma[order[1]]])
        first = first[~first.index.duplicated(keep="first")]
        assert_series_equal(catalog["z"].sort_index(), first.sort_index(), check_exact=True, check_names=False)


# --- 2. LCS cluster tables: label -------------------------------------------------------------------


@pytest.fixture(scope="module")
def lcs_labelled(lcs_ingested, tmp_path_factory):
    """Labels of the synchronous LCS run, per (scheme, min_snr), each in its own workspace."""
    root, _ = lcs_ingested
    runs = {}
    for scheme, min_snr, plots in (("paper", None, True), ("three-class", 3.0, False)):
        ws = copy_catalog(root, tmp_path_factory.mktemp(f"lcs-{scheme}"))
        runs[scheme, min_snr] = (ws, *run_label(ws, scheme=scheme, min_snr=min_snr, plots=plots))
    return runs


@pytest.mark.parametrize(("scheme", "min_snr"), [("paper", None), ("three-class", 3.0)])
def test_lcs_labels_equal_independent_bpt(lcs_labelled, lcs_first, scheme, min_snr):
    _, manifest, labels = lcs_labelled[scheme, min_snr]
    expected, dropped = expected_labels(lcs_first.reset_index(), scheme, min_snr)
    assert manifest.rows_in == len(lcs_first)
    check_against_expected(labels, manifest, expected, dropped)
    if scheme == "paper":
        assert set(labels["bpt_class"]) == {"sf", "agn"}
        assert set(labels["label"]) == {0, 1}
    else:
        assert set(labels["bpt_class"]) == {"sf", "composite", "agn"}
        assert set(labels["label"]) == {0, 1, -1}


def test_lcs_label_writes_bpt_plots(lcs_labelled):
    ws, manifest, _ = lcs_labelled["paper", None]
    plots = [Path(p) for p in manifest.outputs["plots"]]
    assert {p.name for p in plots} == {"bpt_all.png", "bpt_sf.png", "bpt_agn.png"}
    assert all(p.is_file() and p.stat().st_size > 1000 and p.parent == ws / "reports" for p in plots)


def test_lcs_splits_depend_only_on_objid(lcs_labelled):
    a = lcs_labelled["paper", None][2].set_index("objid")["split"]
    b = lcs_labelled["three-class", 3.0][2].set_index("objid")["split"]
    common = a.index.intersection(b.index)
    assert len(common) > 1000
    assert (a[common] == b[common]).all()
    shares = a.value_counts(normalize=True)
    assert abs(shares["train"] - 0.75) < 0.05 and abs(shares["val"] - 0.15) < 0.04


@pytest.mark.parametrize(("scheme", "min_snr"), [("paper", None), ("three-class", 3.0)])
def test_lcs_sentinels_dropped_as_non_positive(lcs_labelled, lcs_first, scheme, min_snr):
    _, manifest, labels = lcs_labelled[scheme, min_snr]
    sentinel = (lcs_first[list(LINES)] == -9999.0).any(axis=1)
    assert sentinel.sum() > 0
    assert not set(lcs_first.index[sentinel]) & set(labels["objid"])
    non_positive = sum(n for reason, n in manifest.dropped.items() if reason.startswith("non-positive:"))
    assert non_positive >= sentinel.sum()
    assert non_positive == int((lcs_first[list(LINES)] <= 0).any(axis=1).sum())  # no NaN fluxes in LCS
    for line in ("ha_flux", "nii_flux"):
        n = int((lcs_first[line] == -9999.0).sum())
        assert manifest.extra["problems_by_line"][f"{line} non-positive"] >= n


@pytest.mark.parametrize("cluster", sorted(LCS_REFERENCE))
def test_lcs_single_file_matches_documented_counts(tmp_path, cluster):
    path = LCS_TABLES / f"{cluster}_NSAmastertable.fits"
    need(path)
    run_ingest(tmp_path, [path])
    manifest, labels = run_label(tmp_path, scheme="three-class", min_snr=3.0)
    n, sf, composite, agn = LCS_REFERENCE[cluster]
    assert manifest.rows_out == len(labels) == n
    assert manifest.extra["classes"] == {"sf": sf, "composite": composite, "agn": agn}
    expected, dropped = expected_labels(read_lcs_tables([str(path)]), "three-class", 3.0)
    check_against_expected(labels, manifest, expected, dropped)


# --- 3. ECO: renamed columns, string ids, Polimera's classification --------------------------------


@pytest.fixture(scope="module")
def eco_ingested(tmp_path_factory):
    need(ECO_CSV)
    root = tmp_path_factory.mktemp("eco")
    return root, run_ingest(root, [ECO_CSV], columns=ECO_COLUMNS)


@pytest.fixture(scope="module")
def eco_source() -> pd.DataFrame:
    raw = pd.read_csv(ECO_CSV)
    frame = as_canonical(raw.rename(columns={v: k for k, v in ECO_COLUMNS.items()}), {})
    return frame.rename(columns={"objid": "source_id"}).astype({"source_id": "string"})


def test_eco_ingest_string_ids_hash_stably(eco_ingested, eco_source, tmp_path):
    root, manifest = eco_ingested
    assert manifest.rows_in == len(eco_source) == 12916
    assert manifest.dropped == {"bad_coordinates": 0, "duplicate_objid": 0}
    assert manifest.inputs[0]["string_id"] is True
    catalog = read_catalog(Workspace(root))
    assert catalog["objid"].dtype == np.int64
    assert (catalog["objid"] >= 0).all() and catalog["objid"].is_unique
    assert set(catalog["source_id"]) == set(eco_source["source_id"])
    # The same ids from a second ingest in another interpreter (another str hash seed).
    other = tmp_path / "again"
    code = (
        "import sys, dask\n"
        "from pipeline.catalog.args import IngestArgs\n"
        "from pipeline.catalog.ingest import ingest\n"
        "with dask.config.set(scheduler='synchronous'):\n"
        f"    ingest(IngestArgs(workspace=sys.argv[1], inputs=(sys.argv[2],), columns={ECO_COLUMNS!r}))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code, str(other), str(ECO_CSV)], check=True, env=env, timeout=120)
    again = read_catalog(Workspace(other))
    ids = catalog.set_index("source_id")["objid"].sort_index()
    assert_series_equal(ids, again.set_index("source_id")["objid"].sort_index())
    # Values are the CSV's, keyed by the ECO name; ECO has no redshift or radius.
    got = catalog.set_index("source_id").sort_index()
    want = eco_source.set_index("source_id").sort_index()
    for column in ("ra", "dec", *LINES, *ERRORS):
        assert_series_equal(got[column], want[column], check_exact=True, check_names=False)
    assert got["z"].isna().all() and got["radius_arcsec"].isna().all()


@pytest.fixture(scope="module")
def eco_labelled(eco_ingested):
    root, _ = eco_ingested
    return run_label(root, scheme="three-class", min_snr=5.0)


def test_eco_labels_equal_independent_bpt(eco_labelled, eco_ingested, eco_source):
    manifest, labels = eco_labelled
    ids = read_catalog(Workspace(eco_ingested[0])).set_index("source_id")["objid"]
    frame = eco_source.assign(objid=ids.loc[eco_source["source_id"]].to_numpy())
    expected, dropped = expected_labels(frame, "three-class", 5.0)
    check_against_expected(labels, manifest, expected, dropped)
    assert labels["source_id"].notna().all()


def test_eco_labels_agree_with_polimera(eco_labelled):
    need(ECO_CLASSES)
    _, labels = eco_labelled
    theirs = pd.read_csv(ECO_CLASSES)
    assert len(theirs) == 1586
    flags = theirs.drop(columns="galname").astype(bool)
    mapped = np.select(
        [
            flags["defstarform"] | flags["sftoagn"],
            flags["composite"],
            flags["defagn"] | flags["ambigagn"] | flags["agntosf"],
        ],
        ["sf", "composite", "agn"],
        default="?",
    )
    reference = pd.Series(mapped, index=theirs["galname"].to_numpy())
    assert (reference != "?").all()
    assert reference.value_counts().to_dict() == {"sf": 1309, "composite": 157, "agn": 120}
    ours = labels.set_index(labels["source_id"].astype(str))["bpt_class"].astype(str)
    labelled = reference.index.intersection(ours.index)
    missing = reference.index.difference(ours.index)
    assert len(missing) == 0, f"{len(missing)} of Polimera's 1586 galaxies not labelled: {list(missing[:10])}"
    disagree = ours[labelled] != reference[labelled]
    assert not disagree.any(), pd.DataFrame({"ours": ours[labelled], "theirs": reference[labelled]})[disagree]


# --- 4. RESOLVE: a CSV without extension, RESOLVE radii ---------------------------------------------


def test_resolve_sniffed_csv_radius_and_sentinels(tmp_path):
    need(RESOLVE)
    assert RESOLVE.suffix == ""
    raw = pd.read_csv(RESOLVE, low_memory=False)
    source = as_canonical(raw[[c for c in NSA_NAMES if c in raw.columns]], NSA_NAMES)
    source["radius_arcsec"] = raw["r90"].astype(np.float32)
    source = source.set_index("objid").sort_index()
    assert source.index.is_unique and len(source) == 1953

    manifest = run_ingest(tmp_path, [RESOLVE], radius_column="r90")
    assert manifest.inputs[0]["format"] == "csv"
    assert manifest.inputs[0]["columns"]["radius_arcsec"] == "r90"
    assert (manifest.rows_in, manifest.rows_out) == (1953, 1953)
    catalog = read_catalog(Workspace(tmp_path)).set_index("objid").sort_index()
    assert catalog.index.equals(source.index)
    for column in ("ra", "dec", *FLOAT32):
        assert_series_equal(catalog[column], source[column], check_exact=True, check_names=False)
    no_z = source.index[source["z"] <= 0]
    assert len(no_z) == 1  # SOURCES.md: one row has Z <= 0; ingest does not filter on z
    assert catalog.loc[no_z, "z"].tolist() == source.loc[no_z, "z"].tolist()

    labelled, labels = run_label(tmp_path, scheme="paper")
    expected, dropped = expected_labels(source.reset_index(), "paper", None)
    check_against_expected(labels, labelled, expected, dropped)
    sentinel = source.index[(source[list(LINES)] == -9999.0).any(axis=1)]
    assert len(sentinel) == 20
    assert not set(sentinel) & set(labels["objid"])
    _, sentinel_reasons = expected_labels(source.loc[sentinel].reset_index(), "paper", None)
    assert sum(sentinel_reasons.values()) == 20
    assert all(reason.startswith("non-positive: ") for reason in sentinel_reasons)


# --- 5. LCS_all_size.fits: no flux errors, no Z -----------------------------------------------------


def test_lcs_all_size_without_errors_or_redshift(tmp_path):
    need(LCS_ALL_SIZE)
    names = ["NSAID", "RA", "DEC", "PETROTH90", "HAFLUX", "N2FLUX", "HBFLUX", "O3FLUX"]
    rows = as_canonical(read_fits_table(LCS_ALL_SIZE, names), NSA_NAMES)
    rows["objid"] = rows["objid"].astype(np.int64)
    first = rows.drop_duplicates("objid", keep="first").set_index("objid").sort_index()
    assert (len(rows), len(first)) == (1800, 1789)

    manifest = run_ingest(tmp_path, [LCS_ALL_SIZE])
    assert manifest.rows_in == 1800
    assert manifest.dropped == {"bad_coordinates": 0, "duplicate_objid": 11}
    assert not any(e in manifest.inputs[0]["columns"] for e in ERRORS)
    catalog = read_catalog(Workspace(tmp_path)).set_index("objid").sort_index()
    assert catalog.index.equals(first.index)
    assert catalog["z"].isna().all()
    assert catalog[list(ERRORS)].isna().all().all()
    assert catalog["z"].dtype == np.float32 and (catalog[list(ERRORS)].dtypes == np.float32).all()
    for column in ("ra", "dec", "radius_arcsec", *LINES):
        assert_series_equal(catalog[column], first[column], check_exact=True, check_names=False)

    with pytest.raises(CatalogError, match="_err") as excinfo:
        run_label(tmp_path, scheme="three-class", min_snr=3.0)
    message = str(excinfo.value)
    assert "LCS_all_size.fits" in message and "min-snr" in message.lower()
    assert not (tmp_path / "labels").exists()

    labelled, labels = run_label(tmp_path, scheme="three-class")
    expected, dropped = expected_labels(first.reset_index(), "three-class", None)
    check_against_expected(labels, labelled, expected, dropped)
    above_kewley = set(expected.index[expected["bpt_class"] == "agn"])
    assert set(labels.loc[labels["bpt_class"] == "agn", "objid"]) == above_kewley
    assert len(above_kewley) > 50


# --- 6. the command line on a real LocalCluster ----------------------------------------------------


def test_cli_local_cluster_labels_equal_synchronous_run(tmp_path, lcs_labelled, capsys):
    from pipeline.cli import main

    ws = str(tmp_path / "cli")
    common = ["--quiet", "--cluster", "local", "--workers", "2"]
    ingest_argv = ["ingest", LCS_GLOB, "--workspace", ws, "--max-rows", str(LCS_MAX_ROWS)]
    assert main([*common, *ingest_argv, "--chunk-rows", str(LCS_CHUNK_ROWS)]) == 0
    label_argv = ["label", "--workspace", ws, "--scheme", "three-class", "--min-snr", "3", "--no-plots"]
    assert main([*common, *label_argv]) == 0
    out = capsys.readouterr().out
    assert "ingest" in out and "label" in out

    _, sync_manifest, sync = lcs_labelled["three-class", 3.0]
    cli = read_labels(Workspace(ws))
    columns = ["objid", "_healpix_29", "log_nii_ha", "log_oiii_hb", "bpt_class", "label", "split", "cube_row"]
    assert_frame_equal(
        cli.sort_values("objid")[columns].reset_index(drop=True),
        sync.sort_values("objid")[columns].reset_index(drop=True),
    )
    cli_manifest = json.loads((Path(ws) / "manifests" / "label.json").read_text())
    assert cli_manifest["dropped"] == sync_manifest.dropped
    assert cli_manifest["extra"]["classes"] == sync_manifest.extra["classes"]


# --- the workspace tables are HATS catalogs LSDB opens (real LCS rows) ------------------------------


def great_circle_deg(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Angular distance (degrees) by the haversine formula, written out here."""
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(x, dtype=np.float64)) for x in (ra1, dec1, ra2, dec2))
    h = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(h)))


def test_lsdb_opens_the_lcs_catalog_and_a_cone_search_matches_great_circles(lcs_ingested, lcs_first):
    lsdb = pytest.importorskip("lsdb")
    root, manifest = lcs_ingested
    catalog = lsdb.open_catalog(root / "catalog")
    assert len(catalog.get_healpix_pixels()) == manifest.outputs["partitions"] > 1
    whole = catalog.compute()
    assert len(whole) == len(lcs_first) and set(whole["objid"]) == set(lcs_first.index)
    # A2052 (about RA 229.2, Dec 7.0): a cone of 0.5 degree holds part of the cluster, not all of it.
    ra0, dec0, radius = 229.185, 7.0217, 0.5
    found = set(catalog.cone_search(ra0, dec0, radius * 3600).compute()["objid"])
    inside = great_circle_deg(ra0, dec0, lcs_first["ra"], lcs_first["dec"]) <= radius
    assert found == set(lcs_first.index[inside]) and 20 < len(found) < len(lcs_first) // 2


def test_lsdb_crossmatch_pairs_every_label_with_its_catalog_row(lcs_labelled, lcs_first):
    lsdb = pytest.importorskip("lsdb")
    ws, manifest, labels = lcs_labelled["paper", None]
    catalog, labelled = lsdb.open_catalog(ws / "catalog"), lsdb.open_catalog(ws / "labels")
    assert len(labelled.compute()) == manifest.rows_out == len(labels)
    pairs = labelled.crossmatch(catalog, n_neighbors=1, radius_arcsec=0.01, suffixes=("_l", "_c")).compute()
    assert len(pairs) == len(labels)
    assert (pairs["objid_l"].to_numpy() == pairs["objid_c"].to_numpy()).all()
    assert set(pairs["objid_l"]) == set(labels["objid"]) and (pairs["_dist_arcsec"] < 1e-6).all()
    assert (pairs["cube_row_l"].to_numpy() == pairs["cube_row_c"].to_numpy()).all()


def test_a_hats_catalog_written_by_lsdb_ingests_to_the_same_rows(lcs_first, tmp_path):
    lsdb = pytest.importorskip("lsdb")
    frame = lcs_first.reset_index()
    source = frame.rename(columns={v: k for k, v in NSA_NAMES.items()})[list(NSA_NAMES)]
    half = len(source) // 2
    for name, part in (("a", source.iloc[:half]), ("b", source.iloc[half:])):  # a list of two HATS catalogs
        lsdb.from_dataframe(part, ra_column="RA", dec_column="DEC", partition_rows=300).write_catalog(
            tmp_path / name, create_thumbnail=True, create_per_partition_statistics=True
        )
    assert (tmp_path / "a" / "collection.properties").exists()  # a collection: catalog + margin cache (copies)
    assert list((tmp_path / "a").glob("*/data_thumbnail.parquet"))  # and Parquet files that are not rows
    manifest = run_ingest(tmp_path / "ws", [tmp_path / "a", tmp_path / "b"], max_rows=400)
    assert manifest.rows_out == len(frame) and manifest.dropped == {"bad_coordinates": 0, "duplicate_objid": 0}
    assert manifest.rows_in == len(frame)  # no margin row or thumbnail row was read
    got = read_catalog(Workspace(tmp_path / "ws")).set_index("objid").sort_index()
    for column in ("ra", "dec", "z", "radius_arcsec", *LINES, *ERRORS):
        np.testing.assert_array_equal(got[column].to_numpy(), lcs_first[column].to_numpy(), err_msg=column)
