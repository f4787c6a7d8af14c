"""The command line: help that teaches, errors without tracebacks, exit codes."""

import subprocess
import sys

import pytest
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
