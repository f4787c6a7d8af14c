"""Readers: FITS / Parquet / CSV to the canonical schema, and errors that name file, column and fix."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from conftest import nsa_rows, rows_frame, write_nsa_fits

from pipeline.catalog.ids import stable_id_hash
from pipeline.catalog.readers import csv
from pipeline.catalog.readers import fits as fits_reader
from pipeline.catalog.sources import inspect_all, plan_chunks, read_chunk
from pipeline.errors import CatalogError


def read_all(path: str, **kw) -> pd.DataFrame:
    (source,) = inspect_all([path], **kw)
    return pd.concat([read_chunk(c) for c in plan_chunks(source, 128)], ignore_index=True)


def test_fits_chunks_equal_the_file(nsa_fits):
    path, rows = nsa_fits
    frame = read_all(str(path))
    assert len(frame) == 600
    np.testing.assert_array_equal(frame["objid"], rows["NSAID"].astype(np.int64))
    np.testing.assert_array_equal(frame["ra"], rows["RA"])
    np.testing.assert_array_equal(frame["oiii_flux"], rows["O3FLUX"])
    np.testing.assert_array_equal(frame["radius_arcsec"], rows["PETROTH90"])
    assert frame["ra"].dtype == np.float64 and frame["ha_flux"].dtype == np.float32


def test_radius_column_option(nsa_fits):
    path, rows = nsa_fits
    frame = read_all(str(path), radius_column="petroth50")  # case-insensitive
    np.testing.assert_array_equal(frame["radius_arcsec"], rows["PETROTH50"])


def test_parquet_and_csv_read_like_fits(tmp_path, nsa_fits):
    path, rows = nsa_fits
    table = rows_frame(rows)
    table.to_parquet(tmp_path / "cat.parquet", row_group_size=100)
    table.to_csv(tmp_path / "cat.csv", index=False)
    want = read_all(str(path))
    for other in ("cat.parquet", "cat.csv"):
        got = read_all(str(tmp_path / other))
        pd.testing.assert_frame_equal(got, want, check_exact=other.endswith("parquet"), rtol=1e-6)


def test_csv_byte_ranges_cover_every_row_once(tmp_path, monkeypatch):
    rows = nsa_rows(3000)
    rows_frame(rows).to_csv(tmp_path / "cat.csv", index=False)
    monkeypatch.setattr(csv, "CSV_CHUNK_BYTES", 4096)  # many chunks, cut mid-line
    (source,) = inspect_all([str(tmp_path / "cat.csv")])
    chunks = plan_chunks(source, 1000)
    assert len(chunks) > 20
    frame = pd.concat([read_chunk(c) for c in chunks], ignore_index=True)
    np.testing.assert_array_equal(frame["objid"], rows["NSAID"])


def test_string_ids_hash_stably(tmp_path):
    rows = rows_frame(nsa_rows(50)).drop(columns="NSAID")
    rows["name"] = [f"ECO{i:05d}" for i in range(50)]
    rows.to_csv(tmp_path / "eco.csv", index=False)
    frame = read_all(str(tmp_path / "eco.csv"), columns={"objid": "name"})
    assert list(frame["source_id"]) == list(rows["name"])
    import hashlib

    first = int.from_bytes(hashlib.blake2b(b"ECO00000", digest_size=8).digest(), "little") & (2**63 - 1)
    assert frame["objid"].iloc[0] == first
    np.testing.assert_array_equal(stable_id_hash(np.array(["ECO00000"])), [first])
    assert frame["objid"].is_unique and (frame["objid"] >= 0).all()


def test_glob_and_directory_inputs(tmp_path):
    rows = rows_frame(nsa_rows(20))
    (tmp_path / "ds").mkdir()
    rows.iloc[:10].to_parquet(tmp_path / "ds" / "a.parquet")
    rows.iloc[10:].to_parquet(tmp_path / "ds" / "b.parquet")
    assert [Path(s.path).name for s in inspect_all([str(tmp_path / "ds")])] == ["a.parquet", "b.parquet"]
    assert len(inspect_all([str(tmp_path / "ds" / "*.parquet")])) == 2
    with pytest.raises(CatalogError, match=r"no file matches"):
        inspect_all([str(tmp_path / "nothing*.fits")])


def test_format_sniffed_without_extension(tmp_path, nsa_fits):
    path, _ = nsa_fits
    (tmp_path / "noext").write_bytes(path.read_bytes())
    rows_frame(nsa_rows(5)).to_csv(tmp_path / "table_noext", index=False)
    assert inspect_all([str(tmp_path / "noext")])[0].format == "fits"
    assert inspect_all([str(tmp_path / "table_noext")])[0].format == "csv"


# --- bad input: each error names the file, the column and the fix -----------------------------


def test_missing_required_column(tmp_path):
    rows = nsa_rows(5)
    del rows["RA"]
    path = write_nsa_fits(tmp_path / "nora.fits", rows)
    with pytest.raises(CatalogError) as err:
        inspect_all([str(path)])
    message = str(err.value)
    assert "nora.fits" in message and "'RA'" in message and "--column ra=NAME" in message


def test_missing_user_column_suggests_similar(tmp_path, nsa_fits):
    path, _ = nsa_fits
    with pytest.raises(CatalogError, match=r"no column 'HAFLUKS'.*Similar columns: HAFLUX"):
        inspect_all([str(path)], columns={"ha_flux": "HAFLUKS"})


def test_wrong_type_column(tmp_path):
    rows = nsa_rows(5)
    rows["HAFLUX"] = np.array(["a", "b", "c", "d", "e"])
    path = write_nsa_fits(tmp_path / "strflux.fits", rows, {"HAFLUX": "5A"})
    with pytest.raises(CatalogError) as err:
        inspect_all([str(path)])
    assert all(s in str(err.value) for s in ("strflux.fits", "'HAFLUX'", "not a number", "--column ha_flux="))


def test_array_column_mapped_to_scalar(nsa_fits):
    path, _ = nsa_fits
    with pytest.raises(CatalogError, match=r"'NMGY' \(ha_flux\) holds several values per row"):
        inspect_all([str(path)], columns={"ha_flux": "NMGY"})


def test_non_numeric_values_in_csv(tmp_path):
    rows = rows_frame(nsa_rows(3000))
    rows["HBFLUX"] = rows["HBFLUX"].astype(object)
    rows.loc[2500, "HBFLUX"] = "12..5"  # past the 2000-row sample the schema check reads
    rows.to_csv(tmp_path / "junk.csv", index=False)
    with pytest.raises(
        CatalogError, match=r"junk.csv: row 2,501 \(counting data rows from 1\): column 'HBFLUX' \(hb_flux\) holds "
        r"'12..5', not a number"
    ):
        read_all(str(tmp_path / "junk.csv"))


@pytest.mark.parametrize("name", ["empty.fits", "empty.csv", "empty.parquet"])
def test_empty_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(CatalogError, match=rf"{name}: file is empty"):
        inspect_all([str(tmp_path / name)])


def test_zero_row_table(tmp_path):
    rows = {k: v[:0] for k, v in nsa_rows(3).items()}
    path = write_nsa_fits(tmp_path / "zero.fits", rows)
    with pytest.raises(CatalogError, match=r"zero.fits: catalog has no rows"):
        inspect_all([str(path)])
    rows_frame(nsa_rows(3)).iloc[:0].to_csv(tmp_path / "zero.csv", index=False)
    with pytest.raises(CatalogError, match=r"zero.csv: catalog has no rows"):
        inspect_all([str(tmp_path / "zero.csv")])


def test_unreadable_files(tmp_path, nsa_fits):
    path, _ = nsa_fits
    truncated = tmp_path / "cut.fits"
    truncated.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CatalogError, match=r"cut.fits: .*(not a readable FITS|no table)"):
        inspect_all([str(truncated)])
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(CatalogError, match=r"bad.parquet: not a readable Parquet file"):
        inspect_all([str(tmp_path / "bad.parquet")])
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CatalogError, match=r"blob.bin: format not recognised"):
        inspect_all([str(tmp_path / "blob.bin")])
    with pytest.raises(CatalogError, match=r"missing.fits: no such file"):
        inspect_all([str(tmp_path / "missing.fits")])


def test_nsa_v1_layout_is_recognised(tmp_path):
    rows = {k: v for k, v in nsa_rows(5).items() if k in ("NSAID", "RA", "DEC", "Z")}
    rows["PETRO_TH90"] = np.full(5, 9.0, np.float32)
    rows["ELPETRO_TH50_R"] = np.full(5, 4.0, np.float32)
    path = write_nsa_fits(tmp_path / "nsa_v1_0_1.fits", rows)
    (source,) = inspect_all([str(path)])
    assert source.looks_like_nsa_v1 and not source.has_lines
    assert source.mapping["radius_arcsec"] == "PETRO_TH90"  # v1's name for the 90 % radius
    with fits.open(path) as hdul:
        assert hdul[1].header["NAXIS2"] == 5


def test_fits_chunk_reads_only_its_rows_and_columns(tmp_path):
    """Memory-mapped reads: a 1,000-row chunk of a 48 MB table allocates ~100 kB, not the file."""
    import tracemalloc

    rows = nsa_rows(200_000, seed=2)
    rows["WIDE"] = np.zeros((200_000, 60), dtype=np.float32)  # 240 bytes a row nobody asked for
    path = write_nsa_fits(tmp_path / "big.fits", rows, {"WIDE": "60E"})
    assert path.stat().st_size > 45e6
    (source,) = inspect_all([str(path)])
    chunk = plan_chunks(source, 1000)[57]
    tracemalloc.start()
    frame = read_chunk(chunk)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(frame) == 1000 and frame["objid"].iloc[0] == rows["NSAID"][57_000]
    assert peak < 1e6, f"reading 1,000 rows allocated {peak / 1e6:.1f} MB"


def test_fits_columns_copied_block_by_block_equal_the_file(tmp_path, monkeypatch):
    """The cache-blocked copy (every column from one block of rows at a time): 4,500 rows in blocks
    of 1,024, chunks that start and end mid-block, a 2-D column, and native byte order out."""
    rows = nsa_rows(4500, seed=3)
    rows["WIDE"] = np.arange(4500 * 3, dtype=np.float32).reshape(4500, 3)
    path = write_nsa_fits(tmp_path / "blocks.fits", rows, {"WIDE": "3E"})
    monkeypatch.setattr(fits_reader, "COPY_BLOCK_BYTES", 1)  # the smallest block: 1,024 rows
    (source,) = inspect_all([str(path)])
    frame = pd.concat([read_chunk(c) for c in plan_chunks(source, 1700)], ignore_index=True)
    np.testing.assert_array_equal(frame["objid"], rows["NSAID"].astype(np.int64))
    np.testing.assert_array_equal(frame["ra"], rows["RA"])
    np.testing.assert_array_equal(frame["hb_flux_err"], rows["HBFLUXERR"])
    with fits.open(path) as hdul:
        data = hdul[1].data
        copies = fits_reader.native_copies({n: data.field(n)[100:4400] for n in ("WIDE", "DEC")}, data.dtype.itemsize)
    np.testing.assert_array_equal(copies["WIDE"], rows["WIDE"][100:4400])
    np.testing.assert_array_equal(copies["DEC"], rows["DEC"][100:4400])
    assert all(c.dtype.isnative and c.flags.c_contiguous for c in copies.values())


def test_csv_string_ids_keep_leading_zeros_in_every_chunk(tmp_path, monkeypatch):
    rows = rows_frame(nsa_rows(400)).drop(columns="NSAID")
    rows["name"] = [f"{i:05d}" if i % 50 else f"X{i:04d}" for i in range(400)]  # numeric-looking, mostly
    rows.to_csv(tmp_path / "ids.csv", index=False)
    monkeypatch.setattr(csv, "CSV_CHUNK_BYTES", 2048)
    frame = read_all(str(tmp_path / "ids.csv"), columns={"objid": "name"})
    assert list(frame["source_id"]) == list(rows["name"])


def test_missing_string_ids_are_an_error(tmp_path):
    rows = rows_frame(nsa_rows(5)).drop(columns="NSAID")
    rows["name"] = ["a", "", "c", None, "e"]
    rows.to_csv(tmp_path / "gaps.csv", index=False)
    with pytest.raises(CatalogError, match=r"gaps.csv: row 2 \(counting data rows from 1\): id column 'name' is empty"):
        read_all(str(tmp_path / "gaps.csv"), columns={"objid": "name"})


def test_compressed_and_tab_separated_csv(tmp_path, nsa_fits):
    path, rows = nsa_fits
    table = rows_frame(rows)
    table.to_csv(tmp_path / "cat.csv.gz", index=False)
    table.to_csv(tmp_path / "cat.tsv", index=False, sep="\t")
    want = read_all(str(path))
    for name in ("cat.csv.gz", "cat.tsv"):
        pd.testing.assert_frame_equal(read_all(str(tmp_path / name)), want, rtol=1e-6)


def test_truncated_fits_is_named_as_such(tmp_path, nsa_fits):
    path, _ = nsa_fits
    half = tmp_path / "half.fits"
    half.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CatalogError, match=r"half.fits: FITS table is truncated .*re-download"):
        inspect_all([str(half)])


# --- ids are never changed silently ----------------------------------------------------------------


def _csv_with_id(tmp_path, row: int, value: str, n: int = 3000) -> Path:
    table = rows_frame(nsa_rows(n))
    table["NSAID"] = table["NSAID"].astype(str)
    table.loc[row, "NSAID"] = value
    table.to_csv(tmp_path / "ids.csv", index=False)
    return tmp_path / "ids.csv"


@pytest.mark.parametrize("row", [10, 2950])  # inside the type sample / in the last of many chunks
@pytest.mark.parametrize("value", ["abc", "1.5", ""])
def test_a_bad_integer_id_is_one_error_naming_row_and_value(tmp_path, monkeypatch, row, value):
    monkeypatch.setattr(csv, "CSV_CHUNK_BYTES", 8192)
    path = _csv_with_id(tmp_path, row, value)
    problem = "is empty (or an NA marker such as n/a or NaN)" if value == "" else f"holds {value!r}, not an integer"
    with pytest.raises(CatalogError) as err:
        read_all(str(path))
    message = str(err.value)
    where = f"ids.csv: row {row + 1:,} (counting data rows from 1)"
    assert f"{where}: id column 'NSAID' {problem}" in message and "--id-kind string" in message


def test_float_and_unsigned_id_columns_are_checked_row_by_row(tmp_path):
    rows = nsa_rows(300)
    rows["NSAID"] = rows["NSAID"].astype(np.float64)
    rows["NSAID"][123] = 7.25
    write_nsa_fits(tmp_path / "f.fits", rows, formats={"NSAID": "D"})
    with pytest.raises(CatalogError, match=r"f.fits: row 124 .*'NSAID' holds 7.25, not an integer"):
        read_all(str(tmp_path / "f.fits"))

    table = rows_frame(nsa_rows(300))
    big = np.uint64(2**64 - 1)  # SDSS-style unsigned ids can exceed int64
    table["NSAID"] = np.arange(300, dtype=np.uint64) + np.uint64(2**62)
    table.loc[7, "NSAID"] = big
    table.to_parquet(tmp_path / "u.parquet")
    with pytest.raises(CatalogError, match=r"u.parquet: row 8 .*holds 18446744073709551615, above 9,223,372,036,"):
        read_all(str(tmp_path / "u.parquet"))
    kept = read_all(str(tmp_path / "u.parquet"), id_kind="string")
    assert kept["source_id"].tolist() == [str(v) for v in table["NSAID"]]  # every id exactly, none wrapped
    np.testing.assert_array_equal(kept["objid"], stable_id_hash(np.array([str(v) for v in table["NSAID"]])))
    assert (kept["objid"] >= 0).all()


@pytest.mark.parametrize(("dtype", "big"), [(np.float64, 2.0**53 + 2), (np.float32, 2.0**24 + 2)])
def test_float_ids_too_large_to_be_exact_are_refused(tmp_path, dtype, big):
    table = rows_frame(nsa_rows(20))
    table["NSAID"] = table["NSAID"].astype(dtype)
    table.loc[3, "NSAID"] = big
    table.to_parquet(tmp_path / "f.parquet")
    with pytest.raises(CatalogError, match=r"row 4 .*too large for a float(64|32) column to hold exactly"):
        read_all(str(tmp_path / "f.parquet"))


def test_one_source_column_read_as_two_canonical_columns_is_an_error(nsa_fits):
    path, _ = nsa_fits
    with pytest.raises(CatalogError, match=r"column 'N2FLUX' would be read as ha_flux and nii_flux; map each"):
        inspect_all([str(path)], columns={"ha_flux": "N2FLUX"})


def test_csv_with_carriage_return_line_ends(tmp_path, nsa_fits):
    path, rows = nsa_fits
    rows_frame(rows).to_csv(tmp_path / "cr.csv", index=False, lineterminator="\r")
    np.testing.assert_array_equal(read_all(str(tmp_path / "cr.csv"))["objid"], rows["NSAID"])


def test_exact_integer_ids_from_text_have_no_float_round_trip(tmp_path):
    table = rows_frame(nsa_rows(50))
    ids = [2**62 + 3 * i + 1 for i in range(50)]  # not representable as float64
    table["NSAID"] = [str(v) for v in ids]
    table.loc[4, "NSAID"] = f" +{ids[4]} "
    table.loc[5, "NSAID"] = f"{ids[5]}.0"  # an integral decimal is the same integer
    table.to_csv(tmp_path / "big.csv", index=False)
    assert read_all(str(tmp_path / "big.csv"))["objid"].tolist() == ids


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("1.2e+18", "not an integer"),
        ("1e99999999", "not an integer"),
        ("0x1F", "not an integer"),
        ("1_000", "not an integer"),
        ("١٢٣", "not an integer"),  # Arabic-Indic digits: int() would read 123
        ("0123", "zero-padded: text, not a number"),
    ],
)
def test_ids_that_only_look_like_integers_are_refused(tmp_path, value, problem):
    path = _csv_with_id(tmp_path, 5, value, n=50)
    with pytest.raises(CatalogError, match=rf"row 6 .*holds '{re.escape(value)}', {problem}\. Ids are never changed"):
        read_all(str(path))
    if value == "0123":
        assert read_all(str(path), id_kind="int")["objid"][5] == 123  # asked for numbers: 0123 is 123


def test_text_ids_stay_text_in_auto_mode(tmp_path):
    table = rows_frame(nsa_rows(30))
    table["NSAID"] = [f"{i:05d}" for i in range(30)]  # leading zeros: names, not numbers
    table.to_csv(tmp_path / "names.csv", index=False)
    assert read_all(str(tmp_path / "names.csv"))["source_id"].tolist() == list(table["NSAID"])


# --- CSV chunks start where records start -----------------------------------------------------------


def _comment(i: int, rng: np.random.Generator) -> str:
    lines = [f'line {k}, with "quotes" and commas' for k in range(int(rng.integers(1, 5)))]
    if i % 97 == 0:
        lines *= 400  # one field far longer than a chunk
    return "\n".join(lines)


@pytest.mark.parametrize("stray_quote", [False, True])
def test_csv_with_multiline_quoted_fields_reads_what_pandas_reads(tmp_path, monkeypatch, stray_quote):
    rng = np.random.default_rng(5)
    table = rows_frame(nsa_rows(1500))
    table["comment"] = [_comment(i, rng) for i in range(len(table))]
    path = tmp_path / "quoted.csv"
    table.to_csv(path, index=False)
    if stray_quote:  # a quote inside an unquoted field: legal for the parser, but counting quotes misleads
        path.write_text(path.read_text().replace("J000003+", 'J000003"+', 1))
    monkeypatch.setattr(csv, "CSV_CHUNK_BYTES", 4096)
    (source,) = inspect_all([str(path)])
    chunks = plan_chunks(source, 1000)
    assert len(chunks) == 1 if stray_quote else len(chunks) > 10
    got = pd.concat([read_chunk(c) for c in chunks], ignore_index=True)
    want = pd.read_csv(path)
    assert want["IAUNAME"].str.contains('"').sum() == stray_quote
    np.testing.assert_array_equal(got["objid"], want["NSAID"])
    np.testing.assert_allclose(got["ha_flux"], want["HAFLUX"], rtol=1e-6)
    np.testing.assert_allclose(got["ra"], want["RA"])
    assert len(got) == len(want) == 1500


# --- FITS tables outside HDU 1 ----------------------------------------------------------------------


def test_fits_names_the_hdu_read_and_hdu_picks_another(tmp_path):
    rows = nsa_rows(40)
    meta = fits.BinTableHDU.from_columns([fits.Column(name="KEY", format="10A", array=np.array(["a", "b"]))])
    meta.name = "META"
    table = fits.BinTableHDU.from_columns([fits.Column(name=k, format="E" if k != "NSAID" else "J", array=v)
                                           for k, v in rows.items() if np.ndim(v) == 1 and k != "IAUNAME"])  # fmt: skip
    table.name = "NSA"
    fits.HDUList([fits.PrimaryHDU(), meta, table]).writeto(tmp_path / "two.fits")
    with pytest.raises(CatalogError) as err:
        inspect_all([str(tmp_path / "two.fits")])
    assert "Read the table in HDU 1;" in str(err.value)
    assert "HDU 1 'META' (2 rows), HDU 2 'NSA' (40 rows)" in str(err.value) and "--hdu N" in str(err.value)
    frame = read_all(str(tmp_path / "two.fits"), hdu=2)
    np.testing.assert_array_equal(frame["objid"], rows["NSAID"])
    with pytest.raises(CatalogError, match=r"two.fits: HDU 0 is not a table\. tables in this file: HDU 1 'META'"):
        inspect_all([str(tmp_path / "two.fits")], hdu=0)


def test_fits_text_ids_keep_leading_blanks_and_lose_the_padding(tmp_path):
    rows = nsa_rows(4)
    rows["NSAID"] = np.array([" 1", "1", "a b", "  x"])  # FITS pads to 8 characters with trailing blanks
    write_nsa_fits(tmp_path / "t.fits", rows, formats={"NSAID": "8A"})
    kept = read_all(str(tmp_path / "t.fits"), id_kind="string")
    assert kept["source_id"].tolist() == [" 1", "1", "a b", "  x"]  # ' 1' and '1' are two ids
