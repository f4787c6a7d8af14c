"""The offline NSA-like catalog: layout, determinism, realism; expected values computed here."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.table import Table
from distributed import Client, LocalCluster

from pipeline.errors import ConfigError
from pipeline.synthetic.args import SkyArgs
from pipeline.synthetic.catalog import SKY_FITS, SKY_PARQUET, make_sky
from pipeline.synthetic.footprint import in_footprint
from pipeline.synthetic.population import iau_names

N_REAL = 20_000  # big enough for fractions to +-0.5 %
LINES = ("HAFLUX", "N2FLUX", "HBFLUX", "O3FLUX")
# The NSA v0_1_2 layout, written out by hand: name → TFORM.
EXPECTED_TFORMS = {
    "NSAID": "J",
    "IAUNAME": "19A",
    "SUBDIR": "27A",
    "RA": "D",
    "DEC": "D",
    "Z": "E",
    "ZDIST": "E",
    **{f"{line}{suffix}": "E" for line in LINES for suffix in ("", "ERR")},
    "PETROTH50": "E",
    "PETROTH90": "E",
    "SERSIC_TH50": "E",
    "NMGY": "7E",
    "NMGY_IVAR": "7E",
    "ABSMAG": "7E",
    "SIM_CLASS": "I",
}
TFORM_BYTES = {"J": 4, "D": 8, "E": 4, "I": 2, "A": 1}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cluster_client():
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def sky(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sky")
    make_sky(SkyArgs(out=out, n=N_REAL, seed=11, partition_rows=3_000))
    return out


@pytest.fixture(scope="module")
def table(sky) -> Table:
    return Table.read(sky / SKY_FITS, hdu=1)


# ---------------------------------------------------------------------------------------- footprint


def test_footprint_hand_picked_points():
    inside = [
        (180.0, 30.0),  # middle of the northern cap
        (110.0, -5.0),  # its corners, boundaries included
        (265.0, 70.0),
        (0.0, 0.0),  # stripe 82
        (359.5, 1.0),
        (-20.0, -10.0),  # RA 340, stripe 86; RA wraps
        (30.0, 15.0),  # stripe 76
        (60.0, -1.5),
    ]
    outside = [
        (100.0, 30.0),  # west of the cap
        (180.0, 71.0),  # north of it
        (180.0, -6.0),  # south of it
        (300.0, 0.0),  # between cap and stripes
        (0.0, 5.0),  # between stripes 82 and 76
        (90.0, 0.0),  # east end of the stripes passed
        (30.0, -20.0),
        (180.0, -60.0),
        (float("nan"), 0.0),
    ]
    ra, dec = np.array(inside + outside).T
    expected = np.array([True] * len(inside) + [False] * len(outside))
    np.testing.assert_array_equal(in_footprint(ra, dec), expected)


def test_footprint_covers_about_a_quarter_of_the_sky():
    # Boxes (by hand): NGC 155° x [-5, 70], three stripes 110° x 3° each; area = Δα (sin δ2 - sin δ1).
    sin = lambda d: math.sin(math.radians(d))  # noqa: E731
    sr = math.radians(155) * (sin(70) - sin(-5)) + math.radians(110) * (
        (sin(1.5) - sin(-1.5)) + (sin(16.5) - sin(13.5)) + (sin(-8.5) - sin(-11.5))
    )
    rng = np.random.default_rng(0)
    ra = rng.uniform(0, 360, 400_000)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, 400_000)))
    assert in_footprint(ra, dec).mean() == pytest.approx(sr / (4 * math.pi), abs=0.003)


# ------------------------------------------------------------------------------------------- layout


def test_fits_has_the_nsa_layout(sky):
    with fits.open(sky / SKY_FITS, memmap=True) as hdul:
        assert len(hdul) == 2
        assert hdul[0].header["NAXIS"] == 0
        hdu = hdul[1]
        assert isinstance(hdu, fits.BinTableHDU)
        assert hdu.header["EXTNAME"] == "NSA"
        assert hdu.header["NAXIS2"] == N_REAL
        assert {c.name: c.format for c in hdu.columns} == EXPECTED_TFORMS
        assert hdu.columns["HAFLUX"].unit == "10**-17 erg s-1 cm-2"
        assert hdu.columns["PETROTH90"].unit == "arcsec"
        row_bytes = sum(int(f[:-1] or 1) * TFORM_BYTES[f[-1]] for f in EXPECTED_TFORMS.values())
        assert hdu.header["NAXIS1"] == row_bytes == 204
        data_at = hdul.fileinfo(1)["datLoc"]
        data = hdu.data
        reference = {name: np.array(data[name]) for name in EXPECTED_TFORMS}

    size = (sky / SKY_FITS).stat().st_size
    assert size % 2880 == 0
    assert size == data_at + math.ceil(N_REAL * row_bytes / 2880) * 2880

    # Decode the raw bytes ourselves as big-endian rows: what astropy reads must be what is there.
    raw_dtype = np.dtype(
        [
            (name, "S" + tform[:-1]) if tform.endswith("A") else (name, ">" + _np_code(tform[-1]), _shape(tform))
            for name, tform in EXPECTED_TFORMS.items()
        ]
    )
    with open(sky / SKY_FITS, "rb") as fh:
        fh.seek(data_at)
        raw = np.frombuffer(fh.read(N_REAL * row_bytes), dtype=raw_dtype)
        padding = fh.read()
    assert set(padding) <= {0}
    for name, values in reference.items():
        got = np.char.decode(raw[name], "ascii") if raw[name].dtype.kind == "S" else raw[name]
        np.testing.assert_array_equal(got, values, err_msg=name)
    assert raw["NSAID"][:3].tolist() == [0, 1, 2]


def _np_code(letter: str) -> str:
    return {"J": "i4", "D": "f8", "E": "f4", "I": "i2"}[letter]


def _shape(tform: str) -> tuple[int, ...]:
    return (int(tform[:-1]),) if tform[:-1] else ()


def test_fits_table_equals_parquet_dataset(sky, table):
    frame = pd.read_parquet(sky / SKY_PARQUET)
    assert list(frame.columns) == list(EXPECTED_TFORMS)
    assert len(frame) == len(table) == N_REAL
    for name in EXPECTED_TFORMS:
        fits_values = np.asarray(table[name])
        if fits_values.dtype.kind == "S":
            parquet_values = frame[name].to_numpy(dtype=object)
            assert parquet_values.tolist() == [v.decode("ascii") for v in fits_values], name
        elif fits_values.ndim == 2:
            parquet_values = np.stack(frame[name].to_numpy())
            assert parquet_values.dtype == np.float32
            np.testing.assert_array_equal(parquet_values, fits_values, err_msg=name)
        else:
            parquet_values = frame[name].to_numpy()
            assert parquet_values.dtype == fits_values.dtype.newbyteorder("="), name
            np.testing.assert_array_equal(parquet_values, fits_values, err_msg=name)
        if fits_values.dtype.kind == "f":
            assert np.isfinite(fits_values).all(), name


def test_parquet_parts_follow_partitions_and_manifest_counts(sky, table):
    parts = sorted((sky / SKY_PARQUET).glob("*.parquet"))
    assert [p.name for p in parts] == [f"part-{i:05d}.parquet" for i in range(math.ceil(N_REAL / 3_000))]
    rows = [pq.ParquetFile(p).metadata.num_rows for p in parts]
    assert rows == [3_000] * 6 + [2_000]
    schema = pq.read_schema(parts[0])
    nmgy_type = schema.field("NMGY").type
    assert pa.types.is_fixed_size_list(nmgy_type) and nmgy_type.list_size == 7
    assert nmgy_type.value_type == pa.float32()
    assert schema.field("IAUNAME").type == pa.string()
    assert schema.field("NSAID").type == pa.int32() and schema.field("SIM_CLASS").type == pa.int16()

    manifest = json.loads((sky / "sky_manifest.json").read_text())
    assert manifest["parameters"]["n"] == N_REAL and manifest["parameters"]["seed"] == 11
    counts = np.bincount(np.asarray(table["SIM_CLASS"]), minlength=4)
    assert list(manifest["extra"]["class_counts"].values()) == counts.tolist()
    assert manifest["outputs"]["fits"]["checksum"] == "sha256:" + sha256(sky / SKY_FITS)
    assert [f["rows"] for f in manifest["outputs"]["parquet"]["files"]] == rows


# ------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes(tmp_path):
    args = dict(n=5_000, seed=3, partition_rows=1_200)
    make_sky(SkyArgs(out=tmp_path / "a", **args))
    make_sky(SkyArgs(out=tmp_path / "b", **args))
    assert sha256(tmp_path / "a" / SKY_FITS) == sha256(tmp_path / "b" / SKY_FITS)


def test_cluster_and_partitioning_do_not_change_the_data(tmp_path, cluster_client):
    make_sky(SkyArgs(out=tmp_path / "local", n=5_000, seed=3, partition_rows=1_200), client=None)
    make_sky(SkyArgs(out=tmp_path / "cluster", n=5_000, seed=3, partition_rows=700), client=cluster_client)
    assert sha256(tmp_path / "local" / SKY_FITS) == sha256(tmp_path / "cluster" / SKY_FITS)
    local = pq.read_table(tmp_path / "local" / SKY_PARQUET)
    distributed = pq.read_table(tmp_path / "cluster" / SKY_PARQUET)
    assert local.equals(distributed)


def test_smaller_n_is_a_prefix_and_another_seed_differs(tmp_path):
    make_sky(SkyArgs(out=tmp_path / "big", n=3_000, seed=3, partition_rows=1_000))
    make_sky(SkyArgs(out=tmp_path / "small", n=1_234, seed=3, partition_rows=500))
    make_sky(SkyArgs(out=tmp_path / "other", n=3_000, seed=4, partition_rows=1_000))
    big = Table.read(tmp_path / "big" / SKY_FITS)
    small = Table.read(tmp_path / "small" / SKY_FITS)
    other = Table.read(tmp_path / "other" / SKY_FITS)
    for name in ("RA", "HAFLUX", "SIM_CLASS", "IAUNAME"):
        np.testing.assert_array_equal(np.asarray(small[name]), np.asarray(big[name])[:1_234])
        assert not np.array_equal(np.asarray(other[name]), np.asarray(big[name])), name


# ----------------------------------------------------------------------------------------- realism


def test_fluxes_have_nsa_like_non_positive_fractions_and_sentinels(table):
    for name in LINES:
        flux = np.asarray(table[name])
        assert 0.10 <= np.mean(flux <= 0) <= 0.20, name
        assert np.mean(flux == 0) > 0.002, name
        assert np.mean(flux == -9999.0) < 0.001, name
        err = np.asarray(table[name + "ERR"])
        assert np.all((err > 0) | (err == -9999.0)), name
    sentinels = np.sum(np.asarray(table["HAFLUX"]) == -9999.0) + np.sum(np.asarray(table["N2FLUX"]) == -9999.0)
    assert sentinels > 0


def test_ids_positions_redshifts_and_radii_are_valid(table):
    np.testing.assert_array_equal(np.asarray(table["NSAID"]), np.arange(N_REAL))
    ra, dec = np.asarray(table["RA"]), np.asarray(table["DEC"])
    assert np.all((ra >= 0) & (ra < 360)) and np.all((dec >= -90) & (dec <= 90))
    ngc = (ra >= 110) & (ra <= 265) & (dec >= -5) & (dec <= 70)
    south = (ra >= 310) | (ra <= 60)
    stripes = south & (((dec >= -1.5) & (dec <= 1.5)) | ((dec >= 13.5) & (dec <= 16.5)) | (np.abs(dec + 10) <= 1.5))
    assert np.all(ngc | stripes)
    assert 0.85 < ngc.mean() < 0.95  # by area, ~90 % in the northern cap

    z = np.asarray(table["Z"])
    assert np.all((z >= 0.005) & (z <= 0.055))
    assert np.mean(z > 0.03) > 0.7  # p(z) ∝ z²: P(z > 0.03) = (0.055³ - 0.03³) / (0.055³ - 0.005³) ≈ 0.84
    assert np.all(np.abs(np.asarray(table["ZDIST"]) - z) < 0.005)

    th50, th90 = np.asarray(table["PETROTH50"]), np.asarray(table["PETROTH90"])
    assert np.all(th50 > 0) and np.all(th90 > th50) and np.all(np.asarray(table["SERSIC_TH50"]) > 0)
    assert 2.0 < np.median(th50) < 8.0
    assert np.median(th50[z < 0.02]) > 1.5 * np.median(th50[z > 0.045])  # nearer is bigger


def test_names_encode_the_coordinates(table):
    ra, dec = np.asarray(table["RA"]), np.asarray(table["DEC"])
    names = [s.decode() for s in np.asarray(table["IAUNAME"])]
    subdirs = [s.decode() for s in np.asarray(table["SUBDIR"])]
    for i in range(0, N_REAL, 97):
        name = names[i]
        assert len(name) == 19 and name[0] == "J" and name[10] in "+-", name
        hours = int(name[1:3]) + int(name[3:5]) / 60 + float(name[5:10]) / 3600
        degrees = int(name[11:13]) + int(name[13:15]) / 60 + float(name[15:19]) / 3600
        # Truncated, not rounded: the name is at most 0.01 s (RA) and 0.1" (Dec) below the position.
        assert 0 <= ra[i] / 15 - hours < 0.01 / 3600 + 1e-9, (name, ra[i])
        assert 0 <= abs(dec[i]) - degrees < 0.1 / 3600 + 1e-9, (name, dec[i])
        assert (name[10] == "-") == (dec[i] < 0)
        even = 2 * int(abs(dec[i]) // 2)
        assert subdirs[i] == f"{int(ra[i] // 15):02d}h/{'m' if dec[i] < 0 else 'p'}{even:02d}/{name}"


def test_iau_name_of_hand_worked_points():
    ra = np.array([15 * (9 + 56 / 60 + 45.235 / 3600), 0.0, 359.99999999])
    dec = np.array([1 + 32 / 60 + 15.15 / 3600, -30.05 / 3600, -89.99991])
    names, subdirs = iau_names(ra, dec)
    assert names.tolist() == [b"J095645.23+013215.1", b"J000000.00-000030.0", b"J235959.99-895959.6"]
    assert subdirs.tolist()[0] == b"09h/p00/J095645.23+013215.1"
    assert subdirs.tolist()[2] == b"23h/m88/J235959.99-895959.6"


def test_classes_and_bpt_positions_are_realistic(table):
    true_class = np.asarray(table["SIM_CLASS"])
    fractions = np.bincount(true_class, minlength=4) / N_REAL
    np.testing.assert_allclose(fractions, [0.63, 0.155, 0.055, 0.16], atol=0.02)

    fluxes = {name: np.asarray(table[name]).astype(np.float64) for name in LINES}
    ok = np.all([f > 0 for f in fluxes.values()], axis=0)
    x = np.log10(fluxes["N2FLUX"][ok] / fluxes["HAFLUX"][ok])
    y = np.log10(fluxes["O3FLUX"][ok] / fluxes["HBFLUX"][ok])
    below_kauffmann = (x < 0.05) & (y < 0.61 / (x - 0.05) + 1.3)
    above_kewley = (x >= 0.47) | (y > 0.61 / (x - 0.47) + 1.19)
    sf, agn = below_kauffmann, above_kewley & ~below_kauffmann
    composite = ~sf & ~agn
    assert 0.45 <= sf.mean() <= 0.75
    assert agn.mean() > 0.10
    assert composite.mean() > 0.05
    # The truth agrees with the diagram most of the time, not always.
    assert 0.75 < sf[true_class[ok] == 0].mean() < 0.99
    assert 0.75 < agn[true_class[ok] >= 2].mean() < 0.99


def test_agn_hosts_are_redder_and_more_concentrated(table):
    true_class = np.asarray(table["SIM_CLASS"])
    nmgy = np.asarray(table["NMGY"])
    g_minus_r = -2.5 * np.log10(nmgy[:, 3] / nmgy[:, 4])
    concentration = np.asarray(table["PETROTH90"]) / np.asarray(table["PETROTH50"])
    sf, agn = true_class == 0, true_class >= 2
    assert np.median(g_minus_r[agn]) > np.median(g_minus_r[sf]) + 0.15
    assert np.median(concentration[agn]) > np.median(concentration[sf]) + 0.3
    absmag = np.asarray(table["ABSMAG"])
    assert np.all((absmag[:, 4] > -25) & (absmag[:, 4] < -15))


# ------------------------------------------------------------------------------------------ errors


def test_output_under_a_file_is_a_config_error(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="not-a-dir"):
        make_sky(SkyArgs(out=blocker / "sky", n=10, seed=0, partition_rows=10))
    with pytest.raises(ConfigError, match="not-a-dir"):
        make_sky(SkyArgs(out=blocker, n=10, seed=0, partition_rows=10))
