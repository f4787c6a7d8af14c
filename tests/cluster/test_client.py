"""Cluster specs: one class per kind, each opening its own client; workers must see the workspace."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import nsa_rows, write_nsa_fits
from distributed import Client, LocalCluster

from cluster.client import (
    Address,
    ClusterSpecError,
    Local,
    LocalCuda,
    SchedulerFile,
    Slurm,
    SlurmSettings,
    check_workspace_visible,
    connect,
    parse_spec,
)
from pipeline.config import ClusterConfig, load_config
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_specs_name_their_kind(tmp_path):
    assert parse_spec("local") == Local()
    assert parse_spec("local:3", threads_per_worker=2) == Local(3, 2)
    assert parse_spec("tcp://10.0.0.1:8786") == Address("tcp://10.0.0.1:8786")
    (tmp_path / "scheduler.json").write_text(json.dumps({"address": "tcp://10.0.0.1:8786"}))
    assert parse_spec(str(tmp_path / "scheduler.json")) == SchedulerFile(str(tmp_path / "scheduler.json"))
    assert parse_spec("local-cuda") == LocalCuda()
    assert isinstance(parse_spec("slurm", slurm={"queue": "gpu", "cores": 4}), Slurm)
    assert parse_spec("local").remote is False and parse_spec("slurm").remote is True
    with pytest.raises(ClusterSpecError, match="local:N with N >= 1"):
        parse_spec("local:many")
    with pytest.raises(ClusterSpecError, match="'local:3' and --workers 2 disagree"):
        parse_spec("local:3", n_workers=2)
    with pytest.raises(ClusterSpecError, match=r"not one of: local, local:N .* slurm"):
        parse_spec("kubernetes")


def test_local_n_starts_n_worker_processes():
    with connect("local:2") as client:
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 2
        pids = set(client.run(lambda: __import__("os").getpid()).values())
        assert len(pids) == 2 and __import__("os").getpid() not in pids  # processes, not threads


WORKER_MALLOC = """
import json, os
from cluster.client import connect
with connect("local:1") as client:
    print(json.dumps({"worker": list(client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).values()),
                      "here": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
                      "tf": list(client.run(lambda: os.environ.get("TF_CPP_MIN_LOG_LEVEL")).values())}))
