"""`agnsurvey bench`: runs a real benchmark script and prints one table from the JSON it wrote."""

import json

import pytest

from pipeline.bench import BenchError, run_benchmarks, table
from pipeline.cli import main


def test_bench_fetch_quick_prints_one_table_and_writes_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AGNSURVEY_BENCH_RESULTS", str(tmp_path))  # not the repository's results
    assert main(["bench", "fetch", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "stage" in out and "reference (same run)" in out and "fetch (fetch stage, LocalCluster 2 workers)" in out
    combined = json.loads(next(tmp_path.glob("bench-*.json")).read_text())
    row = combined["summary"][0]
    assert row["ratio"] == pytest.approx(row["rate"] / row["reference_rate"], rel=1e-2) and row["rate"] > 0
    assert combined["machine"]["cpu_count"] and len(list(tmp_path.glob("bench_fetch-*.json"))) == 1


def test_a_checkout_without_benchmarks_is_a_clear_error(tmp_path):
    with pytest.raises(BenchError, match="run `agnsurvey bench` from a checkout"):
        run_benchmarks("score", directory=tmp_path)


def test_table_shows_the_ratio_to_the_reference():
    text = table([{"stage": "score", "work": "4 images", "rate": 100.0, "unit": "img/s", "reference": "ceiling",
                   "reference_rate": 200.0, "ratio": 0.5}])  # fmt: skip
    assert text.splitlines()[1].split() == ["score", "4", "images", "100.0", "img/s", "ceiling:", "200.0", "0.50"]
