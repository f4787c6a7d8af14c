"""Train and evaluate: it learns on the offline sky, resumes after SIGKILL, refuses what it must,
chooses the threshold on validation only, and trains data-parallel on 2 logical devices and on a
2-process Dask LocalCluster."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import training_workspace, write_table
from distributed import Client, LocalCluster

from cluster.multiworker import TrainingProcessError
from pipeline.cli import main
from pipeline.errors import ConfigError, DataError, TrainingError, WorkspaceError
from pipeline.learn import train as train_module
from pipeline.learn.args import EvaluateArgs, TrainArgs
from pipeline.learn.evaluate import evaluate
from pipeline.learn.modeldir import read_state
from pipeline.learn.train import train
from storage.cube import open_cube
from storage.hats_catalog import data_files
from storage.tables import read_labels

ROOT = Path(__file__).resolve().parents[3]
QUIET = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


@pytest.fixture(scope="module")
def sky_ws(tmp_path_factory):
    """An offline sky of 3,000 galaxies run through ingest, label and fetch (about 2,100 labelled:
    1,600 to train on, 210 to test; with half that, the test AUC of 3 epochs swings by ±0.05)."""
    ws = tmp_path_factory.mktemp("sky") / "ws"
    assert main(["--quiet", "--workers", "1", "run", "--workspace", str(ws), "--n", "3000", "--seed", "4", "--until",
                 "fetch"]) == 0  # fmt: skip
    return ws


@pytest.fixture(scope="module")
def trained(sky_ws):
    """The paper's CNN trained 3 epochs on the sky (CPU), then evaluated."""
    assert main(["--quiet", "train", "-w", str(sky_ws), "--epochs", "3", "--batch-size", "32"]) == 0
    assert main(["--quiet", "evaluate", "-w", str(sky_ws)]) == 0
    return sky_ws


def test_it_learns_and_the_report_has_everything(trained):
    ws = trained
    m = json.loads((ws / "reports" / "metrics.json").read_text())
    test = m["test"]
    assert test["roc_auc"] >= 0.75, test
    for key in ("n", "roc_auc", "pr_auc", "accuracy", "balanced_accuracy", "precision", "recall", "f1"):
        assert key in test
    (tn, fp), (fn, tp) = test["confusion"]
    assert tn + fp + fn + tp == test["n"] == test["n_sf"] + test["n_agn"]
    assert test["at_0.5"]["threshold"] == 0.5 and test["at_0.3"]["threshold"] == 0.3
    assert m["policy"] == "balanced" and m["threshold"] == json.loads((ws / "models" / "paper" / "threshold.json")
                                                                      .read_text())["threshold"]  # fmt: skip
    for name in ("roc.png", "pr.png", "confusion.png", "gallery.png", "report.md", "predictions.parquet"):
        assert (ws / "reports" / name).stat().st_size > 0
    report = (ws / "reports" / "report.md").read_text()
    assert "0.781" in report and "141,305" in report and "0.894" in report and "210,000" in report
    assert f"{test['n']:,}" in report
    history = pd.read_csv(ws / "models" / "paper" / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3] and {"val_auc", "val_accuracy", "loss"} <= set(history.columns)
    # model.keras is a plain Keras model; the stored predictions are its scores of the cube's images
    model = keras.saving.load_model(ws / "models" / "paper" / "model.keras")
    predictions = pd.read_parquet(ws / "reports" / "predictions.parquet")
    assert set(predictions["split"]) == {"val", "test"} and predictions["objid"].is_unique
    some = predictions.head(20)
    images = open_cube(ws / "cube.zarr", mode="r").read_rows(some["cube_row"].to_numpy())
    np.testing.assert_allclose(model.predict(images, verbose=0)[:, 0], some["p_agn"], atol=1e-5)


