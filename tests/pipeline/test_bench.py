"""`agnsurvey bench`: runs a real benchmark script and prints one table from the JSON it wrote."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.bench import BenchError, run_benchmarks, table
from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[2]


def hidden(tmp_path: Path, *packages: str) -> Path:
    """A directory for PYTHONPATH whose stand-in packages raise the ImportError missing ones would."""
    for name in packages:
        package = tmp_path / "hidden" / name
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(f"raise ModuleNotFoundError(\"No module named '{name}'\")\n")
    return tmp_path / "hidden"


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
    env = {**os.environ, "PYTHONPATH": str(hidden(tmp_path, "hats_import")),
           "AGNSURVEY_BENCH_RESULTS": str(tmp_path / "out")}  # fmt: skip
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_catalog.py"), "--sizes", "20000",
                           "--kernel-rows", "100000"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "hats-import is not installed" in done.stdout and "pip install -e '.[dev]'" in done.stdout
    result = json.loads(next((tmp_path / "out").glob("bench_catalog-*.json")).read_text())
    assert result["peers_missing"] and "Traceback" not in done.stderr
    references = {row["reference"] for row in result["summary"]}
    assert references and not any("hats-import" in r for r in references)
    assert all(row["rate"] > 0 for row in result["summary"])


def check_rates(run: dict, steps: int, batch: int, epochs: int) -> None:
    """One timed fit of gpu_check: every epoch ran ``steps`` optimizer steps of ``batch`` images
    (read back from the optimizer), and each rate is those images over that epoch's seconds."""
    assert run["steps_per_epoch"] == [steps] * epochs and run["images_per_epoch"] == [steps * batch] * epochs
    for images, seconds, rate in zip(run["images_per_epoch"], run["seconds_per_epoch"], run["epochs_images_per_s"],
                                     strict=True):  # fmt: skip
        assert seconds > 0 and rate == pytest.approx(images / seconds, rel=1e-2, abs=0.2)
    assert run["images_per_s"] == max(run["epochs_images_per_s"]) > 0


def test_bench_gpu_quick_is_the_gpu_checks_dry_run_on_the_cpu_without_tensorflow(tmp_path, monkeypatch, capfd):
    """`agnsurvey bench gpu --quick` runs `gpu_check.py --dry-run`: every measurement of the GPU
    machine (training on one and on all devices, scoring in one process and on a cluster, the reader)
    on 2 logical CPU devices and a LocalCluster, with TensorFlow hidden (the GPU machine has none)."""
    monkeypatch.setenv("AGNSURVEY_BENCH_RESULTS", str(tmp_path / "out"))
    monkeypatch.setenv("PYTHONPATH", str(hidden(tmp_path, "tensorflow")))
    monkeypatch.delenv("KERAS_BACKEND", raising=False)  # the script picks jax
    assert main(["bench", "gpu", "--quick"]) == 0
    out = capfd.readouterr().out
    result = json.loads(next((tmp_path / "out").glob("gpu_check-*.json")).read_text())
    assert {"machine", "summary", "parameters", "cube", "devices", "train", "scaling", "score", "reader", "skipped",
            "timing", "table_text", "notes", "dry_run", "device_side"} <= set(result)  # fmt: skip
    assert result["table_text"] in out and "DRY RUN" in out  # the script printed its table
    assert result["dry_run"] and not result["skipped"] and result["device_side"]["exit"] == 0
    assert result["devices"] | {"names": None} == {"part": "devices", "platform": "cpu", "count": 2, "backend": "jax",
                                                   "policy": "mixed_bfloat16", "names": None}  # fmt: skip
    p = result["parameters"]
    train = {(t["model"], t["devices"]): t for t in result["train"]}
    assert sorted(train) == [("paper", 1), ("paper", 2), ("resnet18", 1), ("resnet18", 2)]
    for (_, devices), t in train.items():
        assert t["policy"] == "mixed_bfloat16" and t["batch_size"] == p["batch_size"] * devices
        assert t["image_size"] == result["cube"]["image_size"] == p["image_size"]
        for run in (t["ceiling"], t["pipeline"]):
            check_rates(run, p["steps"], t["batch_size"], p["epochs"])
        assert t["ratio_to_ceiling"] == pytest.approx(t["pipeline"]["images_per_s"] / t["ceiling"]["images_per_s"],
                                                      rel=1e-2)  # fmt: skip
    assert [(s["model"], s["devices"]) for s in result["scaling"]] == [("paper", 2), ("resnet18", 2)]
    for s in result["scaling"]:
        one = train[(s["model"], 1)]["ceiling"]["images_per_s"]
        assert s["efficiency"] == pytest.approx(train[(s["model"], 2)]["ceiling"]["images_per_s"] / (2 * one), rel=1e-2)
    n = result["cube"]["images"]
    device, cluster = result["score"]["one_device"], result["score"]["cluster"]
    assert device["images"] == n and device["policy"] == "mixed_bfloat16" and device["ceiling"]["images_per_s"] > 0
    assert cluster["kind"] == "LocalCluster" and cluster["status"] == "ran" and cluster["workers"] == 2
    for run in (*device["score"].values(), *cluster["score"].values()):
        assert run["images"] == n and run["images_per_s"] == pytest.approx(n / run["seconds"], rel=1e-3)
    assert [d["platform"] for d in cluster["worker_devices"].values()] == ["cpu", "cpu"]
    runs = result["reader"]["runs"]
    assert [r["readers"] for r in runs] == [1, p["readers"]]
    for r in runs:
        assert r["batch_size"] == 2 * p["batch_size"] and r["images"] == r["batches"] * r["batch_size"] > 0
        assert r["images_per_s"] > 0 and r["images_per_core_s"] > 0
    stages = [row["stage"] for row in result["summary"]]
    assert stages == ["gpu: train paper (1 CPU, mixed_bfloat16)", "gpu: train paper (2 CPUs, mixed_bfloat16)",
                      "gpu: train resnet18 (1 CPU, mixed_bfloat16)", "gpu: train resnet18 (2 CPUs, mixed_bfloat16)",
                      "gpu: train paper scaling (2 CPUs)", "gpu: train resnet18 scaling (2 CPUs)",
                      "gpu: score from cube (1 CPU, warm)", "gpu: score on LocalCluster (2 workers, warm)",
                      "gpu: batch reader per core (4 threads)"]  # fmt: skip
    for row in result["summary"]:
        assert row["rate"] > 0 and row["ratio"] == pytest.approx(row["rate"] / row["reference_rate"], rel=1e-2)
    combined = json.loads(next((tmp_path / "out").glob("bench-*.json")).read_text())
    assert [row["stage"] for row in combined["summary"]] == stages and "reference (same run)" in out


