"""``--cluster slurm`` on a real single-node Slurm (the ``slurm`` fixture, tests/slurm_node.py): every
Dask worker is a Slurm job, the jobs end with the command however it ends, a scancelled job costs
a retry and never a row, and jobs that cannot start are reported, not waited on forever."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cluster.client import ClusterSpecError, connect
from cluster.slurm import job_ids
from pipeline.synthetic.catalog import SKY_FITS
from pipeline.synthetic.server import serve_in_background
from pipeline.synthetic.server_config import build_server_config
from storage.cube import open_cube
from storage.tables import read_scores

ROOT = Path(__file__).resolve().parents[2]
JOB = {"queue": "debug", "cores": 1, "memory": "3GB", "processes": 1, "jobs": 2, "walltime": "00:20:00"}

CONFIG = """\
workspace = "{ws}"
[sky]
n = {n}
seed = 3
[fetch]
size = 64
image_size = 32
shard_images = 32
rate = {rate}
[train]
epochs = 1
batch_size = 32
on = "workers"  # this node is the driver's machine too, where the default is to train in the driver
[cluster]
spec = "slurm"
[cluster.slurm]
queue = "debug"
cores = 1
memory = "3GB"
processes = 1
jobs = {jobs}
walltime = "00:20:00"
log_directory = "slurm-logs"
job_script_prologue = ["export AGNSURVEY_PROLOGUE_RAN=1"]
"""


def test_every_worker_is_a_slurm_job_and_the_jobs_end_with_the_cluster(slurm, tmp_path):
    prologue = ["export AGNSURVEY_PROLOGUE_RAN=yes"]
    with connect("slurm", slurm=JOB | {"log_directory": str(tmp_path), "job_script_prologue": prologue}) as client:
        client.wait_for_workers(2, timeout=120)
        workers = sorted(client.scheduler_info()["workers"])
        seen = client.gather([client.submit(os.getenv, "SLURM_JOB_ID", workers=[w], pure=False) for w in workers])
        assert set(client.run(os.getenv, "AGNSURVEY_PROLOGUE_RAN").values()) == {"yes"}
        submitted = job_ids(client.cluster)
        running = {i for i, (part, state, _) in slurm.jobs().items() if state == "RUNNING" and part == "debug"}
        assert len(set(seen)) == 2 and set(seen) == set(submitted) == running  # one worker per job, each in its own
    assert _gone(slurm, submitted), slurm.jobs()
    assert sorted(p.name for p in tmp_path.glob("*.err")) == [f"dask-worker-{i}.err" for i in sorted(submitted)]


def test_jobs_that_stay_pending_are_reported_after_the_timeout_and_cancelled(slurm, tmp_path):
    started = time.monotonic()
    with pytest.raises(ClusterSpecError) as caught, connect("slurm", slurm=JOB | {"queue": "full", "start_timeout": 3,
                                                                                  "log_directory": str(tmp_path)}):
        pass  # fmt: skip
    message = str(caught.value)
    ids = re.findall(r"job (\d+) PENDING in partition full \(PartitionDown\)", message)
    assert len(ids) == 2 and "within 3 s" in message and "cluster.slurm.start_timeout" in message, message
    assert "\n" not in message and time.monotonic() - started < 60
    assert _gone(slurm, ids), slurm.jobs()


def test_a_job_sbatch_refuses_is_an_error_within_seconds_with_its_reason(slurm, tmp_path):
    started = time.monotonic()
    with pytest.raises(ClusterSpecError, match=r"sbatch refuses the worker job: .*[Ii]nvalid partition"), \
            connect("slurm", slurm=JOB | {"queue": "no-such-partition", "log_directory": str(tmp_path)}):  # fmt: skip
        pass
    assert time.monotonic() - started < 60 and not slurm.jobs()


def test_run_on_slurm_goes_end_to_end_and_survives_a_scancel_in_fetch_and_in_score(slurm, tmp_path):
    """Ingest to scores with every worker a Slurm job (training on both: one process per worker);
    a job scancelled mid-fetch and one mid-score cost a retry or a re-run, never a row or an ok image."""
    ws, config = tmp_path / "ws", tmp_path / "run.toml"
    config.write_text(CONFIG.format(ws=ws, n=320, rate=16, jobs=3))
    run = _start(["run", str(config), "--score"], tmp_path)
    ids, snapshot = _scancel_one_when_images_are_in(slurm, run, ws / "cube.zarr", jobs=3)
    out = _finish(run)
    assert run.returncode in (0, 3), out
    assert f"slurm: jobs {', '.join(sorted(ids, key=int))} submitted" in out, out
    assert _gone(slurm, ids), slurm.jobs()
    if run.returncode == 3:  # the jobs that remained could not finish it: a re-run does
        assert "re-run" in out, out
        rerun = _start(["run", str(config), "--score"], tmp_path)
        assert _finish(rerun) and rerun.returncode == 0
    _assert_whole(ws / "cube.zarr", snapshot, n=320)
    scores = read_scores(ws)
    assert len(scores) == 320 and scores["objid"].is_unique and (scores["status"] == "ok").all()
    trained = ws / "models" / "paper"  # on the two workers left: one training process in each job
    assert sorted(p.name for p in trained.glob("process-*.log")) == ["process-0.log", "process-1.log"]
    assert ws.joinpath("manifests", "train-paper.json").read_text().count('"processes": 2') == 1
    assert {p.stem.rpartition("-")[2] for p in (tmp_path / "slurm-logs").glob("*.err")} >= set(ids)  # jobs' own logs

    catalog = ws / "sky" / SKY_FITS
    with serve_in_background(build_server_config(None, catalog=(str(catalog),), latency_s=0.05)) as server:
        score = ["--config", str(config), "score", str(catalog), "--model", "paper", "--cutout-url", server.url,
                 "--rate", "12", "--restart"]  # fmt: skip
        scoring = _start(score, tmp_path)
        ids, snapshot = _scancel_one_when_images_are_in(slurm, scoring, ws / "scoring" / "cube.zarr", jobs=3)
        out = _finish(scoring)
        assert scoring.returncode in (0, 3), out
        assert _gone(slurm, ids), slurm.jobs()
        if scoring.returncode == 3:
            again = _start(score[:-1], tmp_path)  # the same command, without --restart, completes it
            assert _finish(again) and again.returncode == 0
    _assert_whole(ws / "scoring" / "cube.zarr", snapshot, n=320)
    rescored = read_scores(ws)
    assert len(rescored) == 320 and rescored["objid"].is_unique and set(rescored["objid"]) == set(scores["objid"])


def test_ctrl_c_and_an_error_both_cancel_the_runs_jobs(slurm, tmp_path):
    ws, config = tmp_path / "ws", tmp_path / "run.toml"
    config.write_text(CONFIG.format(ws=ws, n=320, rate=8, jobs=2))
    run = _start(["run", str(config), "--until", "fetch"], tmp_path)
    ids = _wait_for_running_jobs(slurm, run)
    _wait_for(lambda: (ws / "cube.zarr").exists(), run, "the fetch to start")
    run.send_signal(signal.SIGINT)
    out = _finish(run)
    assert run.returncode == 130 and "interrupted" in out, out
    assert _gone(slurm, ids), slurm.jobs()

    failing = _start(["run", str(config), "--until", "fetch", "--bricks", str(tmp_path / "no-such-mirror")], tmp_path)
    ids = _wait_for_running_jobs(slurm, failing)
    out = _finish(failing)
    assert failing.returncode == 2 and "agnsurvey: error:" in out, out
    assert _gone(slurm, ids), slurm.jobs()


# --- helpers -----------------------------------------------------------------------------------------


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip


def _finish(proc: subprocess.Popen, timeout_s: float = 400) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the command did not end within {timeout_s} s:\n{out[-4000:]}")
    return out


def _wait_for(ready, proc: subprocess.Popen, what: str, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"waited for {what}; the command ended or took too long:\n{_finish(proc)[-4000:]}")
        time.sleep(0.2)


def _wait_for_running_jobs(slurm, proc: subprocess.Popen, count: int = 2) -> list[str]:
    running: list[str] = []

    def all_running() -> bool:
        running[:] = [i for i, (_, state, name) in slurm.jobs().items() if state == "RUNNING" and name == "dask-worker"]
        return len(running) == count

    _wait_for(all_running, proc, f"{count} worker jobs to run")
    return running


def _ok_images(cube_path: Path) -> dict[int, str]:
    """objid → a digest of its pixels, for every ok row of the cube (now)."""
    for _ in range(20):  # a shard may be half written at this instant: ask again
        try:
            cube = open_cube(cube_path, mode="r")
            rows = cube.ok_rows()
            ids, images = cube.objids()[rows], cube.read_rows(rows)
            return {int(i): hashlib.sha256(image.tobytes()).hexdigest() for i, image in zip(ids, images, strict=True)}
        except Exception:  # noqa: BLE001 - zarr reading a chunk being replaced
            time.sleep(0.1)
    raise AssertionError(f"{cube_path} could not be read")


def _scancel_one_when_images_are_in(slurm, proc: subprocess.Popen, cube_path: Path,
                                    jobs: int) -> tuple[list[str], dict]:  # fmt: skip
    """Wait for the worker jobs and for some ok images in ``cube_path``; scancel one job then."""
    ids = _wait_for_running_jobs(slurm, proc, jobs)
    _wait_for(lambda: cube_path.exists() and len(_ok_images(cube_path)) >= 64, proc, f"ok images in {cube_path}")
    snapshot = _ok_images(cube_path)
    subprocess.run(["scancel", ids[0]], env=slurm.env, check=True)
    assert proc.poll() is None and len(snapshot) < 320  # it was cancelled in the middle
    return ids, snapshot


def _assert_whole(cube_path: Path, before: dict[int, str], n: int) -> None:
    after = _ok_images(cube_path)
    cube = open_cube(cube_path, mode="r")
    objids = cube.objids()
    assert len(objids) == n and len(np.unique(objids)) == n  # no row lost or duplicated
    assert len(after) == n  # every image ok in the end
    assert {i: after[i] for i in before} == before  # no ok image changed


def _gone(slurm, ids: list[str], timeout_s: float = 30) -> bool:
    """True once none of ``ids`` is known to the controller any more (cancelled and cleaned up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not set(ids) & set(slurm.jobs()):
            return True
        time.sleep(0.5)
    return False