def test_the_threshold_is_chosen_without_test_labels(trained):
    ws = trained
    before = json.loads((ws / "reports" / "metrics.json").read_text())
    originals = {p: pd.read_parquet(p) for p in data_files(ws / "labels")}
    assert originals
    try:
        for path, frame in originals.items():  # every test label flipped: val untouched
            flipped = frame.copy()
            test = flipped["split"].astype(str) == "test"
            flipped.loc[test, "label"] = (1 - flipped.loc[test, "label"]).astype(flipped["label"].dtype)
            flipped.to_parquet(path)
        evaluate(EvaluateArgs(workspace=ws))
        after = json.loads((ws / "reports" / "metrics.json").read_text())
    finally:
        for path, frame in originals.items():
            frame.to_parquet(path)
    assert after["threshold"] == before["threshold"]
    assert after["val"] == before["val"]
    assert after["test"]["accuracy"] == pytest.approx(1 - before["test"]["accuracy"])
    assert after["test"]["roc_auc"] == pytest.approx(1 - before["test"]["roc_auc"])


def test_evaluate_policies_and_tta(trained):
    ws = trained
    evaluate(EvaluateArgs(workspace=ws, threshold_policy="fixed:0.3", tta=True))
    m = json.loads((ws / "reports" / "metrics.json").read_text())
    assert m["threshold"] == 0.3 and m["tta"] is True
    assert m["test"]["accuracy"] == m["test"]["at_0.3"]["accuracy"]
    plain = pd.read_parquet(ws / "reports" / "predictions.parquet")
    evaluate(EvaluateArgs(workspace=ws))
    assert not np.allclose(pd.read_parquet(ws / "reports" / "predictions.parquet")["p_agn"], plain["p_agn"])


