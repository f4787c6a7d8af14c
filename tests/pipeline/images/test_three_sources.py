"""One galaxy, three pixel sources: the viewer's JPEG, the viewer's FITS and the survey's bricks
(the offline sky's mirror) give the same cutout within noise, through `fetch` end to end."""

import shutil

import dask
import numpy as np
import pytest
from astropy.io import fits

from pipeline.catalog.args import IngestArgs
from pipeline.catalog.ingest import ingest
from pipeline.cli import main
from pipeline.images.args import FetchArgs
from pipeline.images.fetch import fetch
from pipeline.synthetic.args import BrickArgs, SkyArgs
from pipeline.synthetic.bands import SIGMA_NMGY
from pipeline.synthetic.bricks import write_bricks
from pipeline.synthetic.catalog import SKY_FITS, make_sky
from pipeline.synthetic.server import serve_in_background
from pipeline.synthetic.server_config import ServerConfig
from storage.cube import open_cube

SIZE, IMAGE = 64, 32
REGION = dict(ra_min=180.03, ra_max=180.22, dec_min=19.92, dec_max=20.08)  # inside brick 1801p200


@pytest.fixture(scope="module")
def cubes(tmp_path_factory):
    """30 synthetic galaxies moved into one brick, its grz mirror, and the cube of each source."""
    base = tmp_path_factory.mktemp("three")
    with dask.config.set(scheduler="synchronous"):
        make_sky(SkyArgs(out=base / "sky", n=30, seed=7))
    catalog = base / "sky" / SKY_FITS
    with fits.open(catalog, mode="update") as hdus:
        rng = np.random.default_rng(0)
        hdus[1].data["RA"] = rng.uniform(REGION["ra_min"], REGION["ra_max"], 30)
        hdus[1].data["DEC"] = rng.uniform(REGION["dec_min"], REGION["dec_max"], 30)
    write_bricks(BrickArgs(out=base / "bricks", catalog=(str(catalog),), bands="grz", invvar=False, **REGION))
    with dask.config.set(scheduler="synchronous"):
        ingest(IngestArgs(workspace=base / "ws", inputs=[str(catalog)]))
    out = {"base": base}
    sources = {"jpeg": {}, "fits": {"pixels": "flux"}, "bricks_rgb": {"bricks": str(base / "bricks")},
               "bricks_flux": {"pixels": "flux", "bricks": str(base / "bricks")}}  # fmt: skip
    with serve_in_background(ServerConfig(catalog=(str(catalog),))) as server:
        for name, kw in sources.items():
            ws = base / name
            shutil.copytree(base / "ws" / "catalog", ws / "catalog")
            manifest = fetch(FetchArgs(workspace=ws, cutout_url=server.url, size=SIZE, image_size=IMAGE,
                                       shard_images=32, **kw))  # fmt: skip
            assert manifest.extra["status"]["ok"] == 30 and not manifest.unfinished, (name, manifest.extra)
            cube = open_cube(ws / "cube.zarr", mode="r")
            out[name] = cube.read_block(0, cube.layout.n)
            out[name + "_attrs"] = cube.attrs
    return out


def test_flux_from_the_viewer_fits_and_from_the_bricks_agree_within_noise(cubes):
    viewer, bricks = cubes["fits"].astype(np.float64), cubes["bricks_flux"].astype(np.float64)
    assert cubes["bricks_flux_attrs"]["source"] == "bricks" and cubes["fits_attrs"]["source"] == "viewer-fits"
    total_v, total_b = viewer.sum(axis=(1, 2)), bricks.sum(axis=(1, 2))
    sigma = np.array([SIGMA_NMGY[b] for b in "grz"])  # per native pixel; a cutout sums many
    native = (SIZE * 1.0) ** 2  # at least this many native pixels (pixscale >= 0.262")
    noise = 5 * sigma * np.sqrt(native * 4)  # two independent noise draws, generous
    # a field's PSF is drawn per cutout, a brick's per brick, and light of neighbours at a field's
    # edge falls in or out: a few per cent per galaxy, well under 1 % typically
    excess = np.abs(total_v - total_b) / (0.06 * np.abs(total_v) + noise)
    assert (excess <= 1).all(), (excess.max(), total_v[excess.argmax() // 3], total_b[excess.argmax() // 3])
    assert np.median(np.abs(total_v - total_b) / np.abs(total_v)) < 0.015
    # where the light is: centres agree, and a cutout from the other side of the sky would not
    centre = (slice(None), slice(12, 20), slice(12, 20))
    same = np.abs(viewer[centre] - bricks[centre]).sum(axis=(1, 2, 3))
    other = np.abs(viewer[centre] - np.roll(bricks, 1, axis=0)[centre]).sum(axis=(1, 2, 3))
    assert (same < other).mean() > 0.9


def test_rgb_from_the_bricks_looks_like_the_viewer_jpeg(cubes):
    jpeg, bricks = cubes["jpeg"].astype(np.float64), cubes["bricks_rgb"].astype(np.float64)
    assert cubes["bricks_rgb"].dtype == np.uint8 and cubes["bricks_rgb_attrs"]["pixels"] == "rgb"

    def blocks(x):  # 4x4 means: the JPEG's and the noise's grain averaged out
        return x.reshape(len(x), IMAGE // 4, 4, IMAGE // 4, 4, 3).mean(axis=(2, 4))

    diff = np.abs(blocks(jpeg) - blocks(bricks)).mean(axis=(1, 2, 3))
    shuffled = np.abs(blocks(jpeg) - blocks(np.roll(bricks, 1, axis=0))).mean(axis=(1, 2, 3))
    assert np.median(diff) < 4.0 and (diff < shuffled).mean() > 0.9, (diff, shuffled)


def test_bricks_errors_are_one_line_and_write_nothing(cubes, tmp_path, capsys):
    base = cubes["base"]
    shutil.copytree(base / "ws" / "catalog", tmp_path / "catalog")
    cases = [
        (["--bricks", str(tmp_path / "nowhere")], "survey-bricks.fits.gz"),
        (["--bricks", str(base / "bricks"), "--pixels", "flux", "--bands", "gr", "--with-invvar"], "invvar"),
    ]
    for flags, text in cases:
        assert main(["--quiet", "--workers", "1", "fetch", "--workspace", str(tmp_path), *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and text in err[0], err
        assert not (tmp_path / "cube.zarr").exists()


def test_score_cuts_a_new_catalog_from_the_bricks_without_a_viewer(cubes, tmp_path):
    """No --cutout-url: --bricks is the pixel source of score's own cube."""
    from pipeline.learn.model import build_model
    from storage.tables import read_scores

    build_model("paper", IMAGE).save(tmp_path / "model.keras")
    catalog = cubes["base"] / "sky" / SKY_FITS
    assert main(["--quiet", "--workers", "1", "score", str(catalog), "-w", str(tmp_path / "ws"), "--model",
                 str(tmp_path / "model.keras"), "--threshold", "0.5", "--bricks", str(cubes["base"] / "bricks"),
                 "--size", str(SIZE), "--image-size", str(IMAGE)]) == 0  # fmt: skip
    scores = read_scores(tmp_path / "ws")
    assert len(scores) == 30 and (scores["status"] == "ok").all()
    assert open_cube(tmp_path / "ws" / "scoring" / "cube.zarr", mode="r").attrs["source"] == "bricks"
