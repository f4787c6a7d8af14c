"""Score: any catalog (no emission lines) → WS/scores/, on real worker processes, killed workers included."""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from aiohttp import web
from conftest import kill_a_worker_running, serve_in_thread, training_workspace, write_table
from distributed import Client, LocalCluster
from PIL import Image

from pipeline.cli import main
from pipeline.errors import CatalogError, ScoreError
from pipeline.images.args import FetchArgs
from pipeline.images.decode import resize
from pipeline.score.args import ScoreArgs
from pipeline.score.model import load_counts
from pipeline.score.score import score
from pipeline.synthetic.args import SkyArgs
from pipeline.synthetic.catalog import SKY_V1_FITS, make_sky
from pipeline.synthetic.render import SKY_COUNTS
from pipeline.synthetic.server import serve_in_background
from pipeline.synthetic.server_config import build_server_config
from pipeline.synthetic.skyindex import SkyIndex
from storage.cube import open_cube
from storage.manifest import file_checksum
from storage.tables import read_scores

DEMO = Path(__file__).resolve().parents[4] / "shared" / "data" / "convnet_demo"
IMAGE = 32
THRESHOLD = 0.4321  # stored by "evaluate"; an unusual value so that its use is visible


def brightness_model(directory: Path, image_size: int, threshold: float | None = THRESHOLD) -> Path:
    """A small real Keras model (uint8 in, P in (0, 1) out, spread over the range by image brightness),
    saved as train does, with the threshold.json evaluate would write beside it."""
    import keras

    inputs = keras.Input((image_size, image_size, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    output = keras.layers.Dense(1, activation="sigmoid")
    model = keras.Model(inputs, output(x))
    # P = sigmoid(20 (Σ channel means - c)), c a little above an empty offline sky's (the viewer mapping's sky level)
    output.set_weights([np.full((3, 1), 20.0), np.array([-20 * (3 * SKY_COUNTS / 255 + 0.11)])])
    directory.mkdir(parents=True, exist_ok=True)
    model.save(directory / "model.keras")
    if threshold is not None:
        checksum = file_checksum(directory / "model.keras")
        stored = {"threshold": threshold, "policy": "balanced", "chosen_on": "val", "model_checksum": checksum}
        (directory / "threshold.json").write_text(json.dumps(stored))
    return directory


@pytest.fixture(scope="module")
def v1_sky(tmp_path_factory):
    """A v1-layout offline sky (no emission lines) of 300 galaxies, one more catalog holding a galaxy
    outside the survey footprint, the server's index, and a model."""
    base = tmp_path_factory.mktemp("v1")
    make_sky(SkyArgs(out=base / "sky", n=300, seed=5, layout="v1"))
    outside = base / "outside.csv"
    pd.DataFrame({"NSAID": [10**9], "RA": [200.0], "DEC": [-70.0], "PETRO_TH90": [8.0]}).to_csv(outside, index=False)
    model = brightness_model(base / "model", IMAGE)
    return base / "sky" / SKY_V1_FITS, outside, SkyIndex.from_catalog(base / "sky" / SKY_V1_FITS), model


def fetch_args(ws: Path, url: str) -> FetchArgs:
    return FetchArgs(workspace=ws, cutout_url=url, size=64, image_size=IMAGE, shard_images=32, inner_images=8,
                     rate=1000.0, concurrency=16)  # fmt: skip


def predict_here(model_dir: Path, images: np.ndarray) -> np.ndarray:
    import keras

    model = keras.saving.load_model(model_dir / "model.keras", compile=False)
    return model.predict(images, batch_size=64, verbose=0).reshape(-1)


def test_a_v1_catalog_on_two_worker_processes(v1_sky, tmp_path, cluster_client):
    fits_path, outside, index, model_dir = v1_sky
    ws = tmp_path / "ws"
    with serve_in_background(build_server_config(None), index=index) as server:
        args = ScoreArgs(workspace=ws, model=str(model_dir), inputs=(str(fits_path), str(outside)),
                         fetch=fetch_args(ws, server.url), batch_size=16)  # fmt: skip
        m = score(args, client=cluster_client)
        scores = read_scores(ws)
        requests = len(server.requests)
        again = score(args, client=cluster_client)
        assert len(server.requests) == requests  # a re-run fetches nothing ...
    assert again.extra["scoring"]["parts_scored"] == 0  # ... and scores nothing
    files = sorted((ws / "scores" / "dataset").rglob("shard-*.parquet"))
    assert m.unfinished == "" and m.extra["scoring"]["parts_scored"] == len(files) >= 301 // 32

    from astropy.io import fits

    ids = fits.getdata(fits_path, 1)["NSAID"].astype(np.int64).tolist() + [10**9]
    assert sorted(scores["objid"]) == sorted(ids)  # every row exactly once
    off = scores.set_index("objid").loc[10**9]
    assert off["status"] == "no_coverage" and pd.isna(off["p_agn"]) and pd.isna(off["label"])
    ok = scores[scores["status"] == "ok"]
    assert len(ok) == 300

    cube = open_cube(ws / "scoring" / "cube.zarr", mode="r")
    catalog = pd.read_parquet(ws / "scoring" / "catalog" / "dataset").sort_values("cube_row")
    rows = catalog.set_index("objid").loc[ok["objid"], "cube_row"].to_numpy()
    expected = predict_here(model_dir, cube.read_rows(rows))
    np.testing.assert_allclose(ok["p_agn"].to_numpy(), expected, rtol=1e-5, atol=1e-6)
    assert (ok["label"].to_numpy() == (ok["p_agn"].to_numpy() >= THRESHOLD)).all()
    assert 0 < ok["label"].mean() < 1  # the threshold separates something
    meta = json.loads(pq.read_schema(files[0]).metadata[b"agnsurvey"])
    assert meta["model_sha256"] == file_checksum(model_dir / "model.keras") and meta["threshold"] == THRESHOLD
    assert meta["model_name"] == "model"
    loads = [n for counts in cluster_client.run(load_counts).values() for n in counts.values()]
    assert max(loads) == 1  # once per worker, not once per part (over 10 parts ran)
    lsdb = pytest.importorskip("lsdb")
    opened = lsdb.open_catalog(ws / "scores")  # the scores are a HATS catalog, in the catalog's pixels
    assert opened.get_healpix_pixels() == lsdb.open_catalog(ws / "scoring" / "catalog").get_healpix_pixels()
    via_lsdb, via_pandas = opened.compute().sort_values("objid"), scores.sort_values("objid")
    np.testing.assert_array_equal(via_lsdb["objid"].to_numpy(np.int64), via_pandas["objid"].to_numpy(np.int64))
    np.testing.assert_array_equal(via_lsdb["p_agn"].to_numpy(np.float64, na_value=np.nan),
                                  via_pandas["p_agn"].to_numpy(np.float64, na_value=np.nan))  # fmt: skip


def test_a_hats_catalog_made_by_lsdb_is_scored_directly(v1_sky, tmp_path):
    lsdb = pytest.importorskip("lsdb")
    from astropy.table import Table

    fits_path, _, index, model_dir = v1_sky
    frame = Table.read(fits_path, hdu=1)[["NSAID", "RA", "DEC", "PETRO_TH90"]].to_pandas()
    lsdb.from_dataframe(frame, ra_column="RA", dec_column="DEC", partition_rows=100).write_catalog(tmp_path / "hats")
    ws = tmp_path / "ws"
    with serve_in_background(build_server_config(None), index=index) as server:
        m = score(ScoreArgs(workspace=ws, model=str(model_dir), inputs=(str(tmp_path / "hats"),),
                            fetch=fetch_args(ws, server.url)))  # fmt: skip
    scores = read_scores(ws)
    assert m.unfinished == "" and sorted(scores["objid"]) == sorted(frame["NSAID"].astype(np.int64))
    assert (scores["status"] == "ok").all() and scores["p_agn"].notna().all()


def test_scores_are_never_mixed_across_models_or_thresholds(v1_sky, tmp_path):
    fits_path, outside, index, model_dir = v1_sky
    ws = tmp_path / "ws"
    with serve_in_background(build_server_config(None), index=index) as server:
        base = dict(workspace=ws, model=str(model_dir), inputs=(str(fits_path),), fetch=fetch_args(ws, server.url))
        score(ScoreArgs(**base))
        with pytest.raises(ScoreError, match="threshold 0.4321; pass --restart"):
            score(ScoreArgs(**base, threshold=0.9))
        m = score(ScoreArgs(**base, threshold=0.9, restart=True))
    scores = read_scores(ws)
    assert m.extra["threshold"] == 0.9 and (scores["label"] == (scores["p_agn"] >= 0.9)).all()
    other = brightness_model(tmp_path / "other", IMAGE, threshold=None)
    with pytest.raises(ScoreError, match="has no threshold.json: run `agnsurvey evaluate"):
        score(ScoreArgs(workspace=ws, model=str(other), inputs=(str(fits_path),)))
    small = brightness_model(tmp_path / "small", 16, threshold=0.5)
    with pytest.raises(ScoreError, match="the cutouts are 32 pixels, the model takes 16"):
        score(ScoreArgs(workspace=ws, model=str(small), inputs=(str(fits_path),), restart=True))


@pytest.mark.skipif(not DEMO.exists(), reason="real SDSS JPEGs (../shared/data/convnet_demo) not present")
def test_local_real_sdss_jpegs_no_service(tmp_path):
    files = sorted((DEMO / "test").glob("*.jpg"))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(files[0].read_bytes()[:300])  # a JPEG cut short
    ids = [int(f.stem) for f in files] + [1]
    catalog = tmp_path / "images.csv"
    pd.DataFrame({"objID": ids, "file": [str(f) for f in files] + ["corrupt.jpg"]}).to_csv(catalog, index=False)
    model_dir = brightness_model(tmp_path / "model", IMAGE)
    args = ScoreArgs(workspace=tmp_path / "ws", model=str(model_dir), inputs=(str(catalog),), images="file",
                     columns={"objid": "objID"}, part_rows=32)  # fmt: skip
    m = score(args)
    scores = read_scores(tmp_path / "ws")
    assert sorted(scores["objid"]) == sorted(ids)  # every file scored once (ids are 64-bit SDSS objIDs)
    assert scores.set_index("objid").loc[1, "status"] == "bad_image"  # relative path: beside the catalog
    assert (scores["status"] == "ok").sum() == len(files) and m.unfinished == ""
    assert "corrupt.jpg" in m.extra["bad_images"][0]
    from PIL import Image

    first = np.asarray(Image.open(files[0]).convert("RGB"))  # 128x128 SDSS cutouts, resized to the model's 32
    expected = predict_here(model_dir, resize(first, IMAGE)[None])[0]
    assert scores.set_index("objid").loc[ids[0], "p_agn"] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(CatalogError, match="has no column 'path' of image paths"):
        score(ScoreArgs(workspace=tmp_path / "ws2", model=str(model_dir), inputs=(str(catalog),), images="path",
                        columns={"objid": "objID"}))  # fmt: skip


def cube_workspace(ws: Path, n: int, image_size: int, status: np.ndarray | None = None) -> None:
    """A workspace with a fetched cube (complete unless ``status`` says otherwise): the labels and
    cube of ``training_workspace`` plus a catalog."""
    frame = training_workspace(ws, n=n, image_size=image_size, learnable=True, status=status)
    write_table(pd.DataFrame({"objid": frame["objid"], "cube_row": frame["cube_row"], "ra": frame["ra"],
                              "dec": frame["dec"], "radius_arcsec": np.full(n, 5.0, np.float32)}),
                ws / "catalog", max_rows=n // 4)  # fmt: skip


def test_a_worker_killed_mid_score_loses_and_duplicates_nothing(tmp_path):
    ws = tmp_path / "ws"
    cube_workspace(ws, n=640, image_size=16)
    model_dir = brightness_model(tmp_path / "model", 16)
    args = ScoreArgs(workspace=ws, model=str(model_dir), batch_size=8, tta=True)
    whole = read_scores_after(score(args), ws)
    shutil.rmtree(ws / "scores")
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        killer = kill_a_worker_running(client, "score_part")
        m = score(args, client=client)
        killer.join()
        assert killer.killed, "no worker was killed: the test did not test anything"
    killed = read_scores_after(m, ws)
    assert m.unfinished == ""
    assert killed["objid"].is_unique and len(killed) == 640
    pd.testing.assert_frame_equal(killed, whole, check_exact=False, rtol=1e-6)


def test_a_half_written_part_left_by_a_killed_worker_is_not_counted(tmp_path):
    ws = tmp_path / "ws"
    cube_workspace(ws, n=128, image_size=16)
    model_dir = brightness_model(tmp_path / "model", 16)
    args = ScoreArgs(workspace=ws, model=str(model_dir), batch_size=16)
    first = read_scores_after(score(args), ws)
    part = next((ws / "scores" / "dataset").rglob("shard-*.parquet"))
    (part.parent / f".{part.stem}.4242.tmp.parquet").write_bytes(part.read_bytes()[:100])  # killed mid-write
    again = score(args)  # every part complete: nothing is scored, the HATS metadata is written again
    assert again.extra["scoring"]["parts_scored"] == 0
    pd.testing.assert_frame_equal(read_scores_after(again, ws), first)
    lsdb = pytest.importorskip("lsdb")
    assert len(lsdb.open_catalog(ws / "scores").compute()) == 128


def read_scores_after(manifest, ws: Path) -> pd.DataFrame:
    assert manifest.rows_in == manifest.rows_out
    return read_scores(ws).sort_values("objid").reset_index(drop=True)


def test_own_catalog_without_a_url_needs_a_complete_cube(tmp_path):
    from storage.workspace import Workspace

    ws = tmp_path / "ws"
    cube_workspace(ws, n=64, image_size=16, status=np.where(np.arange(64) < 3, 0, 1))  # 3 rows pending
    model_dir = brightness_model(tmp_path / "model", 16)
    with pytest.raises(ScoreError, match="lacks some cutouts: give --cutout-url"):
        score(ScoreArgs(workspace=ws, model=str(model_dir)))
    with Workspace(ws).lock("cube", shared=True), pytest.raises(ScoreError, match="give --cutout-url"):
        score(ScoreArgs(workspace=ws, model=str(model_dir)))  # what to do, though a train reads the cube
    assert not (ws / "scores").exists() or not any((ws / "scores").iterdir())


def test_image_rows_bad_paths_repeated_ids_and_a_catalog_without_radius(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((40, 60, 3), 120, np.uint8)).save(tmp_path / "wide.png")  # not square: centre crop
    catalog = tmp_path / "images.csv"
    pd.DataFrame({"id": [1, 2, 3], "file": ["wide.png", "", "missing.jpg"]}).to_csv(catalog, index=False)
    model_dir = brightness_model(tmp_path / "model", 16)
    base = dict(model=str(model_dir), inputs=(str(catalog),), images="file", columns={"objid": "id"})
    m = score(ScoreArgs(workspace=tmp_path / "ws", **base))
    status = read_scores(tmp_path / "ws").set_index("objid")["status"].to_dict()
    assert status == {1: "ok", 2: "bad_image", 3: "bad_image"} and m.unfinished == ""
    pd.DataFrame({"id": [1, 2, 1], "file": ["wide.png"] * 3}).to_csv(catalog, index=False)
    with pytest.raises(CatalogError, match="id 1 appears more than once"):
        score(ScoreArgs(workspace=tmp_path / "ws2", **base))
    positions = tmp_path / "positions.csv"
    pd.DataFrame({"NSAID": [1], "RA": [150.0], "DEC": [2.0]}).to_csv(positions, index=False)
    with pytest.raises(CatalogError, match=r"has no radius column \(PETROTH90\).*--radius-column NAME"):
        score(ScoreArgs(workspace=tmp_path / "ws3", model=str(model_dir), inputs=(str(positions),),
                        fetch=fetch_args(tmp_path / "ws3", "http://127.0.0.1:9/viewer/cutout.jpg")))  # fmt: skip


def test_another_catalog_is_refused_and_a_bad_one_keeps_the_cutouts(v1_sky, tmp_path):
    fits_path, outside, index, model_dir = v1_sky
    ws = tmp_path / "ws"
    with serve_in_background(build_server_config(None), index=index) as server:
        score(ScoreArgs(workspace=ws, model=str(model_dir), inputs=(str(fits_path),), fetch=fetch_args(ws, server.url)))
    with pytest.raises(ScoreError, match="holds another catalog's cutouts .* pass --restart"):
        score(ScoreArgs(workspace=ws, model=str(model_dir), inputs=(str(outside),)))
    broken = tmp_path / "broken.csv"
    pd.DataFrame({"NSAID": [1], "RA": [150.0], "DEC": [200.0], "PETRO_TH90": [5.0]}).to_csv(broken, index=False)
    with pytest.raises(CatalogError, match="no usable rows"):  # found by ingest itself
        score(ScoreArgs(workspace=ws, model=str(model_dir), inputs=(str(broken),), restart=True))
    assert open_cube(ws / "scoring" / "cube.zarr", mode="r").status_codes().size == 300  # the cutouts are kept


def test_scoring_a_cube_with_other_pixel_options_names_the_fetch_that_makes_them(tmp_path, capsys):
    ws = tmp_path / "ws"
    cube_workspace(ws, n=64, image_size=16)
    model_dir = brightness_model(tmp_path / "model", 16)
    base = ["--quiet", "--workers", "1", "score", "-w", str(ws), "--model", str(model_dir), "--pixels", "flux"]
    assert main(base) == 2  # nothing to fetch with: the option would be ignored
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--pixels describe cutouts to fetch, but no --cutout-url or --bricks" in err[0], err
    assert main([*base, "--cutout-url", "http://127.0.0.1:9/viewer/cutout.jpg"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pixels 'rgb' -> 'flux'" in err[0], err
    assert f"agnsurvey fetch --workspace {ws}" in err[0] and "--restart" in err[0]
    assert not (ws / "scores").exists()


def test_a_decompression_bomb_is_a_bad_image_row_with_its_reason(tmp_path):
    """A 12,000² PNG (144M pixels, over PIL's 89M limit, a few kB on disk) is a ``bad_image`` row that
    says why; the other rows are scored and the run ends normally."""
    from PIL import Image

    Image.new("1", (12_000, 12_000)).save(tmp_path / "bomb.png")
    Image.fromarray(np.full((20, 20, 3), 200, np.uint8)).save(tmp_path / "fine.png")
    catalog = tmp_path / "images.csv"
    pd.DataFrame({"id": [1, 2], "file": ["bomb.png", "fine.png"]}).to_csv(catalog, index=False)
    model_dir = brightness_model(tmp_path / "model", 16)
    m = score(ScoreArgs(workspace=tmp_path / "ws", model=str(model_dir), inputs=(str(catalog),), images="file",
                        columns={"objid": "id"}))  # fmt: skip
    status = read_scores(tmp_path / "ws").set_index("objid")["status"].to_dict()
    assert status == {1: "bad_image", 2: "ok"}
    [reason] = m.extra["bad_images"]
    assert "bomb.png" in reason and "too many pixels" in reason and "MAX_IMAGE_PIXELS" in reason


def test_when_no_image_can_be_read_score_exits_3_and_says_so(tmp_path, capsys):
    (tmp_path / "a.jpg").write_bytes(b"not a jpeg")
    catalog = tmp_path / "images.csv"
    pd.DataFrame({"id": [1, 2], "file": ["a.jpg", "gone.jpg"]}).to_csv(catalog, index=False)
    model_dir = brightness_model(tmp_path / "model", 16)
    code = main(["--quiet", "score", str(catalog), "--images", "file", "--column", "objid=id", "-w",
                 str(tmp_path / "ws"), "--model", str(model_dir), "--threshold", "0.5"])  # fmt: skip
    assert code == 3
    err = capsys.readouterr().err
    assert "no row was scored: all 2 images could not be read" in err and "--restart" in err
    assert set(read_scores(tmp_path / "ws")["status"]) == {"bad_image"}  # every row kept, with its status


@pytest.mark.parametrize("stored", ["5", "NaN", "-0.2"])
def test_a_threshold_file_outside_0_1_is_refused_like_the_option(tmp_path, capsys, stored):
    """A damaged threshold.json (5: every galaxy star-forming; NaN: no score could ever match) is refused
    as --threshold 5 is, before anything is written; --threshold still overrides it."""
    ws = tmp_path / "ws"
    cube_workspace(ws, n=64, image_size=16)
    model_dir = brightness_model(tmp_path / "model", 16)
    path = model_dir / "threshold.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"threshold": float(stored)}))
    base = ["--quiet", "--workers", "1", "score", "-w", str(ws), "--model", str(model_dir)]
    assert main(base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a probability in (0, 1)" in err[0] and "threshold.json" in err[0], err
    assert not (ws / "scores").exists()
    assert main([*base, "--threshold", "0.5"]) == 0


def test_score_reads_a_model_no_training_is_replacing(tmp_path):
    """score takes a reader's lock on WS/models/NAME: while a train holds that directory, score is
    refused naming it, before anything is written; once the train is done, it scores."""
    from pipeline.errors import WorkspaceError
    from storage.workspace import Workspace

    ws = tmp_path / "ws"
    cube_workspace(ws, n=64, image_size=16)
    brightness_model(ws / "models" / "paper", 16)
    args = ScoreArgs(workspace=ws, model="paper")
    with Workspace(ws).lock("models/paper"):  # what `agnsurvey train --name paper` holds while it trains
        with pytest.raises(WorkspaceError, match=r"models/paper is being written by another run"):
            score(args)
        assert not (ws / "scores").exists() or not any((ws / "scores").iterdir())
    assert score(args).rows_out == 64


def test_score_reads_its_catalog_and_cube_under_a_readers_lock(tmp_path):
    """No run replaces the catalog or writes the cube while score reads them: score is refused while
    another run writes either, and while score fetches and scores, neither can be taken."""
    from pipeline.errors import WorkspaceError
    from storage.workspace import Workspace, WorkspaceBusy

    ws = tmp_path / "ws"
    cube_workspace(ws, n=64, image_size=16)
    shutil.rmtree(ws / "cube.zarr")  # score fetches the cutouts
    model = brightness_model(tmp_path / "model", 16)
    for output in ("cube", "catalog"):
        busy = rf"ws/{output}\S* is being written by another run"
        unused = FetchArgs(workspace=ws, cutout_url="http://127.0.0.1:9/cutout.jpg", image_size=16)  # never asked
        with Workspace(ws).lock(output), pytest.raises(WorkspaceError, match=busy):  # as a fetch or an ingest
            score(ScoreArgs(workspace=ws, model=str(model), fetch=unused))
        assert not (ws / "scores").exists() or not any((ws / "scores").iterdir())
    refused = {}

    def take_them(stage, manifest):  # told once score has fetched, before it scores
        for output in ("cube", "catalog"):
            try:
                with Workspace(ws).lock(output):
                    refused[output] = False
            except WorkspaceBusy:
                refused[output] = True

    async def handler(request):
        size = int(request.query["size"])
        noise = np.random.default_rng(0).integers(0, 255, (size, size, 3), np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noise).save(buf, "JPEG")
        return web.Response(body=buf.getvalue(), content_type="image/jpeg")

    with serve_in_thread(handler) as (url, _):
        fetch = FetchArgs(workspace=ws, cutout_url=url, size=32, image_size=16, shard_images=64, inner_images=8)
        m = score(ScoreArgs(workspace=ws, model=str(model), fetch=fetch), report=take_them)
    assert refused == {"cube": True, "catalog": True} and m.rows_out == 64 and m.unfinished == ""
    with Workspace(ws).lock("cube", shared=True):  # a train reading the cube: scoring a whole cube reads it too
        assert score(ScoreArgs(workspace=ws, model=str(model), restart=True)).rows_out == 64


def test_a_part_whose_run_gave_up_the_scores_lock_is_not_written(tmp_path):
    """A part task that finishes after its score run ended (cancelled on a remote worker, it ran on)
    writes no file: parts land only while their run holds WS/scores' writer's lock."""
    from pipeline.score.model import resolve_model
    from pipeline.score.parts import make_fingerprint, make_part, score_part
    from storage.fence import StaleWrite
    from storage.workspace import Workspace

    ws = tmp_path / "ws"
    cube_workspace(ws, n=16, image_size=16)
    args = ScoreArgs(workspace=ws, model=str(brightness_model(tmp_path / "model", 16)))
    model = resolve_model(args)
    rows = pd.DataFrame({"objid": np.arange(16), "ra": np.zeros(16), "dec": np.zeros(16), "cube_row": np.arange(16)})
    with Workspace(ws).lock("scores"):
        fingerprint = make_fingerprint(args, model, {})
        part = make_part(args, model, fingerprint, "part-00000.parquet", rows, cube=str(ws / "cube.zarr"))
        assert score_part(part).images == 16 and (ws / "scores" / "part-00000.parquet").exists()
        (ws / "scores" / "part-00000.parquet").unlink()
    with pytest.raises(StaleWrite, match="no longer holds its writer's lock"):
        score_part(part)
    assert not any((ws / "scores").iterdir())


def test_the_score_workers_keep_tensorflows_start_up_lines_out_of_the_terminal(tmp_path):
    """Each worker process loads Keras to score; TensorFlow's C++ start-up lines ("oneDNN custom
    operations are on", "All log messages before absl::InitializeLog()") stay out of stderr."""
    import os
    import subprocess
    import sys

    ws = tmp_path / "ws"
    cube_workspace(ws, n=64, image_size=16)
    model = brightness_model(tmp_path / "model", 16)
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "--workers", "2", "score", "--workspace", str(ws),
                           "--model", str(model)], cwd=Path(__file__).resolve().parents[3],
                          env=env, capture_output=True, text=True, timeout=240)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(read_scores(ws)) == 64
    chatter = [line for line in proc.stderr.splitlines() if "oneDNN" in line or "absl" in line or "I0000" in line]
    assert not chatter, proc.stderr