def test_a_killed_training_resumes_at_the_next_epoch(sky_ws, capsys):
    argv = ["--quiet", "train", "-w", str(sky_ws), "--name", "resume", "--epochs", "3", "--batch-size", "32"]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *argv], cwd=ROOT, env=QUIET,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    directory = sky_ws / "models" / "resume"
    try:
        deadline = time.monotonic() + 240
        while read_state(directory)["epochs_done"] < 1 if directory.exists() else True:
            assert proc.poll() is None and time.monotonic() < deadline, "training ended before its first checkpoint"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed = read_state(directory)
    assert 1 <= killed["epochs_done"] < 3
    keras.saving.load_model(directory / killed["checkpoint"])  # the last checkpoint is whole
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"from epoch {killed['epochs_done'] + 1}" in out and "epoch 1/3" not in out
    history = read_state(directory)["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[: killed["epochs_done"]] == killed["history"]  # the finished epochs were not redone
    assert not list(directory.rglob(".*.tmp*"))
    # a larger --epochs continues; other changes are refused; --restart starts over
    assert main([*argv, "--batch-size", "16"]) == 2
    assert "trained with other arguments (batch_size 32 -> 16)" in capsys.readouterr().err
    # killed after the last checkpoint but before model.keras: the re-run makes it from that checkpoint
    (directory / "model.keras").unlink()
    assert main(argv) == 0 and "nothing to do" in capsys.readouterr().out
    keras.saving.load_model(directory / "model.keras")
    assert main([*argv[:-4], "--epochs", "1", "--batch-size", "32", "--restart"]) == 0
    assert [h["epoch"] for h in read_state(directory)["history"]] == [1]


def small(tmp_path, n=260, **kwargs):
    training_workspace(tmp_path, n=n, image_size=32, learnable=True, **kwargs)
    return tmp_path


def test_training_asks_the_reader_for_its_batches_in_order(tmp_path, monkeypatch):
    """Batches out of order would be rebuilt from scattered reads (what Keras' own shuffling does)."""
    from pipeline.learn import batches

    made = []
    init = batches.CubeBatches.__init__

    def recording(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(batches.CubeBatches, "__init__", recording)
    ws = small(tmp_path)
    train(TrainArgs(workspace=ws, epochs=2, batch_size=16))
    shuffled = [b for b in made if b.shuffle]
    assert len(shuffled) == 1 and len(shuffled[0]) > 5
    assert shuffled[0].rebuilt <= 2  # at most the batches Keras asks for first to learn their shapes


def test_clear_errors(tmp_path, capsys):
    ws = small(tmp_path / "a")
    with pytest.raises(DataError, match=r"--batch-size 4096 is larger than the \d+ training images"):
        train(TrainArgs(workspace=ws, batch_size=4096, epochs=1))
    few = np.zeros(200, np.int8)
    few[:6] = 1
    ws_few = small(tmp_path / "few", n=200, status=few)
    with pytest.raises(DataError, match=r"too few galaxies to train on: the train split has \d+ star-forming and "
                                        r"\d+ AGN with an ok cutout.*agnsurvey fetch"):  # fmt: skip
        train(TrainArgs(workspace=ws_few, epochs=1))
    shutil.rmtree(ws / "cube.zarr")
    with pytest.raises(WorkspaceError, match="has no image cube; run `agnsurvey fetch"):
        train(TrainArgs(workspace=ws, epochs=1))
    with pytest.raises(SystemExit) as exited:
        main(["train", "-w", str(ws), "--model", "vgg"])
    assert exited.value.code == 2 and "invalid choice: 'vgg'" in capsys.readouterr().err
    with pytest.raises(WorkspaceError, match=r"has no trained model.*agnsurvey train"):
        evaluate(EvaluateArgs(workspace=ws, model="paper"))


def test_mixed_precision_trains_in_bfloat16_and_leaves_the_global_policy_alone(tmp_path):
    ws = small(tmp_path)
    train(TrainArgs(workspace=ws, epochs=1, batch_size=32, precision="mixed_bfloat16"))
    model = keras.saving.load_model(ws / "models" / "paper" / "model.keras")
    assert model.get_layer("conv1").dtype_policy.name == "mixed_bfloat16"
    assert model.get_layer("p_agn").dtype_policy.name == "float32"  # the probability stays float32
    assert keras.mixed_precision.dtype_policy().name == "float32"


def test_evaluate_refuses_to_measure_on_galaxies_the_model_trained_on(tmp_path):
    ws = small(tmp_path)
    train(TrainArgs(workspace=ws, epochs=1, batch_size=32))
    evaluate(EvaluateArgs(workspace=ws))
    labels = read_labels(ws)
    moved = labels["split"].astype(str) == "train"
    labels["split"] = labels["split"].astype(str).where(~moved | (labels["objid"] % 4 != 0), "test")
    shutil.rmtree(ws / "labels")
    write_table(labels, ws / "labels")  # as if relabelled with another --split
    with pytest.raises(DataError, match=r"galaxies of the test split were in this model's training split.*--restart"):
        evaluate(EvaluateArgs(workspace=ws))


def test_a_model_directory_from_another_workspace_is_refused(tmp_path):
    a = small(tmp_path / "a", seed=1)
    train(TrainArgs(workspace=a, epochs=1, batch_size=32))
    b = small(tmp_path / "b", labels=(np.arange(260) % 3 == 0).astype(int))
    shutil.copytree(a / "models", b / "models")
    with pytest.raises(TrainingError, match=r"trained on other data: it was made by another workspace .*--restart"):
        train(TrainArgs(workspace=b, epochs=2, batch_size=32))
    train(TrainArgs(workspace=b, epochs=1, batch_size=32, restart=True))
    assert read_state(b / "models" / "paper")["epochs_done"] == 1


DEVICES = """
import json, sys
from cluster import devices
from pipeline.learn.args import TrainArgs
from pipeline.errors import DataError
from pipeline.learn.modeldir import read_state
from pipeline.learn.train import fit
ws = sys.argv[1]
devices.prepare("cpu", 2)
out = {}
try:
    fit(TrainArgs(workspace=ws, name="odd", epochs=1, batch_size=33, accelerator="cpu", devices=2, augment=False))
except DataError as exc:
    out["odd"] = str(exc)
for n in (1, 2):
    args = TrainArgs(workspace=ws, name=f"d{n}", epochs=1, batch_size=32, accelerator="cpu", devices=n, augment=False)
    fit(args)
    out[n] = read_state(args.workspace.models / args.name)["history"][0]["loss"]
print(json.dumps(out))
"""


def fit_on_devices(ws: Path, backend: str) -> dict:
    env = {**QUIET, "KERAS_BACKEND": backend}
    done = subprocess.run([sys.executable, "-c", DEVICES, str(ws)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_two_logical_devices_train_like_one(tmp_path, backend):
    """MirroredStrategy (TensorFlow) or DataParallel (JAX) over 2 logical CPU devices."""
    ws = small(tmp_path)
    losses = fit_on_devices(ws, backend)
    assert "cannot be split over 2 CPUs" in losses["odd"]
    assert abs(losses["1"] - losses["2"]) < 0.02, losses
    model = keras.saving.load_model(ws / "models" / "d2" / "model.keras")
    assert model.count_params() == keras.saving.load_model(ws / "models" / "d1" / "model.keras").count_params()


def test_a_two_process_local_cluster_trains_like_one_device(tmp_path, cluster_client):
    """One training process per Dask worker (JAX multi-process runtime, gloo on CPU)."""
    ws = small(tmp_path)
    args = TrainArgs(workspace=ws, name="mp", epochs=1, batch_size=32, augment=False)
    manifest = train(args, client=cluster_client)
    directory = ws / "models" / "mp"
    assert manifest.extra["epochs_done"] == 1 and (directory / "process-0.log").exists()
    assert "2 processes x 1 CPU (jax)" in (directory / "process-0.log").read_text()
    model = keras.saving.load_model(directory / "model.keras")
    assert model.count_params() > 0
    single = fit_on_devices(ws, "jax")["1"]
    assert abs(read_state(directory)["history"][0]["loss"] - single) < 0.05


def test_a_failing_training_process_stops_the_others_with_its_log(tmp_path, cluster_client):
    """Process 1 cannot start JAX (its worker's environment names no usable platform); process 0,
    waiting for it, is stopped rather than left hanging."""
    ws = small(tmp_path)
    second = sorted(cluster_client.scheduler_info()["workers"])[1]
    cluster_client.run(lambda: os.environ.update(JAX_PLATFORMS="no-such-platform"), workers=[second])
    started = time.monotonic()
    try:
        with pytest.raises(TrainingProcessError, match=r"(?s)training process 1 of 2 exited with code 1.*no-such"):
            train(TrainArgs(workspace=ws, name="bad", epochs=1, batch_size=32), client=cluster_client)
    finally:
        cluster_client.run(lambda: os.environ.pop("JAX_PLATFORMS", None), workers=[second])
    assert time.monotonic() - started < 60
    assert not (ws / "models" / "bad" / "model.keras").exists()
    for _ in range(50):  # process 0 was stopped: its worker is free again
        if not any(cluster_client.processing().values()):
            break
        time.sleep(0.1)
    assert not any(cluster_client.processing().values())



def test_a_worker_killed_mid_epoch_is_resumed_from_the_last_checkpoint_not_a_failed_run(tmp_path, capsys):
    ws = small(tmp_path)
    args = TrainArgs(workspace=ws, name="killed", epochs=3, batch_size=32, augment=False)
    directory = ws / "models" / "killed"
    killed: list[int] = []
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        pids = client.run(os.getpid)
        worker = sorted(pids)[1]

        def kill_after_first_epoch() -> None:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if (directory / "state.json").exists() and read_state(directory)["epochs_done"] >= 1:
                    killed.append(read_state(directory)["epochs_done"])
                    history.extend(read_state(directory)["history"])
                    os.kill(pids[worker], signal.SIGKILL)
                    return
                time.sleep(0.05)

        history: list[dict] = []
        killer = threading.Thread(target=kill_after_first_epoch, daemon=True)
        killer.start()
        manifest = train(args, client=client)  # the nanny restarts the worker; training goes on from the checkpoint
        killer.join()
    done = killed[0]
    assert 1 <= done < 3 and manifest.extra["epochs_done"] == 3
    assert "left while training" in capsys.readouterr().out
    state = read_state(directory)
    assert state["history"][:done] == history[:done]  # the finished epochs were kept, not redone
    assert [row["epoch"] for row in state["history"]] == [1, 2, 3]
    assert f"from epoch {done + 1}" in (directory / "process-0.log").read_text()


def test_where_run_trains_follows_train_on(tmp_path, cluster_client, monkeypatch):
    """Unset, a cluster whose workers all run on this machine trains in this process (one process
    on all cores, no gradient exchange); ``workers`` asks for one process per worker."""
    from pipeline.learn.train import training_client

    ws = small(tmp_path)
    assert training_client(TrainArgs(workspace=ws), cluster_client) is None
    assert training_client(TrainArgs(workspace=ws, on="workers"), cluster_client) is cluster_client
    assert training_client(TrainArgs(workspace=ws, on="driver"), cluster_client) is None
    assert training_client(TrainArgs(workspace=ws), None) is None
    with pytest.raises(ConfigError, match="train.on = 'workers' needs a Dask cluster"):
        training_client(TrainArgs(workspace=ws, on="workers"), None)
    with pytest.raises(ConfigError, match="train.on must be one of driver, workers"):
        TrainArgs(workspace=ws, on="gpu")
    import cluster.client

    # the same two workers seen from a machine that is not theirs (no other machine can run them here)
    monkeypatch.setattr(cluster.client, "this_machines_addresses", lambda: {"login-node"})
    assert training_client(TrainArgs(workspace=ws), cluster_client) is cluster_client


def test_damaged_model_files_and_other_pixels_are_clear_errors(tmp_path):
    ws = small(tmp_path)
    train(TrainArgs(workspace=ws, epochs=1, batch_size=32))
    directory = ws / "models" / "paper"
    (directory / "state.json").write_text("{trunc")
    with pytest.raises(TrainingError, match=r"state.json is damaged \(not JSON\); pass --restart"):
        train(TrainArgs(workspace=ws, epochs=2, batch_size=32))
    train(TrainArgs(workspace=ws, epochs=1, batch_size=32, restart=True))
    kept = (directory / "model.keras").read_bytes()
    (directory / "checkpoints" / "epoch-0001.keras").write_bytes(b"not a zip")
    with pytest.raises(TrainingError, match=r"epoch-0001.keras is damaged: not a whole .keras file.*--restart") as bad:
        train(TrainArgs(workspace=ws, epochs=2, batch_size=32))
    assert "File not found" not in str(bad.value)  # the file is there: it is damaged
    # the continuation failed: the last good model.keras (1 epoch) is kept, and the run is not done
    assert (directory / "model.keras").read_bytes() == kept
    assert not train_module._trained(TrainArgs(workspace=ws, epochs=2, batch_size=32))


def test_a_truncated_final_model_is_restored_from_the_last_checkpoint(tmp_path, capsys):
    ws = small(tmp_path)
    train(TrainArgs(workspace=ws, epochs=1, batch_size=32))
    final = ws / "models" / "paper" / "model.keras"
    whole = final.read_bytes()
    final.write_bytes(whole[: len(whole) // 2])  # a kill or a full disk while it was written
    assert not train_module._trained(TrainArgs(workspace=ws, epochs=1, batch_size=32))
    train(TrainArgs(workspace=ws, epochs=1, batch_size=32))  # its epochs are done: nothing to train
    assert "is damaged (not a whole .keras file); restored from checkpoints/" in capsys.readouterr().out
    keras.saving.load_model(final)  # whole again
    assert train_module._trained(TrainArgs(workspace=ws, epochs=1, batch_size=32))


def test_evaluate_names_its_own_fix_for_a_model_keras_cannot_load(tmp_path):
    """A model.keras that is a zip with its config but without weights: Keras' whole cause, and the
    train command to run (evaluate has no --restart of its own)."""
    import zipfile

    ws = small(tmp_path)
    train(TrainArgs(workspace=ws, epochs=1, batch_size=32))
    path = ws / "models" / "paper" / "model.keras"
    with zipfile.ZipFile(path) as archive:
        kept = {n: archive.read(n) for n in archive.namelist() if not n.endswith(".h5")}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in kept.items():
            archive.writestr(name, data)
    with pytest.raises(TrainingError, match=r"model.keras is damaged: Keras cannot load it") as bad:
        evaluate(EvaluateArgs(workspace=ws))
    message = str(bad.value)
    assert f"agnsurvey train --workspace {ws} --name paper --restart" in message
    assert "pass --restart" not in message and not (ws / "reports" / "metrics.json").exists()


def test_a_missing_gpu_is_an_error_with_exit_code_2(tmp_path, capsys):
    ws = small(tmp_path)
    assert main(["--quiet", "train", "-w", str(ws), "--epochs", "1", "--accelerator", "gpu"]) == 2
    assert "--accelerator gpu: no GPU is visible" in capsys.readouterr().err


def test_train_on_no_workspace_or_with_an_empty_name_is_refused_and_makes_nothing(tmp_path, capsys):
    missing = tmp_path / "typo"
    assert main(["--quiet", "train", "-w", str(missing), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{missing} does not exist" in err and f"agnsurvey ingest CATALOG --workspace {missing}" in err
    assert not missing.exists()  # no lock directory left behind
    ws = small(tmp_path / "a")
    assert main(["--quiet", "train", "-w", str(ws), "--name", "", "--epochs", "1"]) == 2
    assert "train.name '' must be letters" in capsys.readouterr().err
    assert not (ws / "models").exists()


def test_checkpoints_are_pruned_to_the_last_k_and_the_best(tmp_path):
    from pipeline.learn.callbacks import checkpoints_to_prune

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for e in range(1, 7):
        (folder / f"epoch-{e:04d}.keras").write_bytes(b"x")
    history = [{"epoch": e, "val_loss": v} for e, v in zip(range(1, 7), [0.9, 0.2, 0.5, 0.6, 0.7, 0.8], strict=True)]
    assert [p.name for p in checkpoints_to_prune(folder, history, 3)] == ["epoch-0001.keras", "epoch-0003.keras"]
    assert [p.name for p in checkpoints_to_prune(folder, [], 6)] == []  # no val loss: only the last K count

    ws = small(tmp_path / "ws")
    assert main(["--quiet", "train", "-w", str(ws), "--epochs", "4", "--batch-size", "32",
                 "--keep-checkpoints", "2"]) == 0  # fmt: skip
    directory = ws / "models" / "paper"
    history = json.loads((directory / "history.json").read_text())["history"]
    best = min(history, key=lambda h: h["val_loss"])["epoch"]
    expected = sorted({3, 4, best})
    assert sorted(int(p.stem[-4:]) for p in (directory / "checkpoints").glob("epoch-*.keras")) == expected
    assert read_state(directory)["checkpoint"] == "checkpoints/epoch-0004.keras"


def test_a_given_up_training_attempt_writes_no_checkpoint(tmp_path):
    """After a worker is lost, train renews its fence and starts a new attempt; a process of the old
    attempt still running writes no checkpoint, history or state (it would race the new one)."""
    from pipeline.learn.callbacks import Checkpoint
    from storage.fence import StaleWrite
    from storage.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    directory = ws.models / "paper"
    state = {"history": [], "epochs_done": 0, "checkpoint": None}
    with ws.lock("models/paper"):
        first = ws.fence("models/paper")
        second = ws.renew_fence("models/paper")
        late, current = Checkpoint(directory, state, 10, fence=first), Checkpoint(directory, state, 10, fence=second)
        for callback in (late, current):
            callback.set_model(model)
            callback.on_epoch_begin(0)
        with pytest.raises(StaleWrite, match="another run holds it now"):
            late.on_epoch_end(0, {"loss": 0.5})
        assert not directory.exists()
        current.on_epoch_end(0, {"loss": 0.5})
        assert read_state(directory)["epochs_done"] == 1
    with pytest.raises(StaleWrite, match="the run has ended"):  # released: the lock's last token is cleared
        current.on_epoch_end(1, {"loss": 0.4})
    assert read_state(directory)["epochs_done"] == 1
