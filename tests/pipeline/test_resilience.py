"""A killed run loses nothing that was complete; a killed worker costs a retry, not data."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import nsa_rows, rows_frame, write_nsa_fits
from distributed import Client, LocalCluster, WorkerPlugin

from pipeline.catalog.args import IngestArgs, LabelArgs
from pipeline.catalog.ingest import ingest
from pipeline.catalog.label import label
from storage.tables import read_catalog, read_labels

ROOT = Path(__file__).resolve().parents[2]


def test_sigkill_during_ingest_keeps_previous_catalog_and_rerun_completes(tmp_path, synchronous):
    old = write_nsa_fits(tmp_path / "old.fits", nsa_rows(300, seed=1))
    new = write_nsa_fits(tmp_path / "new.fits", nsa_rows(2000, seed=2))
    ws = tmp_path / "ws"
    ingest(IngestArgs(workspace=ws, inputs=[str(old)]))
    before = read_catalog(ws)
    # The child writes its first shard, then pauses (so the kill lands mid-write, deterministically).
    script = textwrap.dedent(
        f"""
        import time, dask
        from pipeline.catalog import ingest as stage
        real = stage.write_partition
        def slow(*a, **k):
            written = real(*a, **k)
            time.sleep(60)
            return written
        stage.write_partition = slow
        with dask.config.set(scheduler="synchronous"):
            stage.ingest(stage.IngestArgs(workspace={str(ws)!r}, inputs=[{str(new)!r}], max_rows=200))
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, start_new_session=True)
    deadline = time.time() + 60
    while not list(ws.glob(".catalog.tmp-*/dataset/Norder=*/Dir=*/Npix=*.parquet")):
        assert child.poll() is None and time.time() < deadline, "the child never started writing"
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    pd.testing.assert_frame_equal(read_catalog(ws), before)  # the old, complete catalog is untouched
    manifest = ingest(IngestArgs(workspace=ws, inputs=[str(new)], max_rows=200))
    assert manifest.rows_out == 2000 and len(read_catalog(ws)) == 2000
    assert not list(ws.glob(".catalog.*"))  # the half-written directory was cleaned up


class KillOnce(WorkerPlugin):
    """Kills the worker process the first time it starts a task whose key contains ``marker``."""

    def __init__(self, flag: str, marker: str):
        self.flag, self.marker = flag, marker

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and self.marker in str(key) and not os.path.exists(self.flag):
            Path(self.flag).touch()
            os._exit(1)


def test_killed_worker_is_retried_and_result_is_complete(tmp_path):
    rows = nsa_rows(4000, seed=3)
    rows["NSAID"][100:150] = rows["NSAID"][0:50]  # some duplicates, so dedup must survive the kill
    write_nsa_fits(tmp_path / "cat.fits", rows)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(KillOnce(str(tmp_path / "killed-read"), "_read_and_spill"), name="kill-read")
        client.register_plugin(KillOnce(str(tmp_path / "killed-ingest"), "_sort_and_write"), name="kill-merge")
        manifest = ingest(
            IngestArgs(workspace=tmp_path / "ws", inputs=[str(tmp_path / "cat.fits")], max_rows=500, chunk_rows=700),
            client=client,
        )
        client.register_plugin(KillOnce(str(tmp_path / "killed-label"), "_label_partition_file"), name="kill-label")
        labelled = label(LabelArgs(workspace=tmp_path / "ws", plots=False), client=client)
    assert all((tmp_path / f"killed-{stage}").exists() for stage in ("read", "ingest", "label"))
    assert not list((tmp_path / "ws").rglob("*.arrow"))  # the sorted runs were spilled, then removed
    assert manifest.dropped["duplicate_objid"] == 50 and manifest.rows_out == 3950
    catalog = read_catalog(tmp_path / "ws")
    assert catalog["objid"].is_unique and len(catalog) == 3950
    np.testing.assert_array_equal(catalog.sort_values("cube_row")["cube_row"], np.arange(3950))
    labels = read_labels(tmp_path / "ws")
    assert len(labels) == labelled.rows_out and labels["cube_row"].is_unique