def test_gpu_check_skips_what_would_start_past_its_deadline(tmp_path):
    """--budget: no measurement starts after the budget less the cluster's share (here: none does);
    each is listed, skipped, with the reason, and the run still reports and succeeds."""
    env = {**os.environ, "PYTHONPATH": str(hidden(tmp_path, "tensorflow")), "AGNSURVEY_BENCH_RESULTS": str(tmp_path)}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--budget", "61"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(next(tmp_path.glob("gpu_check-*.json")).read_text())
    assert [s["what"] for s in result["skipped"]] == [
        "train paper on 1 CPU", "train paper on 2 CPUs", "score from the cube on one device", "batch reader alone",
        "train resnet18 on 1 CPU", "train resnet18 on 2 CPUs"]  # fmt: skip
    assert all(s["reason"].startswith("deadline") for s in result["skipped"]) and result["summary"] == []
    assert result["train"] == [] and result["score"]["cluster"]["status"] == "skipped"
    assert "skipped: deadline" in done.stdout


def test_gpu_check_without_a_gpu_stops_with_one_line(tmp_path):
    """Not a quiet CPU run: no GPU visible (CUDA_VISIBLE_DEVICES empty, on any machine), no --dry-run."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "AGNSURVEY_BENCH_RESULTS": str(tmp_path / "out")}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode != 0 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("gpu_check: error: no NVIDIA GPU visible to JAX")
    assert done.stderr.strip().endswith("use --dry-run to check the script on CPU")
    assert not (tmp_path / "out").exists()


def test_gpu_check_without_dask_cuda_skips_the_cluster_row_and_says_why(tmp_path):
    """The GPU machine may lack dask-cuda: the LocalCUDACluster row is skipped with the reason."""
    code = (
        "import json, sys; from contextlib import ExitStack; sys.path.insert(0, 'benchmarks'); import gpu_check\n"
        "from _gpu_report import rows\n"
        "with ExitStack() as stack:\n"
        "    opened = gpu_check.open_cluster('local-cuda', stack)\n"
        "result = {'train': [], 'scaling': [], 'score': {'one_device': None, 'cluster': opened}, 'reader': None,\n"
        "          'skipped': []}\n"
        "print(json.dumps({'opened': opened, 'rows': rows(result, 2)}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(hidden(tmp_path, "dask_cuda"))}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["opened"]["kind"] == "LocalCUDACluster" and seen["opened"]["status"] == "skipped"
    assert "needs dask-cuda" in seen["opened"]["reason"] and "pip install dask-cuda" in seen["opened"]["reason"]
    assert seen["rows"] == [{"measure": "score on LocalCUDACluster (score stage)", "devices": "-", "work": "-",
                             "img/s": "-", "reference (same run)": "-", "ref img/s": "-", "ratio": "-",
                             "note": f"skipped: {seen['opened']['reason']}"}]  # fmt: skip
