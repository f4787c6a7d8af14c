"""The command line: help that teaches, errors without tracebacks, exit codes."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import zarr
from conftest import nsa_rows, write_nsa_fits

from pipeline.cli import main, parse_columns
from pipeline.errors import ConfigError


def test_help_lists_stages_and_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for word in ("ingest", "label", "sky make", "--cluster", "agnsurvey run --workspace"):
        assert word in out


def test_parse_columns():
    assert parse_columns(["ha_flux=H_ALPHA", " ra = radeg "]) == {"ha_flux": "H_ALPHA", "ra": "radeg"}
    with pytest.raises(ConfigError, match=r"write CANONICAL=SOURCE"):
        parse_columns(["ha_flux"])


def test_error_is_one_line_with_exit_code_2(tmp_path):
    rows = nsa_rows(5)
    del rows["DEC"]
    write_nsa_fits(tmp_path / "nodec.fits", rows)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--quiet", "--workers", "1", "ingest", str(tmp_path / "nodec.fits"),
         "--workspace", str(tmp_path / "ws")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith("agnsurvey: error:") and "Traceback" not in proc.stderr
    assert "nodec.fits" in proc.stderr and "--column dec=NAME" in proc.stderr


def test_bad_cluster_spec(tmp_path, capsys):
    code = main(["--cluster", "nowhere", "label", "--workspace", str(tmp_path)])
    assert code == 2
    assert "cluster spec 'nowhere'" in capsys.readouterr().err


def test_run_is_the_whole_main_job(tmp_path, capsys):
    """`agnsurvey run` on the offline sky: sky → ingest → label → fetch, with manifests, labels, plots, cube."""
    ws = tmp_path / "ws"
    assert main(["--quiet", "--workers", "2", "run", "--workspace", str(ws), "--n", "1500", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    assert "sky make" in out and "ingest" in out and "label" in out and "class sf" in out
    ingest_m = json.loads((ws / "manifests" / "ingest.json").read_text())
    label_m = json.loads((ws / "manifests" / "label.json").read_text())
    assert ingest_m["rows_in"] == 1500 and ingest_m["inputs"][0]["path"].endswith("nsa_sky.fits")
    assert label_m["rows_in"] == ingest_m["rows_out"]
    assert label_m["rows_out"] + sum(label_m["dropped"].values()) == label_m["rows_in"]
    assert sorted(p.name for p in (ws / "reports").iterdir()) == ["bpt_agn.png", "bpt_all.png", "bpt_sf.png"]
    labels = pd.read_parquet(ws / "labels")
    assert len(labels) == label_m["rows_out"] and set(labels["label"]) == {0, 1}
    fetch_m = json.loads((ws / "manifests" / "fetch.json").read_text())
    assert fetch_m["rows_in"] == len(labels) and fetch_m["extra"]["status"]["ok"] == len(labels)
    assert fetch_m["parameters"]["cutout_url"].startswith("http://127.0.0.1:")
    assert zarr.open_group(str(ws / "cube.zarr"), mode="r")["images"].shape == (len(labels), 128, 128, 3)
    assert "fetch" in out and "status ok" in out
