"""The readers of workspace tables: in cube-row order, text ids as strings, and a missing or
inconsistent table is one error that names the command that writes it."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import sky_positions, write_table

from pipeline.errors import WorkspaceError
from storage.tables import read_catalog, read_labels, read_positions, read_scores, score_files
from storage.workspace import Workspace


def catalog(n: int, first_cube_row: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"objid": np.arange(100, 100 + n), "cube_row": np.arange(first_cube_row, first_cube_row + n),
                         "radius_arcsec": np.linspace(2.0, 9.0, n).astype(np.float32),
                         "source_id": [f"gal-{i:03d}" for i in range(n)]})  # fmt: skip


def test_the_catalog_comes_back_in_cube_row_order_with_text_ids_as_strings(tmp_path):
    ws = Workspace(tmp_path)
    table = catalog(50)
    ra, dec = sky_positions(50)
    table["ra"], table["dec"] = ra[::-1], dec[::-1]  # sky order (the files' order) is cube-row order reversed
    write_table(table, ws.catalog, max_rows=8)
    frame = read_catalog(ws)
    assert frame["cube_row"].tolist() == list(range(50))
    assert frame["objid"].tolist() == list(range(100, 150))
    assert frame["source_id"].dtype == "string" and frame["source_id"].iloc[7] == "gal-007"
    positions = read_positions(ws, extra=("source_id",))
    assert list(positions.columns) == ["cube_row", "objid", "ra", "dec", "radius_arcsec", "source_id"]


def test_positions_refuse_a_catalog_whose_cube_rows_are_not_0_to_n_minus_1(tmp_path):
    ws = Workspace(tmp_path)
    write_table(catalog(20, first_cube_row=1), ws.catalog)
    with pytest.raises(WorkspaceError, match=r"cube_row is not 0..N-1; re-run `agnsurvey ingest`"):
        read_positions(ws)


def test_missing_tables_name_the_command_that_writes_them(tmp_path):
    ws = Workspace(tmp_path)
    with pytest.raises(WorkspaceError, match=r"no ingested catalog; run `agnsurvey ingest CATALOG"):
        read_positions(ws)
    with pytest.raises(WorkspaceError, match=r"has no labels; run `agnsurvey label --workspace"):
        read_labels(ws)
    with pytest.raises(WorkspaceError, match=r"holds no scores; run `agnsurvey score`"):
        read_scores(ws)


def test_scores_of_local_images_are_read_from_their_parts_in_file_order(tmp_path):
    ws = Workspace(tmp_path)
    ws.scores.mkdir(parents=True)
    for k, ids in enumerate(([3, 1], [2])):
        pq.write_table(pa.table({"objid": ids, "p_agn": [0.5] * len(ids)}), ws.scores / f"part-{k:05d}.parquet")
    assert [p.name for p in score_files(ws.scores)] == ["part-00000.parquet", "part-00001.parquet"]
    assert read_scores(ws)["objid"].tolist() == [3, 1, 2]