"""


def test_embedded_workers_keep_glibcs_adaptive_malloc_and_quiet_tensorflow():
    # Dask sets MALLOC_TRIM_THRESHOLD_ for the worker processes it starts, which turns glibc's adaptive
    # mmap threshold off (label's tasks took 1.6x the CPU); our embedded cluster leaves it out. In a
    # fresh process: another test's plain LocalCluster sets it in this one's environment. And the
    # workers' TensorFlow keeps its start-up lines to itself, though nothing here asked for it.
    unset = ("MALLOC_TRIM_THRESHOLD_", "TF_CPP_MIN_LOG_LEVEL")
    env = {k: v for k, v in __import__("os").environ.items() if k not in unset}
    out = subprocess.run([sys.executable, "-c", WORKER_MALLOC], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=True)  # fmt: skip
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"worker": [None], "here": None, "tf": ["2"]}


def test_local_cuda_without_dask_cuda_is_an_error_not_a_cpu_run():
    pytest.importorskip("distributed")
    try:
        import dask_cuda  # noqa: F401

        pytest.skip("dask-cuda is installed here: the missing-package error cannot be seen")
    except ImportError:
        pass
    with pytest.raises(ClusterSpecError, match="local-cuda needs dask-cuda .* or use --cluster local"), connect(
        "local-cuda"
    ):
        pass


def test_the_slurm_job_script_it_would_submit():
    pytest.importorskip("dask_jobqueue")
    settings = SlurmSettings(queue="gpu", account="astro", walltime="02:30:00", cores=8, memory="32GiB",
                             processes=2, jobs=3, job_extra_directives=("--gres=gpu:1",),
                             job_script_prologue=("module load cuda",))  # fmt: skip
    cluster = Slurm(settings).cluster()
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in ("#SBATCH -p gpu", "#SBATCH -A astro", "#SBATCH -t 02:30:00", "#SBATCH --gres=gpu:1",
                 "#SBATCH --cpus-per-task=8", "module load cuda", "--nworkers 2", "--nthreads 4"):  # fmt: skip
        assert line in script, (line, script)


def test_making_a_slurm_cluster_keeps_the_ctrl_c_handler():
    """dask_jobqueue's import sets SIGINT to sys.exit() (exit status 0 on Ctrl-C): a fresh process
    shows whether our handler survives it."""
    pytest.importorskip("dask_jobqueue")
    code = (
        "import signal\n"
        "def ours(*_): raise KeyboardInterrupt\n"
        "signal.signal(signal.SIGINT, ours)\n"
        "from cluster.slurm import Slurm, SlurmSettings\n"
        "Slurm(SlurmSettings(cores=1, memory='1GB')).cluster().close()\n"
        "print(signal.getsignal(signal.SIGINT) is ours)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "True", done.stdout + done.stderr


def test_the_slurm_table_is_checked_at_load(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[cluster]\nspec = "slurm"\n[cluster.slurm]\nqueue = "gpu"\ncores = 8\nwalltime = "2h"\n')
    with pytest.raises(ConfigError, match=r"cluster.slurm.walltime '2h' must look like 01:00:00"):
        ClusterConfig(**load_config(path)["cluster"])
    path.write_text('[cluster]\nspec = "slurm"\n[cluster.slurm]\nqueues = "gpu"\n')
    with pytest.raises(ConfigError, match=r"unknown key cluster.slurm.queues; known keys: queue, account"):
        ClusterConfig(**load_config(path)["cluster"])


def test_a_local_cluster_sees_the_workspace(tmp_path):
    with LocalCluster(n_workers=1, processes=True, dashboard_address=":0") as cluster, Client(cluster) as client:
        check_workspace_visible(client, tmp_path / "ws")
    assert not list((tmp_path / "ws").glob(".reach-*"))  # the token is removed


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) for a worker with its own /tmp")
def test_a_worker_that_cannot_see_the_workspace_fails_early(tmp_path):
    """A real worker in its own mount namespace, where the workspace's parent is an empty tmpfs: the
    case of a node-local /tmp on a cluster."""
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    if probe.returncode:
        pytest.skip("unshare --mount is not permitted here")
    hidden = tmp_path / "node-local"
    hidden.mkdir()
    scheduler_file = tmp_path / "scheduler.json"
    dask = str(Path(sys.executable).with_name("dask"))
    scheduler = subprocess.Popen([dask, "scheduler", "--port", "0", "--dashboard-address", ":0",
                                  "--scheduler-file", str(scheduler_file)], stderr=subprocess.DEVNULL)  # fmt: skip
    worker = None
    try:
        deadline = time.time() + 60
        while not scheduler_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        worker = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             f"mount -t tmpfs none {hidden} && exec {dask} worker --scheduler-file {scheduler_file} --nworkers 1"],
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        with connect(str(scheduler_file)) as client:
            client.wait_for_workers(1, timeout=60)
            with pytest.raises(ClusterSpecError, match=r"1 of 1 workers cannot see the workspace .*no such file.*"
                                                       r"file system the workers share .* not /tmp"):  # fmt: skip
                check_workspace_visible(client, hidden / "ws")
            check_workspace_visible(client, tmp_path / "elsewhere")  # visible outside the hidden directory
    finally:
        for proc in (worker, scheduler):
            if proc is not None:
                proc.terminate()
                proc.wait(30)


def test_cluster_options_after_the_stage_name_and_the_dashboard_link(tmp_path):
    write_nsa_fits(tmp_path / "cat.fits", nsa_rows(20))
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "ingest", str(tmp_path / "cat.fits"), "-w", str(tmp_path / "ws"),
         "--cluster", "local:1"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "dask: local cluster, 1 workers, dashboard http://" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "ingest", str(tmp_path / "cat.fits"), "-w", str(tmp_path / "ws"),
         "--cluster", "local-cuda"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2 and "needs dask-cuda" in proc.stderr and "Traceback" not in proc.stderr
