"""A killed run loses nothing that was complete; a killed worker costs a retry, not data."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
from conftest import nsa_rows, write_nsa_fits
from distributed import Client, LocalCluster, WorkerPlugin

from pipeline.config import IngestArgs, LabelArgs
from pipeline.ingest import ingest, read_catalog
from pipeline.label import label, read_labels

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
        import storage.shards as shards
        from pipeline import ingest as stage
        real = shards.write_shard
        def slow(frame, path, *a, **k):
            n = real(frame, path, *a, **k)
            time.sleep(60)
            return n
        stage.write_shard = slow
        with dask.config.set(scheduler="synchronous"):
            stage.ingest(stage.IngestArgs(workspace={str(ws)!r}, inputs=[{str(new)!r}], shard_rows=200))
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, start_new_session=True)
    deadline = time.time() + 60
    while not list(ws.glob(".catalog.tmp-*/part-*.parquet")):
        assert child.poll() is None and time.time() < deadline, "the child never started writing"
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    pd.testing.assert_frame_equal(read_catalog(ws), before)  # the old, complete catalog is untouched
    manifest = ingest(IngestArgs(workspace=ws, inputs=[str(new)], shard_rows=200))
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
        client.register_plugin(KillOnce(str(tmp_path / "killed-ingest"), "_sort_and_write"))
        manifest = ingest(
            IngestArgs(workspace=tmp_path / "ws", inputs=[str(tmp_path / "cat.fits")], shard_rows=500, chunk_rows=700),
            client=client,
        )
        client.register_plugin(KillOnce(str(tmp_path / "killed-label"), "_label_shard"), name="kill-label")
        labelled = label(LabelArgs(workspace=tmp_path / "ws", plots=False), client=client)
    assert (tmp_path / "killed-ingest").exists() and (tmp_path / "killed-label").exists()
    assert manifest.dropped["duplicate_objid"] == 50 and manifest.rows_out == 3950
    catalog = read_catalog(tmp_path / "ws")
    assert catalog["objid"].is_unique and len(catalog) == 3950
    labels = read_labels(tmp_path / "ws")
    np.testing.assert_array_equal(labels["cube_index"], np.arange(labelled.rows_out))
