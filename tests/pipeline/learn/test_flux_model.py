"""Models on flux cubes: the per-band asinh stretch is measured on the training images and saved in
the model, scoring applies it, and a model never meets pixels of another kind."""

import json
import shutil
import zipfile

import numpy as np
import pytest
from conftest import training_workspace, write_table

from pipeline.cli import main
from pipeline.errors import DataError
from pipeline.learn.args import EvaluateArgs, TrainArgs
from pipeline.learn.evaluate import evaluate
from pipeline.learn.train import train
from storage.cube import CubeLayout, create_cube, open_cube
from storage.tables import read_scores

SIGMA = (0.004, 0.012)  # nanomaggies: the two bands' sky noise


def flux_workspace(ws, n=260, size=32, bands="gz", seed=0):
    """WS/labels from :func:`training_workspace`, and a flux cube: Gaussian sky noise of SIGMA per
    band plus a central source 4x brighter for AGN (learnable)."""
    frame = training_workspace(ws, n=n, image_size=size)
    with_catalog(ws, frame)
    shutil.rmtree(ws / "cube.zarr")
    rng = np.random.default_rng(seed)
    layout = CubeLayout(n, size, 64, 8, channels=len(bands), dtype="float32")
    cube = create_cube(ws / "cube.zarr", layout, frame["objid"].to_numpy(), np.ones(n, np.float32),
                       np.zeros(n, np.int8), {"pixels": "flux", "bands": bands})  # fmt: skip
    images = rng.normal(0, 1, (n, size, size, len(bands))).astype(np.float32) * np.float32(SIGMA)
    bright = np.where(frame["label"].to_numpy() == 1, 0.4, 0.1).astype(np.float32)
    images[:, size // 2 - 2 : size // 2 + 2, size // 2 - 2 : size // 2 + 2, :] += bright[:, None, None, None]
    for shard in range(layout.n_shards):
        rows = layout.shard_rows(shard)
        cube.write_shard(shard, images[rows.start : rows.stop], np.ones(len(rows), np.int8))
    return ws


def with_catalog(ws, frame):
    """WS/catalog/ for scoring: the labelled rows' ids and positions."""
    write_table(frame[["objid", "cube_row", "ra", "dec"]].assign(radius_arcsec=np.float32(10.0)), ws / "catalog",
                max_rows=max(64, len(frame) // 3))  # fmt: skip


def stretch_config(model_path):
    with zipfile.ZipFile(model_path) as archive:
        config = json.loads(archive.read("config.json"))
    (layer,) = [la for la in config["config"]["layers"] if la["class_name"] == "AsinhStretch"]
    return layer["config"]


def test_a_flux_model_saves_its_stretch_and_refuses_rgb_cutouts(tmp_path, capsys):
    ws = flux_workspace(tmp_path / "flux")
    train(TrainArgs(workspace=ws, epochs=2, batch_size=32))
    model_path = ws / "models" / "paper" / "model.keras"
    config = stretch_config(model_path)
    assert config["bands"] == "gz"
    # the softening is each band's sky noise (the central 4x4 source is a small part of every image)
    np.testing.assert_allclose(config["softening"], SIGMA, rtol=0.1)
    manifest = evaluate(EvaluateArgs(workspace=ws))
    assert manifest.extra["test"]["roc_auc"] > 0.9  # learnable through the stretch

    rgb = tmp_path / "rgb"
    with_catalog(rgb, training_workspace(rgb, n=260, image_size=32))
    shutil.copytree(ws / "models", rgb / "models")
    with pytest.raises(DataError, match=r"trained on flux pixels in bands gz, but .*cube.zarr holds rgb pixels"):
        evaluate(EvaluateArgs(workspace=rgb))
    assert main(["--quiet", "--workers", "1", "score", "-w", str(rgb), "--model", str(ws / "models" / "paper"),
                 "--threshold", "0.5"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained on flux pixels in bands gz" in err[0] and "--pixels flux --bands gz" in err[0]
    assert not (rgb / "scores").exists()


def test_a_flux_model_scores_its_cube_as_evaluate_measured(tmp_path):
    """Scores of the test rows equal a prediction made in the test through the saved model."""
    import keras

    import pipeline.learn.model  # noqa: F401  (registers the stretch layer)

    ws = flux_workspace(tmp_path, n=200)
    train(TrainArgs(workspace=ws, epochs=1, batch_size=32))
    assert main(["--quiet", "--workers", "1", "score", "-w", str(ws), "--model", "paper", "--threshold", "0.5"]) == 0
    scores = read_scores(ws).sort_values("objid")
    model = keras.saving.load_model(ws / "models" / "paper" / "model.keras")
    cube = open_cube(ws / "cube.zarr", mode="r")
    images = cube.read_block(0, 200)
    stretch = stretch_config(ws / "models" / "paper" / "model.keras")
    by_hand = np.arcsinh(images / np.float32(stretch["softening"]))  # the stretch, applied outside the model
    assert np.allclose(model.layers[0](images), by_hand, atol=1e-5)
    expected = np.asarray(model.predict_on_batch(images)).reshape(-1)
    np.testing.assert_allclose(scores["p_agn"].to_numpy(), expected, atol=1e-5)


def test_evaluate_reports_rgb_and_flux_side_by_side(tmp_path):
    """``evaluate --compare WS``: the report shows this run's pixel kind and test metrics beside another
    workspace's last evaluation; a workspace never evaluated is refused before any work."""
    from pipeline.errors import ConfigError

    flux = flux_workspace(tmp_path / "flux", n=200)
    train(TrainArgs(workspace=flux, epochs=1, batch_size=32))
    evaluate(EvaluateArgs(workspace=flux))
    flux_metrics = json.loads((flux / "reports" / "metrics.json").read_text())
    assert flux_metrics["pixels"]["pixels"] == "flux" and flux_metrics["pixels"]["bands"] == "gz"

    rgb = tmp_path / "rgb"
    with_catalog(rgb, training_workspace(rgb, n=200, image_size=32))
    train(TrainArgs(workspace=rgb, epochs=1, batch_size=32))
    with pytest.raises(ConfigError, match=r"--compare .*never.*is not an evaluation's metrics.json"):
        evaluate(EvaluateArgs(workspace=rgb, compare=(str(tmp_path / "never"),)))
    assert not (rgb / "reports" / "metrics.json").exists()
    main(["--quiet", "evaluate", "-w", str(rgb), "--compare", str(flux)])
    report = (rgb / "reports" / "report.md").read_text()
    rgb_metrics = json.loads((rgb / "reports" / "metrics.json").read_text())
    wanted = ("| this run |", f"| {flux} |")
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in report.splitlines() if line.startswith(wanted)}  # fmt: skip
    assert rows["this run"][2:5] == ["rgb", "grz", "viewer-jpeg"]
    assert rows[str(flux)][2:4] == ["flux", "gz"]
    for name, metrics in (("this run", rgb_metrics), (str(flux), flux_metrics)):
        assert float(rows[name][6]) == pytest.approx(metrics["test"]["roc_auc"], abs=6e-4)
        assert int(rows[name][5].replace(",", "")) == metrics["test"]["n"]
    assert rgb_metrics["compared"][0]["roc_auc"] == flux_metrics["test"]["roc_auc"]