class DiesMidSpill(WorkerPlugin):
    """The first worker to finish writing a sorted run dies before renaming it into place, leaving
    the half-done temporary file behind (a worker killed while it spills)."""

    def __init__(self, flag: str):
        self.flag = flag

    def setup(self, worker):
        import storage.manifest as writer

        flag = self.flag

        class DyingOs:
            def __getattr__(self, name):
                return getattr(os, name)

            def replace(self, src, dst):
                if str(dst).endswith(".arrow") and not os.path.exists(flag):
                    Path(flag).touch()
                    os._exit(1)
                os.replace(src, dst)

        writer.os = DyingOs()


class ManagedBytesAtMerge(WorkerPlugin):
    """Appends, whenever a merge task starts, the bytes of task results the worker then holds."""

    def __init__(self, log: str):
        self.log = log

    def setup(self, worker):
        self.worker = worker

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and "_sort_and_write" in str(key):
            held = sum(ts.nbytes or 0 for ts in self.worker.state.tasks.values() if ts.state == "memory")
            with open(self.log, "a") as fh:
                fh.write(f"{held}\n")


def test_ingest_keeps_no_rows_in_worker_memory_and_survives_a_worker_killed_mid_spill(tmp_path):
    rows = nsa_rows(6000, seed=4)
    write_nsa_fits(tmp_path / "cat.fits", rows)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(DiesMidSpill(str(tmp_path / "died")), name="die-mid-spill")
        client.register_plugin(ManagedBytesAtMerge(str(tmp_path / "held")), name="held")
        manifest = ingest(
            IngestArgs(workspace=tmp_path / "ws", inputs=[str(tmp_path / "cat.fits")], max_rows=800, chunk_rows=500),
            client=client,
        )
    assert (tmp_path / "died").exists()
    catalog = read_catalog(tmp_path / "ws")
    assert manifest.rows_out == len(catalog) == 6000 and catalog["objid"].is_unique
    np.testing.assert_array_equal(np.sort(catalog["objid"]), np.sort(rows["NSAID"]))
    held = [int(n) for n in (tmp_path / "held").read_text().split()]
    assert held and max(held) < 50_000  # the rows (~90 bytes each, 540 kB) went to disk, not to worker memory
    assert not [p for p in (tmp_path / "ws").rglob("*") if p.name.endswith((".tmp", ".arrow", ".keys"))]


# --- the disk fills up, the workspace is read-only: one line, nothing left behind --------------------

INGEST_TWICE = """
import json, sys
from pathlib import Path
import pandas as pd
from pipeline.cli import main
from pipeline.catalog.args import IngestArgs
from pipeline.catalog.ingest import ingest
ws, small, big = sys.argv[1:4]
ingest(IngestArgs(workspace=ws, inputs=[small]))
before = pd.read_parquet(Path(ws) / "catalog" / "dataset")
code = main(["--quiet", "--workers", "1", "ingest", big, "--workspace", ws])
after = pd.read_parquet(Path(ws) / "catalog" / "dataset")
print(json.dumps({"code": code, "kept": before.equals(after), "rows": len(after),
                  "left": sorted(p.name for p in Path(ws).iterdir())}))
"""


