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
    for row in combined["summary"]:
        assert row["ratio"] == pytest.approx(row["rate"] / row["reference_rate"], rel=1e-2) and row["rate"] > 0
    assert combined["machine"]["cpu_count"] and len(list(tmp_path.glob("bench_fetch-*.json"))) == 1
    # the bricks beside the floor and the polite viewer, each density measured three ways
    assert [r["stage"] for r in combined["summary"][1:]] == [
        "fetch --bricks (BrickSource.cut on 2 worker processes)", "fetch --bricks vs the viewer"]
    fetch = json.loads(next(tmp_path.glob("bench_fetch-*.json")).read_text())
    points = fetch["bricks"]["points"]
    assert [p["per_brick"] for p in points] == [1] * 3 + [10] * 3 + [100] * 3
    assert [p["images"] for p in points[::3]] == [2, 20, 200]  # 2 bricks; 100 per brick: 200 cutouts at most
    assert all(p["worker_peak_rss_mb"] > 0 for p in points if "worker_peak_rss_mb" in p)
    assert "x floor/core" in fetch["bricks_table_text"] and "polite" in out


def test_a_checkout_without_benchmarks_is_a_clear_error(tmp_path):
    with pytest.raises(BenchError, match="run `agnsurvey bench` from a checkout"):
        run_benchmarks("score", directory=tmp_path)


def test_table_shows_the_ratio_to_the_reference():
    text = table([{"stage": "score", "work": "4 images", "rate": 100.0, "unit": "img/s", "reference": "ceiling",
                   "reference_rate": 200.0, "ratio": 0.5}])  # fmt: skip
    assert text.splitlines()[1].split() == ["score", "4", "images", "100.0", "img/s", "ceiling:", "200.0", "0.50"]


def test_bench_catalog_without_its_peer_tool_measures_the_rest(tmp_path):
    """As after the README's main install, without the dev extras: hats-import cannot be imported
    (a stand-in package on PYTHONPATH raises the ImportError a missing one would; the real one is
    installed here). The benchmark says which extra brings it and measures everything else."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    hidden = tmp_path / "hidden" / "hats_import"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'hats_import'\")\n")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "hidden"), "AGNSURVEY_BENCH_RESULTS": str(tmp_path / "out")}
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "bench_catalog.py"), "--sizes", "20000",
                           "--kernel-rows", "100000"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "hats-import is not installed" in done.stdout and "pip install -e '.[dev]'" in done.stdout
    result = json.loads(next((tmp_path / "out").glob("bench_catalog-*.json")).read_text())
    assert result["peers_missing"] and "Traceback" not in done.stderr
    references = {row["reference"] for row in result["summary"]}
    assert references and not any("hats-import" in r for r in references)
    assert all(row["rate"] > 0 for row in result["summary"])