def _in_small_filesystem(ws: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``script`` with ``ws`` on a 1 MiB file system: a tmpfs in a private mount namespace where
    this machine allows one (ENOSPC), else under a 1 MiB file-size limit (EFBIG: the same code path)."""
    ws.mkdir()
    python = [sys.executable, "-c", script, str(ws), *args]
    mount = f"mount -t tmpfs -o size=1m tmpfs {ws} && exec \"$@\""
    for prefix in (["unshare", "--mount", "--propagation", "private"], ["unshare", "-rm"]):
        try:
            probe = subprocess.run([*prefix, "sh", "-c", f"mount -t tmpfs tmpfs {ws}"], capture_output=True)
        except FileNotFoundError:
            break
        if probe.returncode == 0:
            return subprocess.run([*prefix, "sh", "-c", mount, "sh", *python], cwd=ROOT, capture_output=True,
                                  text=True, timeout=240)  # fmt: skip

    def limit() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    return subprocess.run(python, cwd=ROOT, capture_output=True, text=True, timeout=240, preexec_fn=limit)


def test_a_full_disk_is_one_line_and_keeps_the_previous_catalog(tmp_path):
    small = write_nsa_fits(tmp_path / "small.fits", nsa_rows(200, seed=1))
    big = write_nsa_fits(tmp_path / "big.fits", nsa_rows(60_000, seed=2))  # a shard of ~3 MB: does not fit
    proc = _in_small_filesystem(tmp_path / "ws", INGEST_TWICE, str(small), str(big))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == 2 and result["kept"] and result["rows"] == 200
    assert not [name for name in result["left"] if name.startswith(".catalog.")]  # no half-written catalog
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert errors[0].startswith(f"agnsurvey: error: no space left writing {tmp_path / 'ws'}")
    assert "free space there or choose a --workspace on another disk" in errors[0]


LABEL_READ_ONLY = """
import sys
from pipeline.cli import main
sys.exit(main(["--quiet", "--workers", "1", "label", "--workspace", sys.argv[1]]))
"""


def test_a_read_only_workspace_is_one_line_naming_it(tmp_path):
    ws = tmp_path / "ws"
    ingest(IngestArgs(workspace=ws, inputs=[str(write_nsa_fits(tmp_path / "c.fits", nsa_rows(100)))]))
    python = [sys.executable, "-c", LABEL_READ_ONLY, str(ws)]
    remount = f"mount --bind {ws} {ws} && mount -o remount,ro,bind {ws} && exec \"$@\""
    if os.geteuid() == 0:
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", remount, "sh", *python],
                              cwd=ROOT, capture_output=True, text=True, timeout=240)  # fmt: skip
        if "mount:" in proc.stderr or "unshare:" in proc.stderr:
            pytest.skip(f"as root, a read-only file system needs a mount namespace: {proc.stderr.strip()}")
        want = f"agnsurvey: error: {ws / '.locks' / 'labels.lock'} is on a read-only file system; choose a writable"
    else:
        ws.chmod(0o555)
        proc = subprocess.run(python, cwd=ROOT, capture_output=True, text=True, timeout=240)
        ws.chmod(0o755)
        want = f"agnsurvey: error: {ws / '.locks' / 'labels.lock'}: permission denied; check its permissions, or"
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(errors) == 1 and errors[0].startswith(want), proc.stderr
    assert not (ws / "labels").exists()


def test_an_error_inside_a_dask_task_is_one_clear_line(tmp_path):
    """A bad id in the last chunk of a CSV is found by a worker process; the user sees the error
    once, without the worker's "Compute Failed" block or a traceback."""
    table = rows_frame(nsa_rows(3000))
    table["NSAID"] = table["NSAID"].astype(str)
    table.loc[2990, "NSAID"] = "12x"
    table.to_csv(tmp_path / "cat.csv", index=False)
    script = textwrap.dedent(
        """
        import sys
        from pipeline.catalog.readers import csv
        from pipeline.cli import main
        csv.CSV_CHUNK_BYTES = 16384  # many chunks: the bad row is in the last, read by a worker
        sys.exit(main(["--quiet", "--workers", "2", "ingest", sys.argv[1], "--workspace", sys.argv[2]]))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "cat.csv"), str(tmp_path / "ws")],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)  # fmt: skip
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert errors[0].startswith("agnsurvey: error: ") and "cat.csv: row 2,991 (counting data rows from 1): id " \
        "column 'NSAID' holds '12x', not an integer" in errors[0]  # fmt: skip
    assert not (tmp_path / "ws" / "catalog").exists()
